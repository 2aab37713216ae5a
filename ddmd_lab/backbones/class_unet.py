"""A small class-conditional diffusers UNet2DModel, trained by the harness.

The network keeps diffusers' flow-matching conventions (as SD3 / Z-Image
schedulers use them): it is fed ``timestep = 1000 * sigma`` with
sigma = 1 - t, and predicts ``noise - x0``.  The adapter converts at this edge:
x0 = x_t - sigma * output.  Label ``num_classes`` is the null label of label
dropout.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DModel
from torch import Tensor

from ..errors import UserError
from ..flow import diffusers_timestep_from_t, expand_like
from .base import Backbone

UNET_SIZES = {
    # name: (block_out_channels, down block types)
    "tiny": ((16, 32), ("DownBlock2D", "DownBlock2D")),
    "small": ((32, 64, 64), ("DownBlock2D", "DownBlock2D", "DownBlock2D")),
    "base": ((64, 128, 128), ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D")),
}


def build_unet(size: str, num_classes: int, channels: int = 1, resolution: int = 32) -> UNet2DModel:
    if size not in UNET_SIZES:
        raise UserError(f"unknown UNet size {size!r}; use one of {', '.join(UNET_SIZES)}.")
    widths, down = UNET_SIZES[size]
    up = tuple(b.replace("Down", "Up") for b in reversed(down))
    return UNet2DModel(sample_size=resolution, in_channels=channels, out_channels=channels,
                       block_out_channels=widths, layers_per_block=1, down_block_types=down, up_block_types=up,
                       num_class_embeds=num_classes + 1, norm_num_groups=8, attention_head_dim=16)


class ClassUNet(Backbone):
    def __init__(self, unet: UNet2DModel, num_classes: int):
        super().__init__()
        self.unet, self.num_classes = unet, num_classes
        cfg = unet.config
        self.sample_shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    def x0(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        out = self.unet(x_t, diffusers_timestep_from_t(t), class_labels=cond).sample
        return x_t.float() - expand_like(1 - t, x_t).float() * out.float()

    def features(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """The mid block's output (DMD2 puts its classifier branch there)."""
        captured = {}
        handle = self.unet.mid_block.register_forward_hook(lambda m, i, o: captured.setdefault("h", o))
        try:
            self.unet(x_t, diffusers_timestep_from_t(t), class_labels=cond)
        finally:
            handle.remove()
        return captured["h"]

    def null_batch(self, n: int) -> Tensor:
        return torch.full((n,), self.num_classes, dtype=torch.long, device=next(self.parameters()).device)

    def null_condition(self, cond: Tensor) -> Tensor:
        return cond.new_full(cond.shape, self.num_classes)

    def save(self, folder: Path) -> None:
        self.unet.save_pretrained(folder)

    @classmethod
    def load(cls, folder: Path, num_classes: int) -> "ClassUNet":
        try:
            unet = UNet2DModel.from_pretrained(folder)
        except Exception as exc:  # missing or corrupt files
            raise UserError(f"the teacher UNet in {folder} cannot be loaded ({exc.__class__.__name__}); "
                            "delete that folder and run `make teacher SCALE=...` again.") from None
        return cls(unet, num_classes)
