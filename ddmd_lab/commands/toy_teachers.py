"""``python -m ddmd_lab.commands.toy_teachers [runs_dir]``: report/toy_teachers.py's tables of toy2d under
both teachers (issue 14), with the trained teacher's error against the exact denoiser by tau, measured here
(it runs the teacher) and handed to the report, which only reads run folders."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable

import torch

from ddmd_lab.config import load_config
from ddmd_lab.core.flow import renoise
from ddmd_lab.data.toy2d import ToyMixture
from ddmd_lab.report.toy_teachers import REFERENCE, tables
from ddmd_lab.scales import toy2d

TAUS = (0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.98)  # the run's tau clamp is [0.02, 0.98]


@torch.no_grad()
def teacher_error_by_tau(teacher, mix: ToyMixture, taus: Iterable[float], n: int = 4000, seed: int = 0) -> list[dict]:
    """How far a teacher's x0 predictions are from the exact ones at each tau, on data re-noised at tau
    (what the CA and DM terms query once the generator is near the data): RMS error of the conditional
    and the unconditional prediction, and of the CA direction cond - uncond, that last one also relative
    to the exact direction's RMS (the part of CA that is the teacher's error)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % mix.num_classes
    x0, noise = mix.sample(labels, g), torch.randn(n, 2, generator=g)
    rms = lambda v: float(v.pow(2).sum(1).mean().sqrt())
    rows = []
    for tau in taus:
        t = torch.full((n,), float(tau))
        x_t = renoise(x0, noise, t)
        null = teacher.null_condition(labels)
        cond, uncond = teacher.x0(x_t, t, labels).float(), teacher.x0(x_t, t, null).float()
        exact_cond, exact_uncond = mix.posterior_x0(x_t, t, labels), mix.posterior_x0(x_t, t, None)
        ca_error, ca_exact = rms((cond - uncond) - (exact_cond - exact_uncond)), rms(exact_cond - exact_uncond)
        rows.append({"tau": float(tau), "cond_rms_error": rms(cond - exact_cond), "uncond_rms_error": rms(uncond - exact_uncond),
                     "ca_rms_error": ca_error, "ca_exact_rms": ca_exact, "ca_relative_error": ca_error / ca_exact})
    return rows


def toy_teacher_tables(runs_dir: str | Path = "runs") -> str:
    cfg = load_config("toy2d", REFERENCE)
    errors = teacher_error_by_tau(toy2d.load_trained(cfg).eval(), toy2d.mixture(cfg), TAUS)
    return tables(runs_dir, toy2d.teacher_settings, errors)


if __name__ == "__main__":
    print(toy_teacher_tables(sys.argv[1] if len(sys.argv) > 1 else "runs"))
