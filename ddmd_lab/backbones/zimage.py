"""Z-Image behind the Backbone interface: the transformer adapter and the text path.

The transformer already speaks the paper's time (t = 0 noise, 1 clean; it
multiplies by t_scale inside) and takes lists: latents (C, 1, H, W) per
sample and caption features (L_i, D) per sample, lengths free.  Its output is
the paper's velocity x0 - noise (the pipeline negates it for its sigma-time
Euler step), so x0 = x_t + (1 - t) * output.

Text: Qwen3, prompt through the chat template with add_generation_prompt and
enable_thinking=True (as ZImagePipeline does), features = hidden_states[-2]
with padding tokens removed.  CFG in the pipeline is the offset form
cond + g*(cond - uncond); here conditions carry no guidance, alpha lives in the config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ddmd_lab.backbones.base import Backbone
from ddmd_lab.backbones.feature_tap import grid_size, run_until, token_maps
from ddmd_lab.backbones.text_to_image import TextToImage, TextWindow, latent_shape
from ddmd_lab.core.flow import expand_like, timestep_input, x0_from_velocity


def zimage_prompt_text(tokenizer, prompt: str, system_prompt: str | None = None, thinking: str | None = None) -> str:
    """The text Z-Image feeds its encoder: Qwen3 chat template, generation prompt
    added, enable_thinking=True (no empty think block).  ``thinking`` appends a
    user-supplied thinking block the way Qwen3 writes one."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    if thinking is not None:
        text += f"<think>\n{thinking}\n</think>\n\n"
    return text


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], max_length: int = 512,
                   system_prompt: str | None = None, thinking: str | None = None) -> list[Tensor]:
    """Caption features per prompt: hidden_states[-2], padding removed, (L_i, D) each."""
    texts = [zimage_prompt_text(tokenizer, p, system_prompt, thinking) for p in prompts]
    inputs = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    device = next(text_encoder.parameters()).device
    mask = inputs.attention_mask.to(device).bool()
    hidden = text_encoder(input_ids=inputs.input_ids.to(device), attention_mask=mask,
                          output_hidden_states=True).hidden_states[-2]
    return [h[m] for h, m in zip(hidden, mask)]


@dataclass
class Captions:
    """Caption features of a batch, (L_i, D) per sample, lengths free.  A
    dataclass rather than a bare list, so a batch (condition, real data) is
    never mistaken for a condition."""

    features: list[Tensor]

    def __len__(self) -> int:
        return len(self.features)

    def rows(self) -> list["Captions"]:
        return [Captions([f]) for f in self.features]


class ZImageBackbone(Backbone):
    """x0 predictions of a ZImageTransformer2DModel on batched latents (B, C, H, W).

    The null condition is the empty prompt's features (the pipeline's default
    negative prompt).
    """

    denoiser_attr = "transformer"

    def __init__(self, transformer, null_features: Tensor, latent_shape: tuple[int, int, int]):
        super().__init__()
        self.transformer = transformer
        self.register_buffer("null_features", null_features, persistent=False)
        self.sample_shape = latent_shape

    def _net(self, x_t: Tensor, t: Tensor, cond: Captions):
        dtype = next(self.transformer.parameters()).dtype
        latents = list(x_t.to(dtype).unsqueeze(2).unbind(0))  # (C, 1, H, W) each
        # t in float32 whatever the weights' dtype, as ZImagePipeline passes it (timestep_input)
        return self.transformer(latents, timestep_input(t), [c.to(dtype) for c in cond.features], return_dict=False)[0]

    def x0(self, x_t: Tensor, t: Tensor, cond: Captions) -> Tensor:
        velocity = torch.stack([o.float() for o in self._net(x_t, t, cond)]).squeeze(2)
        return x0_from_velocity(x_t.float(), velocity, expand_like(t.float(), x_t))

    def _token_grid(self) -> tuple[int, int]:
        p = self.transformer.config.all_patch_size[0]
        return self.sample_shape[1] // p, self.sample_shape[2] // p

    def features(self, x_t: Tensor, t: Tensor, cond: Captions) -> Tensor:
        """The hidden states after the main transformer blocks (the final layer's input), image
        tokens only -- each sample's sequence starts with them, row-major over the patch grid --
        as (dim, h, w) maps, pooled to at most FEATURE_GRID per side; the final layer never runs."""
        final = list(self.transformer.all_final_layer.values())
        hidden = run_until(final, lambda: self._net(x_t, t, cond), inputs=True)
        h, w = self._token_grid()
        return token_maps(hidden[:, :h * w], h, w)

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        return (self.transformer.config.dim, *grid_size(*self._token_grid()))

    def null_condition(self, cond: Captions) -> Captions:
        return self.null_batch(len(cond))

    def null_batch(self, n: int) -> Captions:
        return Captions([self.null_features] * n)

    def cat_conditions(self, conds: list[Captions]) -> Captions:
        return Captions([f for c in conds for f in c.features])

    def condition_rows(self, cond: Captions) -> list[Captions]:
        return cond.rows()


def from_pipeline(pipe, resolution: int, system_prompt: str | None = None, thinking: str | None = None,
                  max_length: int = 512, null: Captions | None = None):
    """A loaded ZImagePipeline as a TextToImage teacher.  The null condition is the empty
    prompt through the same template (the pipeline's default negative prompt is ""), or
    ``null`` (one row, from an embedding cache: the text encoder is then never called)."""
    def encode(prompts: list[str]) -> Captions:
        feats = encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts, max_length, system_prompt, thinking)
        return Captions([f.float().cpu() for f in feats])

    net = pipe.transformer
    shape = latent_shape(pipe.vae, net.config.in_channels, resolution, net.config.all_patch_size[0])
    null = (null.features[0] if null is not None else
            encode_prompts(pipe.tokenizer, pipe.text_encoder, [""], max_length, system_prompt)[0].float().cpu())
    window = TextWindow(pipe.tokenizer, max_length, lambda p: zimage_prompt_text(pipe.tokenizer, p, system_prompt, thinking),
                        "teacher.max_length")
    # Z-Image's base pipeline samples 50 steps with cond + 5*(cond - uncond), i.e. alpha = 6
    return TextToImage("zimage", ZImageBackbone(net, null, shape), encode, pipe.vae, [pipe.text_encoder],
                       teacher_steps=50, pipeline=pipe, teacher_alpha=6.0, windows=[window])
