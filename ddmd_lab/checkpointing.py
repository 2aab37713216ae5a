"""Checkpoints that survive a kill, and finding the one to resume from.

A checkpoint is written to a temporary file in the same folder and renamed
over ``last.ckpt``: a kill during the write leaves the previous checkpoint
whole.  Periods are counted in the module's own steps (Lightning's
global_step counts every optimiser's step).
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytorch_lightning as pl

from .errors import UserError

# Fault injection for tests: "kill_during_write:N" SIGKILLs the process while
# it writes its N-th checkpoint (after the temporary file is half written).
FAULT_ENV = "DDMD_FAULT"


class AtomicCheckpoint(pl.Callback):
    def __init__(self, folder: Path, every: int):
        self.folder, self.every, self.writes = Path(folder), every, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.every and module.step_count % self.every == 0:
            self.save(trainer, "last.ckpt")

    def save(self, trainer, name: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / name
        tmp = self.folder / f".{name}.{os.getpid()}.tmp"
        trainer.save_checkpoint(tmp)  # every rank calls it; Lightning writes on global rank 0
        self.writes += 1
        if trainer.is_global_zero:
            _maybe_inject_fault(tmp, self.writes)
            os.replace(tmp, target)
        return target


def _maybe_inject_fault(tmp: Path, write_index: int) -> None:
    fault = os.environ.get(FAULT_ENV, "")
    if fault.startswith("kill_during_write:") and int(fault.split(":")[1]) == write_index:
        data = tmp.read_bytes()
        tmp.write_bytes(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)


def resolve_resume(target: str) -> tuple[Path, Path]:
    """(run folder, checkpoint) from a run folder or a checkpoint file."""
    path = Path(target)
    if path.is_file() and path.suffix == ".ckpt":
        run_dir = path.parent.parent
        ckpt = path
    elif path.is_dir():
        run_dir, ckpt = path, path / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise UserError(f"RESUME={target} has no checkpoints/last.ckpt (the run stopped before its first "
                            "checkpoint); start a new run instead, or lower checkpoint_every.")
    else:
        raise UserError(f"RESUME={target} is neither a run folder nor a .ckpt file; pass runs/<scale>/<arm>/<run-id>.")
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"RESUME={target}: {run_dir} has no config.yaml, so it is not a ddmd_lab run folder.")
    return run_dir, ckpt


def latest_unfinished_run(runs_dir: Path, scale: str, arm: str) -> Path:
    """For RESUME=auto: the newest run of this scale and arm without summary.json."""
    parent = Path(runs_dir) / scale / arm
    candidates = sorted(p for p in parent.glob("*/checkpoints/last.ckpt") if not (p.parents[1] / "summary.json").exists())
    if not candidates:
        raise UserError(f"RESUME=auto found no interrupted run with a checkpoint under {parent}; start a new run.")
    return candidates[-1].parents[1]
