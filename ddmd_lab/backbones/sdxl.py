"""SDXL behind the Backbone interface (work in progress: the UNet adapter).

SDXL is an epsilon-prediction DDPM model.  It runs inside the paper's flow
convention exactly: a flow sample at time t is a VP sample at the matching
signal-to-noise ratio up to a scale (``flow.vp_scale``), the UNet gets the
(fractional) DDPM timestep of that SNR, and x0 comes from its epsilon in
float64 (sqrt(alpha_bar) is ~0.07 at timestep 999).  Conditions carry the
two text encoders' token features and SDXL's added conditions (pooled text
embeddings and time ids); the null condition is the empty prompt's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..flow import alpha_bar_from_t, ddpm_timestep_from_t, expand_like, vp_scale, x0_from_ddpm_eps
from .base import Backbone


@dataclass
class SDXLCondition:
    tokens: Tensor  # (B, L, D) concatenated features of both text encoders
    text_embeds: Tensor  # (B, P) pooled embedding of the second encoder
    time_ids: Tensor  # (B, 6) original size, crop, target size

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @staticmethod
    def cat(parts: list["SDXLCondition"]) -> "SDXLCondition":
        return SDXLCondition(*(torch.cat([getattr(p, f) for p in parts]) for f in ("tokens", "text_embeds", "time_ids")))

    def repeat(self, n: int) -> "SDXLCondition":
        return SDXLCondition(self.tokens.expand(n, -1, -1), self.text_embeds.expand(n, -1), self.time_ids.expand(n, -1))


class SDXLBackbone(Backbone):
    denoiser_attr = "unet"

    def __init__(self, unet, alphas_cumprod: Tensor, null: SDXLCondition, latent_shape: tuple[int, int, int]):
        super().__init__()
        self.unet, self.null = unet, null
        self.register_buffer("alphas_cumprod", alphas_cumprod.double(), persistent=False)
        self.sample_shape = latent_shape

    def x0(self, x_t: Tensor, t: Tensor, cond: SDXLCondition) -> Tensor:
        dtype = next(self.unet.parameters()).dtype
        x_vp = x_t.double() * expand_like(vp_scale(t), x_t.double())
        timestep = ddpm_timestep_from_t(t, self.alphas_cumprod)
        eps = self.unet(x_vp.to(dtype), timestep.to(dtype), encoder_hidden_states=cond.tokens.to(dtype),
                        added_cond_kwargs={"text_embeds": cond.text_embeds.to(dtype), "time_ids": cond.time_ids.to(dtype)},
                        return_dict=False)[0]
        return x0_from_ddpm_eps(x_vp, eps, alpha_bar_from_t(t))

    def null_condition(self, cond: SDXLCondition) -> SDXLCondition:
        return self.null.repeat(len(cond))

    def null_batch(self, n: int) -> SDXLCondition:
        return self.null.repeat(n)

    def cat_conditions(self, conds: list[SDXLCondition]) -> SDXLCondition:
        return SDXLCondition.cat(conds)
