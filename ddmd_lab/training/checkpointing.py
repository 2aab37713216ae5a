"""Checkpoints that survive a kill, and finding the one to resume from.

A checkpoint is written to a temporary file in the same folder and renamed
over ``last.ckpt``: a kill during the write leaves the previous checkpoint
whole.  Under strategy=fsdp it is a folder of shards, ``last.dcp``, put in
place the same way (training/sharded_checkpoint.py).  Periods are counted in the module's own steps (Lightning's
global_step counts every optimiser's step).

A checkpoint holds what training changes (generator and fake weights, or the
LoRA adapters; the discriminator head; optimiser states, counters, RNG,
config), not the frozen teacher: on load that is the scale's teacher, which
must be the one the run was trained from (``check_teacher``).
"""
from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from tqdm import tqdm  # writes above a progress bar, or plainly without one

from ddmd_lab.errors import UserError
from ddmd_lab.parallel.dcp_state import META
from ddmd_lab.training.sharded_checkpoint import folder_bytes, replace_folder, whole_folder

# Fault injection for tests: "kill_during_write:N" SIGKILLs the process while
# it writes its N-th checkpoint (after the temporary file is half written).
FAULT_ENV = "DDMD_FAULT"
WRITE_MODEL_WEIGHTS_ONLY = False  # a resumable checkpoint: optimiser states, counters, RNG and callbacks too


class AtomicCheckpoint(pl.Callback):
    def __init__(self, folder: Path, every: int):
        self.folder, self.every, self.writes = Path(folder), every, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.every and module.step_count % self.every == 0:
            self.save(trainer, "last.ckpt")

    def save(self, trainer, name: str) -> Path:
        """``name``: last.ckpt or final.ckpt; a strategy that writes folders of shards names its suffix
        (ShardedFSDP2: last.dcp, put in place by sharded_checkpoint.replace_folder)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = Path(name).stem + getattr(trainer.strategy, "checkpoint_suffix", ".ckpt")
        target = self.folder / name
        tmp = self.folder / f".{name}.{os.getpid()}.tmp"  # rank 0's name: the strategy broadcasts it
        start = time.perf_counter()
        # every rank calls it; Lightning writes on global rank 0.  Lightning's weights_only here says what is
        # *written* (True: the model's weights alone, no optimiser or callback states), not how a file is read
        # (checkpoints are read with torch.load(weights_only=True): io.safe_torch_load); naming it also keeps
        # Lightning from logging "`weights_only` was not set" at every save.
        trainer.save_checkpoint(tmp, weights_only=WRITE_MODEL_WEIGHTS_ONLY)
        self.writes += 1
        if trainer.is_global_zero:
            seconds = time.perf_counter() - start
            if tmp.is_dir():
                size = folder_bytes(tmp)
                replace_folder(tmp, target)
            else:
                size = tmp.stat().st_size
                _maybe_inject_fault(tmp, self.writes)
                os.replace(tmp, target)

            tqdm.write(f"checkpoint {name} (step {trainer.lightning_module.step_count}): {_size(size)} in {seconds:.2f} s")
        return target


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def _maybe_inject_fault(tmp: Path, write_index: int) -> None:
    fault = os.environ.get(FAULT_ENV, "")
    if fault.startswith("kill_during_write:") and int(fault.split(":")[1]) == write_index:
        data = tmp.read_bytes()
        tmp.write_bytes(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)


TEACHER_FINGERPRINT = "ddmd_teacher"  # the checkpoint's key for teacher_fingerprint()


def teacher_fingerprint(frozen: dict, kind: str, samples: int = 16) -> str:
    """Which teacher a run was trained from: a hash of its class, every frozen tensor's name,
    shape and dtype, and the exact bits of a few of them (evenly spread over the sorted names;
    integer sums of the bit patterns, so no reduction order or device changes the result)."""
    digest = hashlib.sha256(kind.encode())
    names = sorted(frozen)
    for name in names:
        digest.update(f"{name}:{tuple(frozen[name].shape)}:{frozen[name].dtype};".encode())
    picks = sorted({round(i * (len(names) - 1) / max(samples - 1, 1)) for i in range(samples)}) if names else []
    sums = [s for i in picks for s in _bit_sums(frozen[names[i]])]
    if sums:
        digest.update(torch.stack(sums).cpu().numpy().tobytes())
    return digest.hexdigest()[:20]


@torch.no_grad()
def _bit_sums(t: torch.Tensor) -> list:
    """Two exact integer sums of a tensor's bit patterns: plain, and weighted by position."""
    flat = t.detach().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    ints = flat.view({1: torch.uint8, 2: torch.int16}.get(flat.element_size(), torch.int32))
    plain = weighted = torch.zeros((), dtype=torch.int64, device=ints.device)
    for start in range(0, len(ints), 1 << 22):  # in chunks: a few MB of int64 at a time
        chunk = ints[start:start + (1 << 22)].to(torch.int64)
        weights = torch.arange(start, start + len(chunk), device=ints.device) % 251 + 1
        plain, weighted = plain + chunk.sum(), weighted + (chunk * weights).sum()
    return [plain, weighted]


def check_teacher(checkpoint: dict, fingerprint: str, cfg) -> None:
    """Refuse a checkpoint trained from another teacher than the one loaded now (a checkpoint
    holds no teacher of its own; one written with it, by older runs, carries no fingerprint)."""
    saved = checkpoint.get(TEACHER_FINGERPRINT)
    if saved is None or saved == fingerprint:
        return
    if cfg.teacher.get("source"):
        where, fix = f"teacher.source={cfg.teacher['source']}", "point teacher.source in the run's config.yaml at that one"
    else:
        where, fix = (f"the cached {cfg.run.scale} teacher under cache_dir={cfg.run.cache_dir}",
                      "restore that teacher's cache folder or pass the cache_dir the run used")
    raise UserError(f"this checkpoint was trained from another teacher (fingerprint {saved}) than the one loaded now "
                    f"({where}, fingerprint {fingerprint}), and checkpoints do not hold the frozen teacher: load the "
                    f"teacher the run was trained from ({fix}), or start a new run.")


def student_state(checkpoint: dict) -> dict:
    """The checkpoint's state_dict with the student in place of the generator's last weights: its
    weight average, where the run kept one (``ddmd_student``, DistillModule.on_save_checkpoint)."""
    return {**checkpoint["state_dict"], **checkpoint.get("ddmd_student", {})}


def resolve_resume(target: str) -> tuple[Path, Path]:
    """(run folder, checkpoint) from a run folder or a checkpoint file."""
    path = Path(target)
    if (path.is_file() and path.suffix == ".ckpt") or (path / META).is_file():  # a file, or a folder of shards
        run_dir = path.parent.parent
        ckpt = path
    elif path.is_dir():
        run_dir = path
        ckpt = whole_folder(path / "checkpoints", "last") or path / "checkpoints" / "last.ckpt"
        if not ckpt.exists():
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
    runs = {p.parents[1] for p in parent.glob("*/checkpoints/last.ckpt")}
    runs |= {p.parent for p in parent.glob("*/checkpoints") if whole_folder(p, "last")}
    candidates = sorted(r for r in runs if not (r / "summary.json").exists())
    if not candidates:
        raise UserError(f"RESUME=auto found no interrupted run with a checkpoint under {parent}; start a new run.")
    return candidates[-1]
