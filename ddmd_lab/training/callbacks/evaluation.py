"""Evaluation during distillation: fixed noise, one metrics.csv row per point.

With a weight average (ema_decay > 0) the metrics are the average's (the student), and the raw
generator's are logged beside them as ``raw_<metric>`` where the evaluator can measure without
writing (its ``measure``).

The scale supplies ``evaluate(module) -> dict``; this callback decides when to
call it (before the first step, every ``every`` steps, at the end), appends a
row to metrics.csv and writes summary.json from the last row, with each metric's score (``scores``):
its mean over the last ``score_last`` evaluations (report/stats.last_evaluations_mean).

Global rank 0 evaluates and writes.  Under FSDP (a strategy with
``evaluates_on_every_rank``) a forward needs every rank's shards, so every rank
runs the same evaluation calls; rank 0 alone writes rows, logs and the summary
(its numbers are what a single rank would measure), and the other ranks'
evaluators write their grids and spectra into a scratch folder (their
``run_dir``), deleted at the end.
"""
from __future__ import annotations

import csv
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch

from ddmd_lab.parallel.strategies import sharded_ids
from ddmd_lab.report.stats import last_evaluations_mean
from ddmd_lab.training.callbacks.wandb_media import log_final, log_step_media
from ddmd_lab.util.io import atomic_write_text


class EvalCallback(pl.Callback):
    """``figures(run_dir, cfg) -> {W&B key: PNG file name in run_dir}``: made from the finished run's
    measurements, logged with the summary (run.run_folder_figures: the report's plots); None: none."""

    def __init__(self, evaluate: Callable, run_dir: Path, every: int, figures: Callable | None = None):
        self.evaluate, self.run_dir, self.every, self.figures = evaluate, Path(run_dir), every, figures
        self.rows: list[dict] = []
        self.every_rank, self._scratch = False, None

    def setup(self, trainer, module, stage):
        self.every_rank = bool(getattr(trainer.strategy, "evaluates_on_every_rank", False))
        if self.every_rank and not trainer.is_global_zero and getattr(self.evaluate, "run_dir", None) is not None:
            self._scratch = Path(tempfile.mkdtemp(prefix=f"ddmd_eval_rank{trainer.global_rank}_"))
            self.evaluate.run_dir = self._scratch

    def teardown(self, trainer, module, stage):
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _evaluates(self, trainer) -> bool:
        return trainer.is_global_zero or self.every_rank

    def _record(self, module) -> dict:
        was_training = module.training
        module.eval()
        # Evaluation must not move the training RNG: how often a run is
        # evaluated then never changes its training, and resumes stay exact.
        cuda = [module.device.index or 0] if module.device.type == "cuda" else []
        # in the run's precision (bf16-mixed: autocast, as the training step), not float32
        with torch.random.fork_rng(devices=cuda), module.trainer.precision_plugin.forward_context():
            with module.ema_weights():  # the student: the generator's weight average, where the run keeps one
                metrics = self.evaluate(module)
            measure = getattr(self.evaluate, "measure", None)  # metrics alone, nothing written
            if module.ema is not None and measure is not None:
                # before the first update the average is the generator itself: its metrics, not a second sampling
                raw = measure(module) if module.ema.updates else dict(metrics)
                metrics.update({f"raw_{k}": v for k, v in raw.items()})
        module.train(was_training)
        row = {"step": module.step_count, "generator_steps": module.generator_step_count, **metrics}
        self.rows.append(row)
        if not module.trainer.is_global_zero:
            return row
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

    # Under DDP global rank 0 evaluates and writes; the others train on and meet it at the
    # next collective (evaluation itself uses none).  Under FSDP every rank evaluates.
    def on_train_start(self, trainer, module):
        if module.step_count == 0 and self._evaluates(trainer):
            self._record(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if module.step_count % self.every == 0 and self._evaluates(trainer):
            self._record(module)

    def on_train_end(self, trainer, module):
        ranks = {"ranks": trainer.world_size, "ranks_identical": ranks_identical(module)} if trainer.world_size > 1 else {}
        if not self._evaluates(trainer):
            return
        last = self.rows[-1] if self.rows and self.rows[-1]["step"] == module.step_count else self._record(module)
        final = getattr(self.evaluate, "final", None)  # expensive end-of-run metrics (Inception FID)
        extra = {}
        if final is not None:
            was_training = module.training
            module.eval()
            with module.trainer.precision_plugin.forward_context(), module.ema_weights():  # as _record
                extra = final(module)
            module.train(was_training)
        if not trainer.is_global_zero:
            return
        k = module.cfg.evaluation.score_last
        scores = last_evaluations_mean(_read_rows(self.run_dir / "metrics.csv"), k)  # all rows, resumes too
        summary = {**last, **extra, **ranks, "skipped_steps": module.skipped_steps, "critic_steps": module.critic_step_count,
                   "score_last": k, "scores": scores}
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        figures = self.figures(self.run_dir, module.cfg) if self.figures is not None else {}
        log_final(module.loggers, self.run_dir, figures, summary)


def _read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def ranks_identical(module) -> bool | None:
    """Whether every rank holds the same trained weights: generator, fake, discriminator head (a
    collective: all ranks call it).  Under FSDP a sharded weight exists once, on one rank, so only
    what is held whole on every rank is compared (the head, say); None where nothing is."""
    sharded = sharded_ids(module)
    params = [p for m in (module.generator, module.fake, module.disc) if m is not None for p in m.parameters()
              if id(p) not in sharded]
    if not params:
        return None
    mine = torch.stack([p.detach().double().sum() for p in params] + [p.detach().double().square().sum() for p in params])
    every = module.all_gather(mine)  # (world, n)
    return bool((every == every[0]).all())
