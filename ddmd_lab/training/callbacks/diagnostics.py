"""Diagnostics during training (diagnostics.py's quantities per tau bin), every ``diagnostics_every``-th
generator step and at the last one.

The module measures them inside its generator step (``diagnose_step``: it holds the step's CA and DM terms;
no gradients; the common draw from a generator of its own, seeded by (seed, step, rank), inside
``torch.random.fork_rng``: a run trains bit-identically with diagnostics on or off, and a resumed run
measures what the uninterrupted one did).  It does so only where this callback is attached (``setup``
switches it on; run.py attaches it when ``diagnostics_every`` > 0).  Every rank measures (under FSDP a
forward is a collective); global rank 0 appends the per-bin rows to ``<run_dir>/diagnostics.csv`` and logs
``diag/<quantity>`` (batch means) to every logger and ``diag_bins/<quantity>/tau<lo>-<hi>`` (per bin of the
quantity's natural tau, diagnostics.NATURAL, in hundredths: tau030-040; ``diag_bins/count_<tau>/...``: the taus'
histograms as shares of the batch) to W&B.

A row's ``step`` is the step count at the end of the step whose update it describes (the training logs'
``step``), ``generator_step`` that generator step's number (1-based): a resume keeps rows up to its
checkpoint's step, as for metrics.csv.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from ddmd_lab.method.diagnostics import measure
from ddmd_lab.method.tau_bins import NATURAL, QUANTITIES, bin_samples, overall

CSV_NAME = "diagnostics.csv"
COLUMNS = ("step", "generator_step", "by", "bin", "tau_lo", "tau_hi", "count", *QUANTITIES)


def due(module) -> bool:
    """Whether this step's generator update is diagnosed: every ``diagnostics_every``-th generator step and the
    run's last one, where a DiagnosticsCallback is attached."""
    every = module.cfg.evaluation.diagnostics_every
    if every <= 0 or not getattr(module, "diagnostics_on", False):
        return False
    g = module.step_count // module.cfg.schedule.ttur  # this generator step's index (skipped updates count)
    return (g + 1) % every == 0 or g == module.cfg.schedule.generator_steps - 1


def diagnostics_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed % 2**63, step, rank, 0xD1A6]).generate_state(1, np.uint64)[0] >> 1)


@torch.no_grad()
def diagnose_step(module, terms, cond, t_student) -> dict:
    """The binned diagnostics of this generator step's terms (called inside the step, before its update)."""
    x = terms.x
    gen = torch.Generator(device=x.device).manual_seed(diagnostics_seed(module.cfg.run.seed, module.step_count,
                                                                         module.global_rank))
    cuda = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # whatever a network draws here (dropout), training never sees it
        samples = measure(module.arm, x, cond, t_student, module.teacher, module.fake, module.settings,
                          terms=terms, generator=gen)
    return {"step": module.step_count + 1, "generator_step": module.step_count // module.cfg.schedule.ttur + 1,
            "bins": bin_samples(samples)}


def rows(diagnosis: dict) -> list[dict]:
    out = []
    for by, b in diagnosis["bins"].items():
        for k in range(b.bins):
            means = {q: b.mean(q)[k] for q in b.names}
            out.append({"step": diagnosis["step"], "generator_step": diagnosis["generator_step"], "by": by, "bin": k,
                        "tau_lo": f"{b.edges[k]:g}", "tau_hi": f"{b.edges[k + 1]:g}", "count": int(b.count[k]),
                        **{q: (f"{means[q]:.6g}" if q in means and np.isfinite(means[q]) else "") for q in QUANTITIES}})
    return out


def append_rows(path: Path, new: list[dict]) -> None:
    path = Path(path)
    fresh = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if fresh:
            writer.writeheader()
        writer.writerows(new)


def log_values(diagnosis: dict) -> tuple[dict[str, float], dict[str, float]]:
    """(scalars for every logger: ``diag/<quantity>``, per-bin values for W&B: ``diag_bins/...``), finite only."""
    bins = diagnosis["bins"]
    scalars = {f"diag/{q}": v for q, v in overall(bins).items() if math.isfinite(v)}
    per_bin = {}
    for q, by in NATURAL.items():
        if by in bins:
            b = bins[by]
            for k, v in enumerate(b.mean(q)):
                if np.isfinite(v):
                    per_bin[f"diag_bins/{q}/{bin_name(b.edges, k)}"] = float(v)
    for by, b in bins.items():
        total = max(b.count.sum(), 1.0)
        per_bin.update({f"diag_bins/count_{by}/{bin_name(b.edges, k)}": float(c / total) for k, c in enumerate(b.count)})
    return scalars, per_bin


def bin_name(edges, k: int) -> str:
    """A bin in a W&B key, without dots: tau in hundredths, e.g. tau030-040 for [0.3, 0.4)."""
    return f"tau{round(edges[k] * 100):03d}-{round(edges[k + 1] * 100):03d}"


class DiagnosticsCallback(pl.Callback):
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def setup(self, trainer, module, stage):
        module.diagnostics_on = True

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        diagnosis, module.diagnosis = getattr(module, "diagnosis", None), None
        if diagnosis is None or not trainer.is_global_zero:
            return
        append_rows(self.run_dir / CSV_NAME, rows(diagnosis))
        from pytorch_lightning.loggers import WandbLogger  # deferred: it imports wandb (seconds); only W&B runs need it

        scalars, per_bin = log_values(diagnosis)
        for logger in module.loggers:
            values = {**scalars, **per_bin} if isinstance(logger, WandbLogger) else scalars
            if values:
                logger.log_metrics(values, step=module.step_count)
