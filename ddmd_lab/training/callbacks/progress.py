"""Lightning's progress bar drawn by util.progress's Progress, in a run's own steps."""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar

from ddmd_lab.util.progress import PLAIN_EVERY, Progress


class StepProgressBar(ProgressBar):
    """Lightning's progress bar counting the run's steps (``step k/N``, across epochs and resumes),
    with ETA and the key numbers.  A module with ``step_count`` and ``cfg.schedule.steps`` (DistillModule)
    is counted in those, with its generator steps and its logged losses (read after the steps that
    logged them: reading a device tensor every step would wait for the device); others (teachers,
    classifiers) in batches up to ``max_steps`` or ``max_epochs`` epochs, with what they log to the bar."""

    KEYS = ("loss_generator", "loss_critic")

    def __init__(self, desc: str = "training", every: float = PLAIN_EVERY):
        super().__init__()
        self.desc, self.every = desc, every
        self._enabled, self.progress, self.done = True, None, 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @staticmethod
    def _total(trainer: "pl.Trainer", module) -> int:
        cfg = getattr(module, "cfg", None)
        if hasattr(module, "step_count") and cfg is not None:
            return int(cfg.schedule.steps)
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        batches = trainer.num_training_batches
        return int(batches * max(trainer.max_epochs or 1, 1)) if batches != float("inf") else 0

    def on_train_start(self, trainer, module) -> None:
        self.done = int(getattr(module, "step_count", trainer.global_step))
        self.progress = Progress(self._total(trainer, module), self.desc, "step", initial=self.done,
                                 every=self.every, enabled=self._enabled and trainer.is_global_zero)

    def _numbers(self, trainer, module) -> dict:
        numbers = {k: v for k, v in trainer.progress_bar_metrics.items() if k != "v_num"}
        if hasattr(module, "generator_step_count"):
            numbers["gen"] = int(module.generator_step_count)
            log_every = getattr(getattr(module, "cfg", None), "log_every", 1)
            if self.done % log_every == 0:  # just logged: these were read for the loggers already
                metrics = trainer.callback_metrics
                numbers.update({k: float(metrics[k]) for k in self.KEYS if k in metrics})
        return numbers

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.done = int(getattr(module, "step_count", self.done + 1))
        if self.progress is not None and self.progress.enabled:
            self.progress.update(self.done, **self._numbers(trainer, module))

    def on_train_end(self, trainer, module) -> None:
        if self.progress is not None:
            self.progress.close()

    def teardown(self, trainer, module, stage) -> None:  # a run stopped by an error: the bar ends too
        if self.progress is not None:
            self.progress.close()
