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

from ..errors import UserError
from .base import Backbone


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

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images in [-1, 1], with the checkpoint's own VAE scaling (and shift, where it has one)."""
        return decode_latents(self.vae, latents)

    def teacher_sample(self, noise: Tensor, cond: Any, alpha: float, steps: int) -> Tensor:
        """The teacher's latents as the family's pipeline samples them by default (its scheduler's
        grid and CFG options), with ``steps`` network evaluations per condition."""
        from .pipeline_sampling import PipelineCFG, pipeline_teacher_sample

        guidance = self.guidance or PipelineCFG.pipeline_default(self.family)
        return pipeline_teacher_sample(self.family, self.backbone, self.pipeline.scheduler, guidance, noise, cond,
                                       alpha, steps)


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
    if resolution % (factor * patch):
        raise UserError(f"resolution {resolution} does not fit this checkpoint: it must be a multiple of "
                        f"{factor * patch} (VAE factor {factor} x patch {patch}); set teacher.resolution.")
    side = resolution // factor
    return channels, side, side
