"""What a fine-tune measures, on fixed noise and conditions (the same before and after).

Old classes / prompts (forgetting): the distillation runs' curves under their own names
(output mean / std / spread, saturated and out-of-range shares, grey-level contrast; image
scales: class adherence and the classifier Frechet distance against real test images
(``domain_fd``), HF excess and spectral centroid against real images).  The new concept,
prefixed ``new_``: the same output statistics, HF excess against the concept's own real
images, and on the image scales adherence (share the concept's dataset's classifier calls
the concept's class) and the classifier FD against the class's held-out images.  Z-Image
measures no adherence (no CLIP weights offline): statistics, colour and spectra only.

``measure(steps, guidance)`` samples the student at any step count (its own times at its
own count, shift(k / N) otherwise) with CFG in the offset form (alpha = 1 + guidance).
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from ddmd_lab.core.guidance import alpha_from_offset
from ddmd_lab.core.rollout import Guided, sample_student, teacher_cfg_sample
from ddmd_lab.eval.colour import colour_stats, mean_stats
from ddmd_lab.eval.grid import save_grid
from ddmd_lab.eval.spectra import high_frequency_excess, raps, spectral_centroid
from ddmd_lab.eval.stats import output_stats
from ddmd_lab.finetune.student import Student
from ddmd_lab.scales import images as scale
from ddmd_lab.scales.text2image import data_settings
from ddmd_lab.training.networks import ensure_classifier
from ddmd_lab.util.devices import to_device

FINETUNE_NOISE_SEED = 4321  # its own noise, apart from the distillation evaluation's (scales.base.EVAL_SEED)
TEXT_EVAL_CAP = 64  # real-model decoding is expensive; a grid needs no more


def _stats(images: Tensor, prefix: str = "") -> dict:
    colour = mean_stats(colour_stats(images))
    spectrum = raps(images.clamp(-1, 1))
    out = {**output_stats(images), **colour, "spectral_centroid": spectral_centroid(spectrum)}
    return {prefix + k: v for k, v in out.items()}, spectrum


class FinetuneEvaluator:
    """Fixed noise and conditions for the old and the new concept; subclasses score them."""

    batch = 250

    def __init__(self, student: Student, concept, ft):
        self.student, self.concept, self.ft = student, concept, ft

    # -- sampling ---------------------------------------------------------------
    @torch.no_grad()
    def sample(self, noise: Tensor, cond, steps: int, guidance: float) -> Tensor:
        s, device = self.student, self.student.device
        model = s.backbone if guidance == 0 else Guided(s.backbone, alpha_from_offset(guidance))
        times = s.times(steps).to(device)
        gen = torch.Generator().manual_seed(FINETUNE_NOISE_SEED + 2)  # a renoise student's fresh noise, the same every time
        out = []
        with self._autocast(device):
            for i in range(0, len(noise), self.batch):
                c = self.cond_slice(cond, i, i + self.batch)
                out.append(sample_student(model, noise[i:i + self.batch].to(device), c, times,
                                          s.cfg.student.student_sampler, gen).float().cpu())
        return torch.cat(out)

    def _autocast(self, device: torch.device):
        if device.type == "cuda" and self.student.cfg.parallel.precision.startswith("bf16"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def cond_slice(self, cond, i: int, j: int):
        return cond[i:j].to(self.student.device)

    def measure(self, steps: int | None = None, guidance: float = 0.0) -> tuple[dict, Tensor, int]:
        """(metrics, a grid's images, its row length) at ``steps`` evaluations and ``guidance``."""
        steps = steps or self.student.cfg.student.student_steps
        old = self.to_images(self.sample(self.old_noise, self.old_cond, steps, guidance))
        new = self.to_images(self.sample(self.new_noise, self.new_cond, steps, guidance))
        metrics = {"sample_steps": steps, "sample_guidance": guidance, **self.score_old(old), **self.score_new(new)}
        grid, nrow = self.grid(old, new)
        return metrics, grid, nrow

    def to_images(self, samples: Tensor) -> Tensor:
        return samples


class ImageFinetuneEvaluator(FinetuneEvaluator):
    """fashion / mnist: classes as conditions, the scales' classifiers as judges."""

    def __init__(self, student: Student, concept, ft):
        super().__init__(student, concept, ft)
        cfg = student.cfg
        self.k = student.new_label  # the old classes are 0..k-1
        shape = scale.image_set(cfg, "train").images.shape[1:]
        gen = torch.Generator().manual_seed(FINETUNE_NOISE_SEED)
        self.old_noise = torch.randn(ft.eval_samples, *shape, generator=gen)
        self.new_noise = torch.randn(ft.eval_new, *shape, generator=gen)
        self.old_cond = torch.arange(ft.eval_samples) % self.k
        self.new_cond = torch.full((ft.eval_new,), self.k, dtype=torch.long)
        real = scale.real_eval_images(cfg)
        ensure_classifier(cfg)  # cached after the run; trained here only where it was deleted
        self.old_judge = scale.ClassifierMetrics(scale.classifier(cfg), real)
        self.real_spectrum = raps(real)
        # the concept's dataset's classifier, trained (once, cached) with the run's evaluation settings; its data root
        # is the run's only for the run's own dataset
        source = cfg if concept.source == cfg.run.scale else cfg.replace(
            scale=concept.source, data={k: v for k, v in cfg.data.items() if k != "root"})
        ensure_classifier(source)
        self.new_judge = scale.ClassifierMetrics(scale.classifier(source), concept.test)
        self.new_spectrum = raps(concept.test)

    def score_old(self, x: Tensor) -> dict:
        stats, spectrum = _stats(x)
        return {**stats, **self.old_judge(x, self.old_cond), "hf_excess": high_frequency_excess(spectrum, self.real_spectrum)}

    def score_new(self, x: Tensor) -> dict:
        stats, spectrum = _stats(x, "new_")
        judged = self.new_judge(x, torch.full((len(x),), self.concept.target_class, dtype=torch.long))
        return {**stats, "new_adherence": judged["class_adherence"], "new_fd": judged["domain_fd"],
                "new_hf_excess": high_frequency_excess(spectrum, self.new_spectrum)}

    @torch.no_grad()
    def measure_teacher(self, teacher, guidance: float, ode_steps: int) -> dict:
        """The scale's teacher on the old classes' noise and labels, a ``ode_steps``-step CFG ODE at
        ``guidance`` (offset form): the reference a student's reaction to sampling guidance is
        compared with (the teacher never learns the new concept, so only the old classes)."""
        alpha, device = alpha_from_offset(guidance), self.student.device
        teacher = teacher.eval().to(device)
        samples = torch.cat([teacher_cfg_sample(teacher, self.old_noise[i:i + self.batch].to(device),
                                                self.old_cond[i:i + self.batch].to(device), alpha, ode_steps).float().cpu()
                             for i in range(0, len(self.old_noise), self.batch)])
        return {"sample_guidance": guidance, "ode_steps": ode_steps, **self.score_old(samples)}

    def grid(self, old: Tensor, new: Tensor, per_class: int = 8) -> tuple[Tensor, int]:
        """One row per old class, the new class last (rows as long as the rarest class allows)."""
        n = min(per_class, len(new), *(int((self.old_cond == c).sum()) for c in range(self.k)))
        rows = [old[self.old_cond == c][:n] for c in range(self.k)] + [new[:n]]
        return torch.cat(rows), n


class TextFinetuneEvaluator(FinetuneEvaluator):
    """Z-Image / Lumina2: the run's evaluation prompts (old) and the folder's captions (new)."""

    batch = 4

    def __init__(self, student: Student, concept, ft, real_images: Tensor):
        super().__init__(student, concept, ft)
        model = student.model
        old = list(data_settings(student.cfg)["eval_prompts"])
        self.old_prompts = [old[i % len(old)] for i in range(min(ft.eval_samples, TEXT_EVAL_CAP))]
        self.new_prompts = [concept.captions[i % len(concept.captions)] for i in range(min(ft.eval_new, TEXT_EVAL_CAP))]
        with torch.no_grad():
            self.old_cond = model.backbone.condition_rows(model.encode(self.old_prompts))
            self.new_cond = model.backbone.condition_rows(model.encode(self.new_prompts))
        gen = torch.Generator().manual_seed(FINETUNE_NOISE_SEED)
        shape = model.backbone.sample_shape
        self.old_noise = torch.randn(len(self.old_prompts), *shape, generator=gen)
        self.new_noise = torch.randn(len(self.new_prompts), *shape, generator=gen)
        self.new_spectrum = raps(real_images)

    def cond_slice(self, cond, i: int, j: int):
        return to_device(self.student.backbone.cat_conditions(cond[i:j]), self.student.device)

    def to_images(self, latents: Tensor) -> Tensor:
        return torch.cat([self.student.model.decode(latents[i:i + self.batch]).cpu()
                          for i in range(0, len(latents), self.batch)])

    def score_old(self, x: Tensor) -> dict:
        return _stats(x)[0]

    def score_new(self, x: Tensor) -> dict:
        stats, spectrum = _stats(x, "new_")
        return {**stats, "new_hf_excess": high_frequency_excess(spectrum, self.new_spectrum)}

    def grid(self, old: Tensor, new: Tensor, per_row: int = 8) -> tuple[Tensor, int]:
        n = min(per_row, len(old), len(new))
        return torch.cat([old[:n], new[:n]]), n


def grid_settings(student: Student, ft) -> list[tuple[float, int]]:
    """(guidance, steps) of the grids: every sample guidance x the student's steps + each offset (>= 1)."""
    n = student.cfg.student.student_steps
    steps = sorted({n + o for o in ft.step_offsets if n + o >= 1})
    return [(float(g), s) for g in ft.sample_guidances for s in steps]


def write_grid(images: Tensor, nrow: int, path) -> None:
    save_grid(images, path, nrow)
