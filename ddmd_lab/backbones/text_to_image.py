"""A text-to-image teacher with what surrounds its denoiser in a pipeline.

Distillation only ever calls the denoiser (the Backbone); prompts become
conditions before a step starts and latents become pixels only for looking at
them.  So the text encoders and the VAE stay outside the Backbone: they are
frozen, never copied for the generator or the fake model, and can live on
another device or be dropped once prompt embeddings are precomputed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ddmd_lab.backbones.base import Backbone
from ddmd_lab.backbones.pipeline_sampling import PipelineCFG, pipeline_teacher_sample
from ddmd_lab.errors import UserError


@dataclass
class TextToImage:
    family: str
    backbone: Backbone
    encode: Callable[[list[str]], Any]  # prompts -> a batch condition (on the CPU)
    vae: Any  # diffusers AutoencoderKL, frozen
    text_encoders: list = field(default_factory=list)  # frozen; moved to the accelerator only to encode
    # what the family's own pipeline uses for the teacher: steps and guidance in the paper's alpha form
    teacher_steps: int = 50
    teacher_alpha: float = 4.0
    pipeline: Any = None  # the loaded diffusers pipeline (its scheduler drives the teacher sampler; export saves it)
    guidance: Any = None  # pipeline_sampling.PipelineCFG: the pipeline's CFG options (None: its defaults)
    windows: list = field(default_factory=list)  # TextWindow per tokenizer: what a prompt becomes, how much is kept

    def truncated(self, prompts: list[str]) -> dict[str, str]:
        """prompt -> the end of it its text encoders never see (only prompts longer than a window)."""
        out: dict[str, str] = {}
        for window in self.windows:
            for prompt, lost in window.truncated(prompts).items():
                if len(lost) > len(out.get(prompt, "")):
                    out[prompt] = lost
        return out

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images in [-1, 1], with the checkpoint's own VAE scaling (and shift, where it has one)."""
        return decode_latents(self.vae, latents)

    def teacher_sample(self, noise: Tensor, cond: Any, alpha: float, steps: int) -> Tensor:
        """The teacher's latents as the family's pipeline samples them by default (its scheduler's
        grid and CFG options), with ``steps`` network evaluations per condition."""
        guidance = self.guidance or PipelineCFG.pipeline_default(self.family)
        return pipeline_teacher_sample(self.family, self.backbone, self.pipeline.scheduler, guidance, noise, cond,
                                       alpha, steps)


@dataclass
class TextWindow:
    """How a family's pipeline tokenizes a prompt: ``template(prompt)`` is the text its tokenizer reads
    (system prompt, chat template), truncated to ``length`` tokens (special tokens included)."""

    tokenizer: Any
    length: int
    template: Callable[[str], str] = lambda p: p
    setting: str = ""  # the setting that widens the window ("" when it is fixed, as CLIP's)

    def truncated(self, prompts: list[str], batch: int = 4096) -> dict[str, str]:
        """prompt -> the end of it the window cuts off (the template's end only: "(the template's end)").
        Each distinct prompt is tokenized alone first (fast, batched); only those near the limit are
        tokenized again with their template."""
        unique = list(dict.fromkeys(prompts))
        overhead = len(self.tokenizer(self.template(""))["input_ids"])
        near = []
        for i in range(0, len(unique), batch):
            chunk = unique[i:i + batch]
            ids = self.tokenizer(chunk, add_special_tokens=False)["input_ids"]
            near += [p for p, t in zip(chunk, ids) if len(t) + overhead > self.length - 4]  # merges at the seams
        out = {}
        for prompt in near:
            text = self.template(prompt)
            if len(self.tokenizer(text)["input_ids"]) > self.length:
                out[prompt] = self._lost(prompt, text)
        return out

    def _lost(self, prompt: str, text: str) -> str:
        """The end of ``prompt`` past the last kept token (character offsets of the kept tokens)."""
        try:
            kept = self.tokenizer(text, truncation=True, max_length=self.length, return_offsets_mapping=True)
        except NotImplementedError:  # a slow tokenizer has no offsets: what the kept tokens decode to is seen
            seen = self.tokenizer.decode(self.tokenizer(text, truncation=True, max_length=self.length)["input_ids"],
                                         skip_special_tokens=True)
            end = len(seen)
        else:
            end = max((e for _, e in kept["offset_mapping"]), default=0)
        start = text.find(prompt)
        if start < 0 or end >= start + len(prompt):
            return "(the template's end)"
        return prompt[max(end - start, 0):].strip()


@torch.no_grad()
def decode_latents(vae, latents: Tensor) -> Tensor:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    z = latents / vae.config.scaling_factor + shift
    param = next(vae.parameters())
    return vae.decode(z.to(param.device, param.dtype), return_dict=False)[0].float().clamp(-1, 1)


def vae_scale_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_shape(vae, channels: int, resolution: int, patch: int = 1) -> tuple[int, int, int]:
    """(C, H, W) of the latents of a square image; the transformer's patch must tile them."""
    factor = vae_scale_factor(vae)
    check_resolution(resolution, factor, patch)
    side = resolution // factor
    return channels, side, side


def check_resolution(resolution: int, factor: int, patch: int = 1) -> None:
    if resolution <= 0 or resolution % (factor * patch):
        fits = [r for r in (resolution // (factor * patch) * factor * patch,
                            -(-resolution // (factor * patch)) * factor * patch) if r > 0]
        raise UserError(f"resolution {resolution} does not fit this checkpoint: it must be a multiple of "
                        f"{factor * patch} (VAE factor {factor} x patch {patch}); set teacher.resolution, e.g. "
                        f"{' or '.join(map(str, sorted(set(fits))))}.")
