"""What each data-parallel rank draws and keeps: its own seed, its RNG state in checkpoints, and one
object gathered from every rank.  Plain torch.distributed, so it runs on gloo ranks in the tests."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_rank(seed: int, rank: int) -> None:
    """Give data-parallel rank ``rank`` > 0 training draws of its own.

    Every rank seeds with cfg.run.seed before building the model, so all ranks hold the same
    initial weights; at train start ranks 1.. re-seed the global RNGs (torch, CUDA, numpy,
    random) from (seed, rank), and every draw of training -- the student's step k and noise,
    tau and the re-noising noise, the critic's tau' -- comes from them.  Rank 0 keeps
    cfg.run.seed's stream: a single-process run draws what it always drew, as does rank 0 of
    a data-parallel run.  (Data batches have their own per-rank seeds: data/steps.py.)
    """
    derived = int(np.random.SeedSequence([seed % 2**64, rank]).generate_state(1, np.uint64)[0])
    torch.manual_seed(derived)  # CPU and every CUDA device
    random.seed(derived)
    np.random.seed(derived % 2**32)


def every_rank(obj) -> list:
    """``obj`` of every rank, in rank order (a collective under torch.distributed)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rng_state() -> dict:
    # numpy's state is stored as a tensor + plain values so that checkpoints
    # load with torch.load(weights_only=True).
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
