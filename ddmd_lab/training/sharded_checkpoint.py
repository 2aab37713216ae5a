"""Sharded checkpoint folders in a run (strategy=fsdp): putting one in place, finding it, and making the
single-file student from it on one host (``make consolidate RUN=<run>``).

Under strategy=fsdp a checkpoint is ``checkpoints/last.dcp`` / ``final.dcp``: a torch.distributed.checkpoint
folder in which each rank wrote its own shards, plus meta.pt (parallel/dcp_state.py).  A folder cannot be
renamed over another in one step, so the previous one is moved aside first (``.last.dcp.old``) and
deleted once the new one is in place; a kill between the two renames leaves the old one whole, and
``whole_folder`` finds it there.  ``consolidate`` reads the weights and the generator's weight average
(not the optimiser states) with DCP's own reader and no process group, and writes ``<name>.ckpt``: the
single file that sampling, export and evaluation read, as they read a ddp run's.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from ddmd_lab.errors import UserError
from ddmd_lab.parallel.dcp_state import META, read_meta

SHARDED_SUFFIX = ".dcp"
CONSOLIDATED = "ddmd_consolidated"  # a consolidated file's key: the folder it came from (no optimiser states)
# what a consolidated file leaves out of meta.pt: what only a resume reads
RESUME_ONLY = ("ddmd_rng", "ddmd_ema", "loops", "callbacks", "lr_schedulers", "optimizer_states")


def replace_folder(tmp: Path, target: Path) -> None:
    """Put the finished folder ``tmp`` in place of ``target`` (module docstring)."""
    old = aside(target)
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def aside(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def whole_folder(folder: Path, stem: str) -> Path | None:
    """``<stem>.dcp`` in ``folder`` if it is whole (has meta.pt), else the one moved aside, else None."""
    for path in (folder / f"{stem}{SHARDED_SUFFIX}", aside(folder / f"{stem}{SHARDED_SUFFIX}")):
        if (path / META).is_file():
            return path
    return None


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def consolidate(run_dir: Path) -> Path:
    """Write ``checkpoints/<final|last>.ckpt`` from the run's newest sharded checkpoint, on this host alone:
    its weights (generator, fake, discriminator head) and, where the run kept one, the generator's weight
    average as the student.  Returns the file."""
    folder = Path(run_dir) / "checkpoints"
    stem, source = next(((stem, path) for stem in ("final", "last") if (path := whole_folder(folder, stem))), (None, None))
    if source is None:
        raise UserError(f"{run_dir} has no sharded checkpoint (checkpoints/final.dcp or last.dcp with {META}); pass the "
                        "folder of a strategy=fsdp run that saved one (runs/<scale>/<arm>/<run-id>).")
    meta = read_meta(source)
    stored = dcp.FileSystemReader(str(source)).read_metadata().state_dict_metadata
    # flattened keys as DCP stored them; the optimiser states (optimizer_<i>.*) are left unread
    wanted = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in stored.items()
              if k.startswith(("state_dict.", "ddmd_ema."))}
    with warnings.catch_warnings():  # DCP says it assumes one process when there is no process group: it is meant
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(wanted, storage_reader=dcp.FileSystemReader(str(source)), no_dist=True)
    out = {k: v for k, v in meta.items() if k not in RESUME_ONLY}
    out["state_dict"] = {k[len("state_dict."):]: v for k, v in wanted.items() if k.startswith("state_dict.")}
    student = {k[len("ddmd_ema."):]: v for k, v in wanted.items() if k.startswith("ddmd_ema.")}
    if student:
        out["ddmd_student"] = student
    out[CONSOLIDATED] = source.name
    target = folder / f"{stem}.ckpt"
    tmp = folder / f".{target.name}.{os.getpid()}.tmp"
    torch.save(out, tmp)
    os.replace(tmp, target)
    return target
