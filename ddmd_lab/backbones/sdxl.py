"""SDXL behind the Backbone interface.

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

from ddmd_lab.backbones.base import Backbone
from ddmd_lab.backbones.feature_tap import grid_size, pooled, run_until
from ddmd_lab.backbones.text_to_image import TextToImage, TextWindow, latent_shape
from ddmd_lab.core.flow import (alpha_bar_from_t, ddpm_timestep_from_t, expand_like, t_from_ddpm_timestep,
                                timestep_input, vp_scale, x0_from_ddpm_eps)


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

    def rows(self) -> list["SDXLCondition"]:
        return [SDXLCondition(*(getattr(self, f)[i:i + 1] for f in ("tokens", "text_embeds", "time_ids")))
                for i in range(len(self))]

    def repeat(self, n: int) -> "SDXLCondition":
        return SDXLCondition(self.tokens.expand(n, -1, -1), self.text_embeds.expand(n, -1), self.time_ids.expand(n, -1))


class SDXLBackbone(Backbone):
    denoiser_attr = "unet"
    variance_preserving = True

    def __init__(self, unet, alphas_cumprod: Tensor, null: SDXLCondition, latent_shape: tuple[int, int, int]):
        super().__init__()
        self.unet = unet
        # buffers, so the null condition moves with the module to the accelerator
        for name in ("tokens", "text_embeds", "time_ids"):
            self.register_buffer(f"null_{name}", getattr(null, name), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.double(), persistent=False)
        self.sample_shape = latent_shape

    def _unet(self, x_vp: Tensor, t: Tensor, cond: SDXLCondition):
        """The UNet on a VP sample at the (fractional) DDPM timestep of t: its epsilon.  Inputs in the
        weights' dtype but the timestep and the time ids: both only feed sinusoidal embeddings, which
        the UNet computes in float32 (the pipeline passes the timestep in float32 too; its time ids, in
        the text dtype, are exact there for the usual sizes)."""
        dtype = next(self.unet.parameters()).dtype
        timestep = timestep_input(ddpm_timestep_from_t(t, self.alphas_cumprod))
        return self.unet(x_vp.to(dtype), timestep, encoder_hidden_states=cond.tokens.to(dtype),
                         added_cond_kwargs={"text_embeds": cond.text_embeds.to(dtype),
                                            "time_ids": timestep_input(cond.time_ids)},
                         return_dict=False)[0]

    def x0(self, x_t: Tensor, t: Tensor, cond: SDXLCondition) -> Tensor:
        x_vp = x_t.double() * expand_like(vp_scale(t), x_t.double())
        return x0_from_ddpm_eps(x_vp, self._unet(x_vp, t, cond), alpha_bar_from_t(t))

    def features(self, x_t: Tensor, t: Tensor, cond: SDXLCondition) -> Tensor:
        """The UNet's mid-block output (its bottleneck, where DMD2's discriminator reads), on the
        inputs x0() gives it; the up path is never run."""
        x_vp = x_t.double() * expand_like(vp_scale(t), x_t.double())
        return pooled(run_until(self.unet.mid_block, lambda: self._unet(x_vp, t, cond), inputs=False))

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """features()' per-sample shape, from the config (no forward: the discriminator head is
        sized before the model reaches its accelerator)."""
        widths = self.unet.config.block_out_channels
        factor = 2 ** (len(widths) - 1)  # every down block but the last halves the map
        return (widths[-1], *grid_size(self.sample_shape[1] // factor, self.sample_shape[2] // factor))

    @property
    def null(self) -> SDXLCondition:
        return SDXLCondition(self.null_tokens, self.null_text_embeds, self.null_time_ids)

    def null_condition(self, cond: SDXLCondition) -> SDXLCondition:
        return self.null.repeat(len(cond))

    def null_batch(self, n: int) -> SDXLCondition:
        return self.null.repeat(n)

    def cat_conditions(self, conds: list[SDXLCondition]) -> SDXLCondition:
        return SDXLCondition.cat(conds)

    def condition_rows(self, cond: SDXLCondition) -> list[SDXLCondition]:
        return cond.rows()

    @property
    def min_time(self) -> float:
        """The noisiest time the UNet knows (DDPM timestep 999, t ~ 0.07): where ODE samplers start."""
        return float(t_from_ddpm_timestep(torch.tensor([999]), self.alphas_cumprod.cpu())[0])

    def default_student_times(self, num_steps: int) -> Tensor:
        """DMD2's times: 4-step DDPM timesteps 999, 749, 499, 249, the 1-step student at 399
        (a VP model cannot start at t = 0: timestep 999 is t ~ 0.07)."""
        steps = [399] if num_steps == 1 else [999 - k * (1000 // num_steps) for k in range(num_steps)]
        return t_from_ddpm_timestep(torch.tensor(steps), self.alphas_cumprod)


def time_ids(resolution: int) -> Tensor:
    """SDXL's added time ids: original size, crop top-left (0, 0), target size."""
    return torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32)


def from_pipeline(pipe, resolution: int, null: SDXLCondition | None = None):
    """A loaded StableDiffusionXLPipeline as a TextToImage teacher; prompts go through the
    pipeline's encode_prompt (both CLIP encoders, penultimate layers, pooled embedding of the
    second), the null condition is its negative for an empty prompt (zeros when the
    checkpoint sets force_zeros_for_empty_prompt, as SDXL base does), or ``null`` (from an embedding
    cache: the text encoders are then never called)."""
    ids = time_ids(resolution)

    def encode_all(prompts: list[str], cfg: bool):
        device = next(pipe.text_encoder_2.parameters()).device
        return pipe.encode_prompt(prompts, device=device, do_classifier_free_guidance=cfg)

    @torch.no_grad()
    def encode(prompts: list[str]) -> SDXLCondition:
        tokens, _, pooled, _ = encode_all(prompts, False)
        return SDXLCondition(tokens.float().cpu(), pooled.float().cpu(), ids.repeat(len(prompts), 1))

    if null is None:
        with torch.no_grad():
            _, null_tokens, _, null_pooled = encode_all([""], True)
        null = SDXLCondition(null_tokens.float().cpu(), null_pooled.float().cpu(), ids)
    unet = pipe.unet
    shape = latent_shape(pipe.vae, unet.config.in_channels, resolution)
    backbone = SDXLBackbone(unet, pipe.scheduler.alphas_cumprod, null, shape)
    # SDXL base's usual sampling: 50 steps, guidance 5 (standard form, alpha = 5)
    windows = [TextWindow(tok, tok.model_max_length) for tok in (pipe.tokenizer, pipe.tokenizer_2) if tok is not None]
    return TextToImage("sdxl", backbone, encode, pipe.vae, [pipe.text_encoder, pipe.text_encoder_2],
                       teacher_steps=50, pipeline=pipe, teacher_alpha=5.0, windows=windows)
