"""Lumina-Image-2.0 behind the Backbone interface (work in progress: transformer adapter).

Lumina2Transformer2DModel takes batched latents (B, C, H, W), t in the paper's
convention (the pipeline passes 1 - timestep/1000) and padded text features
with a boolean mask; like Z-Image its output is the paper's velocity (the
pipeline negates it for the sigma-time Euler step): x0 = x_t + (1 - t) * out.
Its pipeline writes CFG in the standard form uncond + g*(cond - uncond), so
there g is alpha itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..flow import expand_like, x0_from_velocity
from .base import Backbone


@dataclass
class PaddedText:
    """Text features (B, L, D) with their mask (B, L); rows may differ in length."""

    embeds: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return self.embeds.shape[0]

    @staticmethod
    def cat(parts: list["PaddedText"]) -> "PaddedText":
        length = max(p.embeds.shape[1] for p in parts)
        embeds = [F.pad(p.embeds, (0, 0, 0, length - p.embeds.shape[1])) for p in parts]
        masks = [F.pad(p.mask, (0, length - p.mask.shape[1]), value=False) for p in parts]
        return PaddedText(torch.cat(embeds), torch.cat(masks))

    def repeat(self, n: int) -> "PaddedText":
        return PaddedText(self.embeds.expand(n, -1, -1), self.mask.expand(n, -1))


class Lumina2Backbone(Backbone):
    denoiser_attr = "transformer"

    def __init__(self, transformer, null_text: PaddedText, latent_shape: tuple[int, int, int]):
        super().__init__()
        self.transformer, self.null_text = transformer, null_text
        self.sample_shape = latent_shape

    def x0(self, x_t: Tensor, t: Tensor, cond: PaddedText) -> Tensor:
        dtype = next(self.transformer.parameters()).dtype
        out = self.transformer(hidden_states=x_t.to(dtype), timestep=t.to(dtype), encoder_hidden_states=cond.embeds.to(dtype),
                               encoder_attention_mask=cond.mask, return_dict=False)[0]
        return x0_from_velocity(x_t.float(), out.float(), expand_like(t.float(), x_t))

    def null_condition(self, cond: PaddedText) -> PaddedText:
        return self.null_text.repeat(len(cond))

    def null_batch(self, n: int) -> PaddedText:
        return self.null_text.repeat(n)

    def cat_conditions(self, conds: list[PaddedText]) -> PaddedText:
        return PaddedText.cat(conds)
