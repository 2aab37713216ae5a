"""Text conditions computed once and read memory-mapped: the embedding cache of ``make embed``.

A cache is one folder ``<cache_dir>/embeddings/<family>-<n>-<digest>/`` for one prompt list
and one text path (the checkpoint's text encoders and tokenizers, fingerprinted from their
files, and the settings that change what they produce); the digest covers both, so another
checkpoint, system prompt, max_length, text dtype or prompt list is another folder.

Inside, every tensor kind of a one-prompt condition is one flat binary file, row after row,
with an offsets index (row i is ``data[offsets[i]:offsets[i + 1]]``):

  zimage   features.bin (sum L_i, D)                       Captions: hidden states, padding removed
  lumina2  embeds.bin (sum L_i, D) + mask.bin (sum L_i,)   PaddedText, each row trimmed to its last used token
  sdxl     tokens.bin (N, 77, D) + text_embeds.bin (N, P) + time_ids.bin (N, 6)   SDXLCondition

Float features are stored as bfloat16 (half of float32; the recipes' bfloat16 denoisers see
exactly these values), time ids as float32, masks as uint8.  ``null.safetensors`` holds the
family's null condition in float32 (exactly what the adapter computes), ``meta.json`` the
shapes, dtypes and the key's parts.  A cache is written in a temporary folder beside its
final name and renamed when complete, so a folder under its final name is always whole;
an interrupted write leaves at most a ``.partial-*`` folder, which is never read.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ddmd_lab.backbones.lumina2 import PaddedText
from ddmd_lab.backbones.sdxl import SDXLCondition
from ddmd_lab.backbones.zimage import Captions
from ddmd_lab.util.progress import Progress

FORMAT = 1  # bump when what a row holds, or how a family encodes, changes
FLOAT32_KINDS = {"time_ids"}  # exact small integers (image sizes) that bfloat16 would round
_STORED = {"bfloat16": np.int16, "float32": np.float32, "bool": np.uint8}


# ---- one condition row <-> named tensors --------------------------------------------------

def row_tensors(row) -> tuple[str, dict[str, Tensor]]:
    """(kind, tensors) of a one-prompt condition; every tensor's first axis is its row length."""
    if isinstance(row, Captions):
        (features,) = row.features
        return "Captions", {"features": features}
    if isinstance(row, PaddedText):
        return "PaddedText", {"embeds": row.embeds[0], "mask": row.mask[0]}
    if isinstance(row, SDXLCondition):
        return "SDXLCondition", {"tokens": row.tokens, "text_embeds": row.text_embeds, "time_ids": row.time_ids}
    raise TypeError(f"no embedding layout for conditions of type {type(row).__name__}")


def row_from(kind: str, t: dict[str, Tensor]):
    """The one-prompt condition of ``row_tensors``' tensors."""
    if kind == "Captions":
        return Captions([t["features"]])
    if kind == "PaddedText":
        return PaddedText(t["embeds"][None], t["mask"][None])
    if kind == "SDXLCondition":
        return SDXLCondition(t["tokens"], t["text_embeds"], t["time_ids"])
    raise ValueError(f"unknown condition kind {kind!r} in an embedding cache")


def _stored_dtype(name: str, t: Tensor) -> str:
    if t.dtype == torch.bool:
        return "bool"
    return "float32" if name in FLOAT32_KINDS else "bfloat16"


def _to_bytes(t: Tensor, dtype: str) -> bytes:
    t = t.detach().cpu().contiguous()
    if dtype == "bfloat16":
        return t.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    if dtype == "bool":
        return t.to(torch.uint8).numpy().tobytes()
    return t.to(torch.float32).numpy().tobytes()


def _from_array(a: np.ndarray, dtype: str) -> Tensor:
    t = torch.from_numpy(np.array(a))  # a copy: the memory map stays read-only
    if dtype == "bfloat16":
        return t.view(torch.bfloat16).float()
    if dtype == "bool":
        return t.bool()
    return t


# ---- the key ------------------------------------------------------------------------------

