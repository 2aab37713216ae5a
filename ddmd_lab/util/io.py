"""Files that must never be half-written or overwritten, nor run code when read."""
from __future__ import annotations

import io
import os
import pickle
import re
import secrets
import time
from pathlib import Path

import numpy as np
import torch

from ddmd_lab.errors import UserError


def _tmp_beside(path: Path) -> Path:
    # unique per writer, so two processes writing the same target never share a temp file
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename over the
    target, so a kill mid-write leaves the previous version intact."""
    path = Path(path)
    tmp = _tmp_beside(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = _tmp_beside(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_save_npz(path: Path, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buffer.getvalue())


def atomic_torch_save(obj, path: Path) -> None:
    path = Path(path)
    tmp = _tmp_beside(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def safe_torch_load(path: Path, fix: str, what: str = "file", mmap: bool = False):
    """``torch.load`` with ``weights_only=True``: tensors and plain values only, so a file from someone
    else cannot run code on load (a pickle's globals are never called).  A file that needs more, or
    cannot be read, stops with one sentence ending in ``fix``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise UserError(f"{what} {path} cannot be read (UnpicklingError: not a torch file); {fix}.") from None
        found = re.search(r"GLOBAL (\S+)", str(exc))
        names = f" (its pickle refers to {found.group(1)})" if found else ""
        raise UserError(f"{what} {path} holds pickled Python objects besides tensors and plain values{names}, "
                        f"which could run code when loaded, so it was refused unread; {fix}.") from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:  # missing, truncated, not a torch file
        raise UserError(f"{what} {path} cannot be read ({exc.__class__.__name__}); {fix}.") from None


def new_run_dir(root: Path, scale: str, arm: str, seed: int) -> Path:
    """runs/<scale>/<arm>/<time>-s<seed>-<random>; created exclusively, so two
    runs started in the same second never share (or overwrite) a folder."""
    parent = Path(root) / scale / arm
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-s{seed}-{secrets.token_hex(2)}"
        path = parent / run_id
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def publish_dir(staging: Path, target: Path) -> Path:
    """Move a finished folder into place; an existing one is kept beside it
    (``<name>.replaced-<time>``), never deleted or mixed with the new files."""
    staging, target = Path(staging), Path(target)
    if target.exists():
        target.rename(target.with_name(f"{target.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"))
    staging.rename(target)
    return target
