"""The text-to-image training evaluator's colour reference: the teacher's many-step CFG samples of
the evaluator's own fixed prompts and noise, at the run's alpha (the target the student is
distilled towards), sampled once at the first evaluation and cached under
``cache_dir/teacher_eval`` -- a few images (eval_samples, at most 64) of ``teacher_steps`` x 2
network calls each, once per teacher, prompt set and precision, shared by every run.

Sampled with the run's own frozen teacher (``module.teacher``: a LoRA run's adapters are off
there), so under FSDP every rank takes part, as in the evaluation itself.  Whether the cache
exists is decided when the evaluator is made: no rank can write it before every rank has looked.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddmd_lab.backbones.pipeline_sampling import PipelineCFG, pipeline_teacher_sample
from ddmd_lab.eval.colour import colour_stats, mean_stats
from ddmd_lab.util.devices import to_device
from ddmd_lab.util.io import atomic_write_text


@dataclass(frozen=True)
class ReferenceSettings:
    """What of a run decides (and keeps) the teacher's reference besides the teacher's own identity: the
    caller (scales/text2image_eval.py) takes it from the run's config."""
    cache_dir: str
    scale: str
    alpha: float
    precision: str


def reference_path(run: ReferenceSettings, identity: dict, prompts: list[str], seed: int) -> Path:
    """Where the teacher's colour means for these evaluation prompts and noise are cached; ``identity``
    says what decides the teacher's images at the run's alpha (the scale's ``teacher_identity``)."""
    key = {"identity": identity, "prompts": prompts, "seed": seed, "precision": run.precision}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(run.cache_dir) / "teacher_eval" / f"{run.scale}-{len(prompts)}-{digest}.json"


def read_reference(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


class TeacherColour:
    """``get(module)``: the teacher's colour means (dict), sampled on first use unless cached."""

    def __init__(self, run: ReferenceSettings, model, identity: dict, prompts: list[str], rows: list,
                 noise: torch.Tensor, batch: int, seed: int):
        self.run, self.model, self.rows, self.noise, self.batch = run, model, rows, noise, batch
        self.path = reference_path(run, identity, prompts, seed)
        self.cached = read_reference(self.path)

    @torch.no_grad()
    def get(self, module) -> dict:
        if self.cached is None:
            self.cached = self._sample(module)
        return self.cached["colour"]

    def _sample(self, module) -> dict:
        model, device = self.model, module.device
        guidance = model.guidance or PipelineCFG.pipeline_default(model.family)
        model.vae.to(device)
        parts = []
        for i in range(0, len(self.rows), self.batch):
            cond = to_device(model.backbone.cat_conditions(self.rows[i:i + self.batch]), device)
            z = pipeline_teacher_sample(model.family, module.teacher, model.pipeline.scheduler, guidance,
                                        self.noise[i:i + self.batch].to(device), cond, self.run.alpha, model.teacher_steps)
            parts.append(colour_stats(model.decode(z).cpu()))
        per_image = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        result = {"colour": mean_stats(per_image), "n": len(self.rows), "steps": model.teacher_steps,
                  "alpha": self.run.alpha, "precision": self.run.precision}
        trainer = getattr(module, "_trainer", None)
        if trainer is None or trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(result, indent=2))
        return result
