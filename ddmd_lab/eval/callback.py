"""Evaluation during distillation: fixed noise, one metrics.csv row per point.

The scale supplies ``evaluate(module) -> dict``; this callback decides when to
call it (before the first step, every ``every`` steps, at the end), appends a
row to metrics.csv and writes summary.json from the last row.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch

from ..io import atomic_write_text
from .wandb_media import log_final, log_step_media


class EvalCallback(pl.Callback):
    """``figures(run_dir, cfg) -> {W&B key: PNG file name in run_dir}``: made from the finished run's
    measurements, logged with the summary (run.run_figures: the report's plots); None: none."""

    def __init__(self, evaluate: Callable, run_dir: Path, every: int, figures: Callable | None = None):
        self.evaluate, self.run_dir, self.every, self.figures = evaluate, Path(run_dir), every, figures
        self.rows: list[dict] = []

    def _record(self, module) -> dict:
        was_training = module.training
        module.eval()
        # Evaluation must not move the training RNG: how often a run is
        # evaluated then never changes its training, and resumes stay exact.
        cuda = [module.device.index or 0] if module.device.type == "cuda" else []
        # in the run's precision (bf16-mixed: autocast, as the training step), not float32
        with torch.random.fork_rng(devices=cuda), module.trainer.precision_plugin.forward_context():
            metrics = self.evaluate(module)
        module.train(was_training)
        row = {"step": module.step_count, "generator_steps": module.generator_step_count, **metrics}
        self.rows.append(row)
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        for logger in module.loggers:
            logger.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step=module.step_count)
        log_step_media(module.loggers, self.run_dir, module.step_count)
        return row

    # Under data parallelism global rank 0 evaluates and writes; the others train on and
    # meet it at the next collective (evaluation itself uses none).
    def on_train_start(self, trainer, module):
        if module.step_count == 0 and trainer.is_global_zero:
            self._record(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if module.step_count % self.every == 0 and trainer.is_global_zero:
            self._record(module)

    def on_train_end(self, trainer, module):
        ranks = {"ranks": trainer.world_size, "ranks_identical": ranks_identical(module)} if trainer.world_size > 1 else {}
        if not trainer.is_global_zero:
            return
        last = self.rows[-1] if self.rows and self.rows[-1]["step"] == module.step_count else self._record(module)
        final = getattr(self.evaluate, "final", None)  # expensive end-of-run metrics (Inception FID)
        extra = {}
        if final is not None:
            was_training = module.training
            module.eval()
            extra = final(module)
            module.train(was_training)
        summary = {**last, **extra, **ranks, "skipped_steps": module.skipped_steps, "critic_steps": module.critic_step_count}
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        figures = self.figures(self.run_dir, module.cfg) if self.figures is not None else {}
        log_final(module.loggers, self.run_dir, figures, summary)


def ranks_identical(module) -> bool:
    """Whether every rank holds the same generator and fake weights (a collective: all ranks call it)."""
    params = [p for m in (module.generator, module.fake) if m is not None for p in m.parameters()]
    mine = torch.stack([p.detach().double().sum() for p in params] + [p.detach().double().square().sum() for p in params])
    every = module.all_gather(mine)  # (world, n)
    return bool((every == every[0]).all())
