"""The text-to-image scales' running evaluation: a sample grid of fixed prompts and noise at every
evaluation point, its output statistics and colour, relative to the teacher's samples of the same
prompts and noise; and the teacher's colour row for the tables.

The scale (text2image.py) hands in what it owns: the loaded model, the prompts' conditions and the
teacher's identity; so this module needs nothing from it, and text2image.make_evaluator builds it."""
from __future__ import annotations

from pathlib import Path

import torch

from ddmd_lab.config import RunConfig
from ddmd_lab.eval.colour import colour_stats, mean_stats, relative
from ddmd_lab.eval.grid import save_grid
from ddmd_lab.eval.protocols.teacher_reference import ReferenceSettings, TeacherColour, read_reference, reference_path
from ddmd_lab.eval.spectra import raps, spectral_centroid
from ddmd_lab.eval.stats import output_stats
from ddmd_lab.scales.base import EVAL_SEED, evaluation_generator
from ddmd_lab.util.devices import to_device


def eval_prompts(prompts: list[str], samples: int) -> list[str]:
    """The evaluator's prompts: data.eval_prompts (``prompts``) repeated to eval_samples (``samples``), at
    most 64 (real-model decoding is expensive, and a grid needs no more)."""
    prompts = list(prompts)
    n = min(max(samples, len(prompts)), 64)
    return [prompts[i % len(prompts)] for i in range(n)]


class TextToImageEvaluator:
    """Sample grid of fixed prompts and noise at every evaluation point, with the output
    statistics of the decoded images (the variance curves: CA-only's oversaturation shows
    up as rising std and saturated share) and of the latents, and their colour and contrast
    (eval/colour.py), also relative to the teacher's samples of the same prompts and noise
    (eval/protocols/teacher_reference.py; data.eval_vs_teacher: ``teacher`` is then the teacher's
    identity, else None).

    ``model`` is the scale's loaded teacher (TextToImage), ``rows`` one condition per prompt,
    ``nrow`` the grid's columns (one per distinct prompt), ``batch`` images per sampling call."""

    def __init__(self, cfg: RunConfig, run_dir: Path | None, model, prompts: list[str], rows: list, nrow: int,
                 batch: int, teacher: dict | None = None):
        self.cfg, self.run_dir, self.model = cfg, run_dir, model
        self.prompts, self.rows, self.nrow, self.batch = prompts, rows, nrow, batch
        gen = torch.Generator().manual_seed(EVAL_SEED)
        self.noise = torch.randn(len(prompts), *self.model.backbone.sample_shape, generator=gen)
        self.teacher_colour = None
        if teacher is not None:
            self.teacher_colour = TeacherColour(reference_settings(cfg), self.model, teacher, self.prompts, self.rows, self.noise,
                                                self.batch, EVAL_SEED)

    def samples(self, module) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, images in [-1, 1]) of the student on the fixed prompts and noise."""
        backbone, device = self.model.backbone, module.device
        self.model.vae.to(device)
        latents, images, g = [], [], evaluation_generator()
        for i in range(0, len(self.rows), self.batch):
            cond = backbone.cat_conditions(self.rows[i:i + self.batch])
            cond = to_device(cond, device)
            z = module.sample(self.noise[i:i + self.batch].to(device), cond, g)
            latents.append(z.float().cpu())
            images.append(self.model.decode(z).cpu())
        return torch.cat(latents), torch.cat(images)

    def __call__(self, module) -> dict:
        latents, images = self.samples(module)
        metrics = {**output_stats(images), "latent_std": latents.flatten(1).std(1).mean().item(),
                   "spectral_centroid": spectral_centroid(raps(images))}
        colour = mean_stats(colour_stats(images))
        metrics.update(colour)
        if self.teacher_colour is not None:
            metrics.update(relative(colour, self.teacher_colour.get(module), "vs_teacher"))
        if self.run_dir is not None:
            save_grid(images, self.run_dir / "samples" / f"step_{module.step_count:07d}.png",
                      nrow=self.nrow)
        return metrics


def reference_settings(cfg: RunConfig) -> ReferenceSettings:
    return ReferenceSettings(cfg.run.cache_dir, cfg.run.scale, cfg.objective.alpha, cfg.parallel.precision)


def teacher_row(cfg: RunConfig, teacher: dict, prompts: list[str]) -> dict[str, dict]:
    """The teacher's colour row on the evaluator's ``prompts`` and noise, where a run's first evaluation
    cached it (nothing is sampled here; ``teacher`` its identity); empty where it did not."""
    ref = read_reference(reference_path(reference_settings(cfg), teacher, prompts, EVAL_SEED))
    if ref is None:
        return {}
    return {f"teacher, {ref['steps']}-step CFG, alpha={ref['alpha']:g}": ref["colour"]}
