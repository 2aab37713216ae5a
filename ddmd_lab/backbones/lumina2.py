"""Lumina-Image-2.0 behind the Backbone interface.

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

from ddmd_lab.backbones.base import Backbone
from ddmd_lab.backbones.feature_tap import grid_size, run_until, token_maps
from ddmd_lab.backbones.text_to_image import TextToImage, TextWindow, latent_shape
from ddmd_lab.core.flow import expand_like, timestep_input, x0_from_velocity


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

    def trimmed(self) -> "PaddedText":
        """Without the padding columns no row uses (pipelines pad every prompt to max_length)."""
        length = max(int(self.mask.any(0).nonzero().max()) + 1, 1) if self.mask.any() else 1
        return PaddedText(self.embeds[:, :length], self.mask[:, :length])

    def rows(self) -> list["PaddedText"]:
        return [PaddedText(e[None], m[None]).trimmed() for e, m in zip(self.embeds, self.mask)]


class Lumina2Backbone(Backbone):
    denoiser_attr = "transformer"

    def __init__(self, transformer, null_text: PaddedText, latent_shape: tuple[int, int, int]):
        super().__init__()
        self.transformer = transformer
        # buffers, so the null condition moves with the module to the accelerator
        self.register_buffer("null_embeds", null_text.embeds, persistent=False)
        self.register_buffer("null_mask", null_text.mask, persistent=False)
        self.sample_shape = latent_shape

    def _net(self, x_t: Tensor, t: Tensor, cond: PaddedText) -> Tensor:
        dtype = next(self.transformer.parameters()).dtype
        # t in float32 whatever the weights' dtype, as Lumina2Pipeline passes it (timestep_input)
        return self.transformer(hidden_states=x_t.to(dtype), timestep=timestep_input(t),
                                encoder_hidden_states=cond.embeds.to(dtype), encoder_attention_mask=cond.mask,
                                return_dict=False)[0]

    def x0(self, x_t: Tensor, t: Tensor, cond: PaddedText) -> Tensor:
        return x0_from_velocity(x_t.float(), self._net(x_t, t, cond).float(), expand_like(t.float(), x_t))

    def _token_grid(self) -> tuple[int, int]:
        p = self.transformer.config.patch_size
        return self.sample_shape[1] // p, self.sample_shape[2] // p

    def features(self, x_t: Tensor, t: Tensor, cond: PaddedText) -> Tensor:
        """The hidden states after the joint transformer blocks (norm_out's input), image tokens
        only -- each sample's come after its caption's (mask.sum) tokens, row-major over the patch
        grid -- as (hidden, h, w) maps, pooled to at most FEATURE_GRID per side; norm_out never runs."""
        hidden = run_until(self.transformer.norm_out, lambda: self._net(x_t, t, cond), inputs=True)
        h, w = self._token_grid()
        starts = cond.mask.sum(1).tolist()  # the transformer's own caption lengths (its rope embedder's)
        return token_maps(torch.stack([hidden[i, s:s + h * w] for i, s in enumerate(starts)]), h, w)

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        return (self.transformer.config.hidden_size, *grid_size(*self._token_grid()))

    @property
    def null_text(self) -> PaddedText:
        return PaddedText(self.null_embeds, self.null_mask)

    def null_condition(self, cond: PaddedText) -> PaddedText:
        return self.null_text.repeat(len(cond))

    def null_batch(self, n: int) -> PaddedText:
        return self.null_text.repeat(n)

    def cat_conditions(self, conds: list[PaddedText]) -> PaddedText:
        return PaddedText.cat(conds)

    def condition_rows(self, cond: PaddedText) -> list[PaddedText]:
        return cond.rows()


def from_pipeline(pipe, resolution: int, system_prompt: str | None = None, max_length: int = 256,
                  null: PaddedText | None = None):
    """A loaded Lumina2Pipeline as a TextToImage teacher; prompts go through the pipeline's own
    encode_prompt (its system prompt unless one is given), the null condition is its negative
    prompt's encoding, or ``null`` (from an embedding cache: the text encoder is then never called)."""
    def encode_pair(prompts: list[str], cfg: bool):
        device = next(pipe.text_encoder.parameters()).device
        return pipe.encode_prompt(prompts, do_classifier_free_guidance=cfg, device=device,
                                  system_prompt=system_prompt, max_sequence_length=max_length)

    def encode(prompts: list[str]) -> PaddedText:
        embeds, mask, _, _ = encode_pair(prompts, False)
        return PaddedText(embeds.float().cpu(), mask.bool().cpu()).trimmed()

    if null is None:
        with torch.no_grad():
            _, _, null_embeds, null_mask = encode_pair([""], True)
        null = PaddedText(null_embeds.float().cpu(), null_mask.bool().cpu()).trimmed()
    net = pipe.transformer
    shape = latent_shape(pipe.vae, net.config.in_channels, resolution, net.config.patch_size)
    # the paper's Table 1 teacher: 50 steps (Lumina2Pipeline's default is 30: an intentional difference, the
    # paper's teacher row); the pipeline's default guidance 4 (standard form: alpha = 4)
    system = system_prompt if system_prompt is not None else pipe.system_prompt  # as encode_prompt joins them
    window = TextWindow(pipe.tokenizer, max_length, lambda p: f"{system} <Prompt Start> {p}", "teacher.max_length")
    return TextToImage("lumina2", Lumina2Backbone(net, null, shape), torch.no_grad()(encode), pipe.vae,
                       [pipe.text_encoder], teacher_steps=50, pipeline=pipe, teacher_alpha=4.0, windows=[window])
