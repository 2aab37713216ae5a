"""What make bench and make gpu-check time, here where Lightning is allowed: one network evaluation at a
time (evaluation_costs), the training steps of a DistillModule fitted for one pass over a loader under
a bare Trainer -- no logger, checkpoints, progress bar or model summary -- with a StepTimer (bench_arm,
timed_fit), and a whole run as a user starts it, split into its phases (timed_run).  The commands read
the numbers and never touch Lightning."""
from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision

from ddmd_lab.training.module import DistillModule
from ddmd_lab.training.run import run_ablation
from ddmd_lab.util.host_reads import counting_host_reads


def sync() -> None:
    """Wait for queued GPU work: CUDA calls return before their kernels finish, so a timer needs this."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def evaluation_costs(model, cond, batch: int, repeats: int, gan: bool = True) -> dict[str, float]:
    """Seconds for one no-grad forward at batch B, 2B, 3B, one forward+backward at B, and (``gan``) one
    forward+backward of the features the GAN arm's discriminator reads (its extra evaluations)."""
    shape, device = model.sample_shape, next(model.parameters()).device
    x = torch.randn(batch, *shape, device=device)
    t = torch.rand(batch, device=device)
    out = {}
    for k in (1, 2, 3):
        xs, ts, cs = x.repeat(k, *[1] * len(shape)), t.repeat(k), model.cat_conditions([cond] * k)

        def fwd(xs=xs, ts=ts, cs=cs):
            with torch.no_grad():
                model.x0(xs, ts, cs)

        out[f"fwd{k}"] = median_time(fwd, repeats)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        model.x0(x, t, cond).square().mean().backward()

    out["fwd_bwd"] = median_time(fwd_bwd, repeats)
    if not gan:
        return out

    def features_fwd_bwd():
        model.zero_grad(set_to_none=True)
        model.features(x, t, cond).float().square().mean().backward()

    out["features_fwd_bwd"] = median_time(features_fwd_bwd, repeats)
    x2, t2, c2 = torch.cat([x, x]), torch.cat([t, t]), model.cat_conditions([cond, cond])

    def features2_fwd_bwd():  # the discriminator step: generated and real batches in one call
        model.zero_grad(set_to_none=True)
        model.features(x2, t2, c2).float().square().mean().backward()

    out["features2_fwd_bwd"] = median_time(features2_fwd_bwd, repeats)
    return out


class StepTimer(pl.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.times, self._t0 = warmup, [], 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        sync()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        sync()
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self._t0)


def _bare_trainer(cfg, callbacks: list, **options) -> pl.Trainer:
    """One pass over the loader and nothing but its steps: no logger, checkpoints, progress bar or summary."""
    return pl.Trainer(max_epochs=1, accelerator=cfg.parallel.accelerator, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, **options)


def bench_arm(teacher, cfg, loader, warmup: int, callbacks=()) -> tuple[float, float]:
    """(mean seconds per step in the run's precision, host reads per step made by ddmd_lab's code: each
    waits for the device)."""
    timer = StepTimer(warmup)
    trainer = _bare_trainer(cfg, [timer, *callbacks], log_every_n_steps=cfg.evaluation.log_every,
                            precision=cfg.parallel.precision)
    module = DistillModule(teacher, cfg)
    with counting_host_reads() as reads:
        trainer.fit(module, loader)
    return statistics.mean(timer.times), reads.get("all", 0) / module.step_count


@dataclass
class TimedFit:
    """A finished timed_fit: the module, the seconds of its steps after the warm-up, and what a measurement
    after the fit needs from it (its device placement, its precision's forward context)."""
    module: DistillModule
    step_times: list[float]
    trainer: pl.Trainer

    def batch_to_device(self, batch, device):
        return self.trainer.strategy.batch_to_device(batch, device)

    def forward_context(self):
        """The context the fit's forwards ran in (autocast under a mixed precision)."""
        return self.trainer.precision_plugin.forward_context()


def timed_fit(teacher, cfg, loader, warmup: int = 1) -> TimedFit:
    """make gpu-check's fit: on one device, in the run's precision."""
    timer = StepTimer(warmup)
    trainer = _bare_trainer(cfg, [timer], devices=1, precision=cfg.parallel.precision)
    module = DistillModule(teacher, cfg)
    trainer.fit(module, loader)
    return TimedFit(module, timer.times, trainer)


def precision_context(cfg, device: torch.device):
    """The forward context of the run's precision (Lightning's own autocast for the mixed ones), so a
    network evaluation is timed as the run makes it."""
    if cfg.parallel.precision in ("bf16-mixed", "16-mixed"):
        return MixedPrecision(cfg.parallel.precision, device.type).forward_context()
    return contextlib.nullcontext()


class PhaseTimer(StepTimer):
    """Where a whole run's time goes: every step's time (StepTimer's, no warm-up left out), and when
    training starts and ends.  First in the callback list, so a step's time holds the step alone; the
    evaluation, checkpoint and logging callbacks run after it, between steps."""

    def __init__(self):
        super().__init__(warmup=0)
        self.train_start, self.train_end = 0.0, 0.0

    def on_train_start(self, trainer, module):
        self.train_start = time.perf_counter()

    def on_train_end(self, trainer, module):
        self.train_end = time.perf_counter()


@dataclass
class RunPhases:
    """Seconds of one whole run: set-up (networks, data, evaluator, trainer), training steps, the work
    between steps (evaluations, checkpoints, logs; the step-0 evaluation included), the end (last
    evaluation, end-of-run spectra and figures, final checkpoint)."""
    total: float
    setup: float
    steps: float
    between: float
    end: float


def timed_run(cfg) -> RunPhases:
    """A whole run of ``cfg`` as ``make ablation`` runs it (in a scratch runs folder), timed by phase."""
    timer = PhaseTimer()
    with tempfile.TemporaryDirectory(prefix="ddmd_bench_run_") as scratch:
        t0 = time.perf_counter()
        run_ablation(cfg.replace(runs_dir=scratch), callbacks=[timer])
        total = time.perf_counter() - t0
    steps = sum(timer.times)
    return RunPhases(total, timer.train_start - t0, steps, timer.train_end - timer.train_start - steps,
                     t0 + total - timer.train_end)
