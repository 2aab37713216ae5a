"""A small class-conditional diffusers UNet2DModel, trained by the harness.

The network keeps diffusers' flow-matching conventions (as SD3 / Z-Image
schedulers use them): it is fed ``timestep = 1000 * sigma`` with
sigma = 1 - t, and predicts ``noise - x0``.  The adapter converts at this edge:
x0 = x_t - sigma * output.  Label ``num_classes`` is the null label of label
dropout.

Images are folded into 2x2 patches (pixel-unshuffle: 32x32x1 -> 16x16x4)
before the UNet, a lossless "latent" that makes convolutions ~4x cheaper on a
CPU; everything outside the adapter sees pixels.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import Tensor

from ddmd_lab.backbones.base import Backbone
from ddmd_lab.core.flow import diffusers_timestep_from_t, expand_like, timestep_input
from ddmd_lab.errors import UserError

UNET_SIZES = {
    # name: (block_out_channels, down block types)
    "tiny": ((16, 32), ("DownBlock2D", "DownBlock2D")),
    "small": ((32, 64, 64), ("DownBlock2D", "DownBlock2D", "DownBlock2D")),
    "base": ((64, 96, 128), ("DownBlock2D", "DownBlock2D", "DownBlock2D")),
}


def build_unet(size: str, num_classes: int, channels: int = 1, resolution: int = 32, patch: int = 2) -> UNet2DModel:
    if size not in UNET_SIZES:
        raise UserError(f"unknown UNet size {size!r}; use one of {', '.join(UNET_SIZES)}.")
    widths, down = UNET_SIZES[size]
    up = tuple(b.replace("Down", "Up") for b in reversed(down))
    return UNet2DModel(sample_size=resolution // patch, in_channels=channels * patch**2, out_channels=channels * patch**2,
                       block_out_channels=widths, layers_per_block=1, down_block_types=down, up_block_types=up,
                       num_class_embeds=num_classes + 1, norm_num_groups=8, attention_head_dim=16)


class ClassUNet(Backbone):
    denoiser_attr = "unet"

    def __init__(self, unet: UNet2DModel, num_classes: int, patch: int = 2):
        super().__init__()
        self.unet, self.num_classes, self.patch = unet, num_classes, patch
        cfg = unet.config
        self.sample_shape = (cfg.in_channels // patch**2, cfg.sample_size * patch, cfg.sample_size * patch)

    def _net(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        z = F.pixel_unshuffle(x_t, self.patch) if self.patch > 1 else x_t
        out = self.unet(z, timestep_input(diffusers_timestep_from_t(t)), class_labels=cond).sample
        return F.pixel_shuffle(out, self.patch) if self.patch > 1 else out

    def x0(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return x_t.float() - expand_like(1 - t, x_t).float() * self._net(x_t, t, cond).float()

    def features(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """The mid block's output (DMD2 puts its classifier branch there)."""
        captured = {}
        handle = self.unet.mid_block.register_forward_hook(lambda m, i, o: captured.setdefault("h", o))
        try:
            self._net(x_t, t, cond)
        finally:
            handle.remove()
        return captured["h"]

    def null_batch(self, n: int) -> Tensor:
        return torch.full((n,), self.num_classes, dtype=torch.long, device=next(self.parameters()).device)

    def null_condition(self, cond: Tensor) -> Tensor:
        return cond.new_full(cond.shape, self.num_classes)

    def save(self, folder: Path) -> None:
        self.unet.save_pretrained(folder)
        (Path(folder) / "ddmd_adapter.json").write_text(json.dumps({"num_classes": self.num_classes, "patch": self.patch}))

    @classmethod
    def load(cls, folder: Path) -> "ClassUNet":
        try:
            unet = UNet2DModel.from_pretrained(folder)
            adapter = json.loads((Path(folder) / "ddmd_adapter.json").read_text())
        except Exception as exc:  # missing or corrupt files
            raise UserError(f"the teacher UNet in {folder} cannot be loaded ({exc.__class__.__name__}); "
                            "delete that folder and run `make teacher SCALE=...` again.") from None
        return cls(unet, adapter["num_classes"], adapter["patch"])