def _file_digest(path: Path, chunk: int = 1 << 16, samples: int = 16) -> str:
    """Whole small files; of large ones (weight shards) the first and last MiB and ``samples``
    evenly spaced 64 KiB chunks: any retrained or re-quantised weights change them, at a few
    MiB read per multi-GB shard."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= 4 << 20:
            h.update(f.read())
        else:
            for start in [0, size - (1 << 20)] + [size * k // (samples + 1) for k in range(1, samples + 1)]:
                f.seek(start)
                h.update(f.read(1 << 20 if start in (0, size - (1 << 20)) else chunk))
    return h.hexdigest()[:16]


def text_files_fingerprint(folder: Path, patterns: tuple[str, ...] = ("text_encoder*", "tokenizer*")) -> str:
    """A digest of the text encoders' and tokenizers' files of a diffusers folder (names, sizes,
    content samples; not where the folder lives or when its files were written)."""
    h = hashlib.sha256()
    for pattern in patterns:
        for sub in sorted(p for p in folder.glob(pattern) if p.is_dir()):
            for f in sorted(p for p in sub.rglob("*") if p.is_file()):
                h.update(f"{f.relative_to(folder).as_posix()}:{_file_digest(f)};".encode())
    return h.hexdigest()[:16]


def prompts_digest(prompts: list[str]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


def cache_folder(cache_dir: str | Path, identity: dict, prompts: list[str]) -> Path:
    """``<cache_dir>/embeddings/<family>-<n>-<digest>``: ``identity`` (the text path) and the prompts."""
    key = json.dumps({"identity": identity, "prompts": prompts_digest(prompts)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / "embeddings" / f"{identity.get('family', 'text')}-{len(prompts)}-{digest}"


# ---- reading ------------------------------------------------------------------------------

class Embeddings:
    """A complete cache, memory-mapped: ``cache[i]`` is prompt i's condition (float32, CPU)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.kind = self.meta["kind"]
        self._data, self._offsets = {}, {}
        for name, spec in self.meta["tensors"].items():
            shape = tuple(spec["shape"])
            stored = _STORED[spec["dtype"]]
            self._data[name] = (np.memmap(self.folder / f"{name}.bin", dtype=stored, mode="r", shape=shape)
                                if shape[0] else np.zeros(shape, stored))
            self._offsets[name] = np.load(self.folder / f"{name}.offsets.npy")
        from safetensors.torch import load_file  # deferred: safetensors, only when a cache is read

        self.null = row_from(self.kind, load_file(self.folder / "null.safetensors"))

    def __len__(self) -> int:
        return int(self.meta["count"])

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(i)
        tensors = {}
        for name, data in self._data.items():
            o = self._offsets[name]
            tensors[name] = _from_array(data[o[i]:o[i + 1]], self.meta["tensors"][name]["dtype"])
        return row_from(self.kind, tensors)

    @property
    def nbytes(self) -> int:
        return int(self.meta["bytes"])

    def describe(self) -> str:
        n = len(self)
        return f"{n} prompts, {_size(self.nbytes)} ({_size(self.nbytes / max(n, 1))} per prompt)"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def open_embeddings(folder: Path) -> Embeddings | None:
    """The complete cache in ``folder``, or None (absent; partial writes never have its name)."""
    folder = Path(folder)
    return Embeddings(folder) if (folder / "meta.json").is_file() else None


# ---- writing ------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_partials(folder: Path) -> None:
    """Partial folders of this cache left by killed writers on this host."""
    host = socket.gethostname()
    for p in folder.parent.glob(f".{folder.name}.partial-*"):
        parts = p.name.rsplit("-", 3)  # ...partial, host, pid, random
        if len(parts) == 4 and parts[1] == host and parts[2].isdigit() and not _alive(int(parts[2])):
            shutil.rmtree(p, ignore_errors=True)


def write_embeddings(folder: Path, encode: Callable[[list[str]], list], prompts: list[str], batch: int,
                     null_row, identity: dict, progress: bool = True) -> Embeddings:
    """Encode ``prompts`` ``batch`` at a time (``encode``: prompts -> one-prompt condition rows)
    into the cache ``folder``, streaming to disk; the folder appears only once complete.  If
    another writer completed it meanwhile, that cache is kept and this one dropped."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(folder)
    tmp = folder.with_name(f".{folder.name}.partial-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}")
    tmp.mkdir()
    files: dict = {}
    try:
        kind, specs, offsets, total = None, {}, {}, 0
        bar = _progress(len(prompts), progress)
        for start in range(0, len(prompts), batch):
            rows = encode(prompts[start:start + batch])
            if len(rows) != len(prompts[start:start + batch]):
                raise RuntimeError(f"the encoder returned {len(rows)} conditions for {batch} prompts")
            for row in rows:
                k, tensors = row_tensors(row)
                if kind is None:
                    kind = k
                    for name, t in tensors.items():
                        specs[name] = {"dtype": _stored_dtype(name, t), "shape": [0, *t.shape[1:]]}
                        files[name] = open(tmp / f"{name}.bin", "wb")
                        offsets[name] = [0]
                for name, t in tensors.items():
                    if list(t.shape[1:]) != specs[name]["shape"][1:]:
                        raise RuntimeError(f"{name} of prompt {start}: shape {tuple(t.shape)}, the cache's rows "
                                           f"are (*, {', '.join(map(str, specs[name]['shape'][1:]))})")
                    data = _to_bytes(t, specs[name]["dtype"])
                    files[name].write(data)
                    total += len(data)
                    offsets[name].append(offsets[name][-1] + t.shape[0])
            bar.advance(len(rows))
        bar.close()
        for name, f in files.items():
            f.flush()
            os.fsync(f.fileno())
            f.close()
            specs[name]["shape"][0] = offsets[name][-1]
            np.save(tmp / f"{name}.offsets.npy", np.asarray(offsets[name], dtype=np.int64))
        from safetensors.torch import save_file  # deferred: safetensors, only when a cache is written

        null_kind, null = row_tensors(null_row)
        save_file({k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous()
                   for k, v in null.items()}, tmp / "null.safetensors")
        os.chmod(tmp / "null.safetensors", 0o644)  # readable like the rest (a shared cache_dir)
        meta = {"format": FORMAT, "kind": kind or null_kind, "count": len(prompts), "bytes": total,
                "tensors": specs, "identity": identity, "prompts_sha256": prompts_digest(prompts)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))  # last: marks it complete
        try:
            os.rename(tmp, folder)
        except OSError:
            if open_embeddings(folder) is None:  # not a finished twin: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        for f in files.values():
            f.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Embeddings(folder)


def _progress(total: int, enabled: bool):
    """A bar on a terminal, plain lines every few percent elsewhere (progress.py)."""
    return Progress(total, "embedding prompts", "prompt", enabled=enabled)
