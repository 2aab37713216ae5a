"""Images from prompts: a run's student (few steps, no CFG) or the scale's teacher
(many-step CFG ODE), for ``make sample`` and ``make eval-coco``.

Guidance on the command line is read in the checkpoint family's own pipeline
convention, so numbers copied from a model card mean what they say there:
  zimage  offset form  cond + g*(cond - uncond): alpha = g + 1, CFG when g > 0
          (Z-Image-Turbo's "guidance_scale = 0" is no CFG);
  lumina2, sdxl  standard form  uncond + g*(cond - uncond): alpha = g, CFG when g > 1.
Configs and the math always hold the standard alpha (guidance.py).
"""
from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from ddmd_lab.backbones.text_to_image import TextToImage
from ddmd_lab.config import RunConfig
from ddmd_lab.core.guidance import alpha_from_offset
from ddmd_lab.core.rollout import Guided, sample_student, times_for_model
from ddmd_lab.data.prompts import warn_truncated
from ddmd_lab.eval.fid import to_uint8_hwc
from ddmd_lab.eval.grid import save_grid
from ddmd_lab.scales.text2image import load_model
from ddmd_lab.training.restore import (default_device, load_pipeline_student, require_text_scale, run_checkpoint,
                                       run_config)
from ddmd_lab.util.devices import to_device
from ddmd_lab.util.io import atomic_write_text

OFFSET_FAMILIES = {"zimage"}


def alpha_from_guidance(family: str, guidance: float) -> float:
    """The standard-form alpha of a guidance value written in ``family``'s pipeline convention."""
    if family in OFFSET_FAMILIES:
        return alpha_from_offset(guidance) if guidance > 0 else 1.0
    return guidance if guidance > 1 else 1.0


@dataclass
class Sampler:
    """Everything needed to turn prompts into images, on one device."""

    cfg: RunConfig
    model: TextToImage
    student: object | None  # the generator (a Backbone or a LoRA view of one); None = the teacher
    times: Tensor | None
    alpha: float
    teacher_steps: int

    @torch.no_grad()
    def __call__(self, prompts: list[str], noise: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Images in [-1, 1] (B, 3, H, W)."""
        return self.model.decode(self.latents(prompts, noise, generator)).cpu()

    @torch.no_grad()
    def latents(self, prompts: list[str], noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """Latents of ``prompts``; ``noise`` (B, *latent shape) or drawn from ``generator`` (a CPU
        generator, else torch's RNG), which also gives a renoise student its fresh noise, as a
        diffusers pipeline's ``generator`` does."""
        device = next(self.model.backbone.parameters()).device
        if noise is None:
            noise = torch.randn(len(prompts), *self.model.backbone.sample_shape, generator=generator)
        cond = to_device(self.model.encode(prompts), device)
        noise = noise.to(device)
        with self._autocast(device):
            if self.student is None:
                return self.model.teacher_sample(noise, cond, self.alpha, self.teacher_steps)
            student = self.student if self.alpha == 1.0 else Guided(self.student, self.alpha)
            return sample_student(student, noise, cond, self.times.to(device), self.cfg.student.student_sampler, generator)

    def _autocast(self, device: torch.device):
        """The run's precision on an accelerator (bf16-mixed: autocast, as in training); float32 on the CPU,
        where the tests compare samples with diffusers' pipelines exactly."""
        if device.type == "cuda" and self.cfg.parallel.precision.startswith("bf16"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def student_sampler(run_dir: Path, steps: int | None = None, guidance: float | None = None,
                    device: str | None = None) -> Sampler:
    """A run's student with its own defaults (its step count, no CFG); other choices warn."""
    cfg = run_config(run_dir)
    require_text_scale(cfg)
    family = cfg.teacher["family"]
    model, student = load_pipeline_student(cfg, run_checkpoint(Path(run_dir)))
    _place(model, device)
    n = steps or cfg.student.student_steps
    if n != cfg.student.student_steps:
        warnings.warn(f"this student was trained for {cfg.student.student_steps} evaluations; {n} runs it at times it never "
                      "saw during training (expect worse images).", stacklevel=2)
    times = times_for_model(model.backbone, n, cfg.student.shift, cfg.student.student_times if n == cfg.student.student_steps else None)
    alpha = alpha_from_guidance(family, guidance) if guidance is not None else 1.0
    if alpha != 1.0:
        warnings.warn(f"a distilled student has its guidance built in (distilled with alpha={cfg.objective.alpha:g}); guidance "
                      f"{guidance:g} on top applies CFG twice (expect oversaturation). Distilled students sample with "
                      f"{'guidance 0' if family in OFFSET_FAMILIES else 'guidance 1 (none)'}.", stacklevel=2)
    return Sampler(cfg, model, student, times, alpha, 0)


def _place(model: TextToImage, device: str | None) -> None:
    device = default_device(device)
    for m in [model.backbone, model.vae, *model.text_encoders]:
        m.eval().to(device)


def teacher_sampler(cfg: RunConfig, steps: int | None = None, guidance: float | None = None,
                    device: str | None = None) -> Sampler:
    """The scale's teacher with its pipeline's defaults (many steps, CFG)."""
    require_text_scale(cfg)
    model = load_model(cfg, fresh=True)
    _place(model, device)
    alpha = alpha_from_guidance(cfg.teacher["family"], guidance) if guidance is not None else model.teacher_alpha
    return Sampler(cfg, model, None, None, alpha, steps or model.teacher_steps)


def write_samples(sampler: Sampler, prompts: list[str], out_dir: Path, per_prompt: int = 1, seed: int = 0,
                  batch: int = 4) -> Path:
    """PNG per image, a grid and prompts.json in a new folder (never an existing one)."""
    out_dir = Path(out_dir)
    wanted = [p for p in prompts for _ in range(per_prompt)]
    warn_truncated(sampler.model, list(prompts))
    generator = torch.Generator().manual_seed(seed)  # the noise and a renoise student's fresh noise, in order
    images = torch.cat([sampler(wanted[i:i + batch], generator=generator) for i in range(0, len(wanted), batch)])
    out_dir.mkdir(parents=True, exist_ok=False)  # only now: a failed sampling leaves no empty folder behind
    save_grid(images, out_dir / "grid.png", nrow=per_prompt if per_prompt > 1 else min(len(wanted), 8))
    for i, img in enumerate(to_uint8_hwc(images)):
        Image.fromarray(img).save(out_dir / f"{i:04d}.png")
    meta = {"prompts": wanted, "seed": seed, "alpha": sampler.alpha, "student": sampler.student is not None,
            "steps": len(sampler.times) if sampler.student is not None else sampler.teacher_steps}
    atomic_write_text(out_dir / "prompts.json", json.dumps(meta, indent=2))
    return out_dir
