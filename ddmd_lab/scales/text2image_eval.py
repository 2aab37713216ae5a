"""The text-to-image scales' running evaluation: a sample grid of fixed prompts and noise at every
evaluation point, its output statistics and colour, relative to the teacher's samples of the same
prompts and noise; and the teacher's colour row for the tables."""
from __future__ import annotations

from pathlib import Path

import torch
from ddmd_lab.util.devices import to_device

from ddmd_lab.config import RunConfig
from ddmd_lab.errors import UserError
from ddmd_lab.eval.grid import save_grid
from ddmd_lab.eval.spectra import raps, spectral_centroid
from ddmd_lab.eval.stats import output_stats
from ddmd_lab.scales.base import EVAL_SEED
from ddmd_lab.scales.text2image import data_settings, embed, encode_device, encode_rows, load_model, text_encoders_on


def eval_prompts(cfg: RunConfig) -> list[str]:
    """The evaluator's prompts: data.eval_prompts repeated to eval_samples (at most 64: real-model
    decoding is expensive, and a grid needs no more)."""
    prompts = list(data_settings(cfg)["eval_prompts"])
    n = min(max(cfg.eval_samples, len(prompts)), 64)
    return [prompts[i % len(prompts)] for i in range(n)]


class Evaluator:
    """Sample grid of fixed prompts and noise at every evaluation point, with the output
    statistics of the decoded images (the variance curves: CA-only's oversaturation shows
    up as rising std and saturated share) and of the latents, and their colour and contrast
    (eval/colour.py), also relative to the teacher's samples of the same prompts and noise
    (eval/teacher_reference.py; data.eval_vs_teacher)."""

    def __init__(self, cfg: RunConfig, run_dir: Path | None = None):
        self.cfg, self.run_dir = cfg, run_dir
        self.model = load_model(cfg, training=True)
        d = data_settings(cfg)
        self.prompts = eval_prompts(cfg)
        n = len(self.prompts)
        self.nrow = len(d["eval_prompts"])  # one column per prompt
        self.batch = d["eval_batch"]
        if d["precompute"]:  # embedded with the training prompts (make embed)
            cache = embed(cfg, self.model, log=lambda _: None)["eval"]
            self.rows = [cache[i % self.nrow] for i in range(n)]
        else:
            with text_encoders_on(self.model, encode_device(cfg)):
                self.rows = encode_rows(self.model, self.prompts, self.batch)
        gen = torch.Generator().manual_seed(EVAL_SEED)
        self.noise = torch.randn(n, *self.model.backbone.sample_shape, generator=gen)
        self.teacher_colour = None
        if d["eval_vs_teacher"]:
            from ddmd_lab.eval.protocols.teacher_reference import TeacherColour

            self.teacher_colour = TeacherColour(cfg, self.model, self.prompts, self.rows, self.noise, self.batch, EVAL_SEED)

    def samples(self, module) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, images in [-1, 1]) of the student on the fixed prompts and noise."""
        backbone, device = self.model.backbone, module.device
        self.model.vae.to(device)
        latents, images = [], []
        for i in range(0, len(self.rows), self.batch):
            cond = backbone.cat_conditions(self.rows[i:i + self.batch])
            cond = to_device(cond, device)
            z = module.sample(self.noise[i:i + self.batch].to(device), cond)
            latents.append(z.float().cpu())
            images.append(self.model.decode(z).cpu())
        return torch.cat(latents), torch.cat(images)

    def __call__(self, module) -> dict:
        latents, images = self.samples(module)
        metrics = {**output_stats(images), "latent_std": latents.flatten(1).std(1).mean().item(),
                   "spectral_centroid": spectral_centroid(raps(images))}
        from ddmd_lab.eval.colour import colour_stats, mean_stats, relative

        colour = mean_stats(colour_stats(images))
        metrics.update(colour)
        if self.teacher_colour is not None:
            metrics.update(relative(colour, self.teacher_colour.get(module), "vs_teacher"))
        if self.run_dir is not None:
            save_grid(images, self.run_dir / "samples" / f"step_{module.step_count:07d}.png",
                      nrow=self.nrow)
        return metrics


def reference_rows(cfg: RunConfig) -> dict[str, dict]:
    """The teacher's colour row on the evaluator's prompts and noise, where a run's first evaluation
    cached it (nothing is sampled here); its COCO-10k / HPSv2.1 numbers come from make eval-coco / eval-hps."""
    from ddmd_lab.eval.protocols.teacher_reference import read_reference, reference_path

    try:
        ref = read_reference(reference_path(cfg, eval_prompts(cfg), EVAL_SEED))
    except UserError:  # the checkpoint is not here (another machine's runs): no row
        return {}
    if ref is None:
        return {}
    return {f"teacher, {ref['steps']}-step CFG, alpha={ref['alpha']:g}": ref["colour"]}
