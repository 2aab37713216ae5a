"""What each data-parallel rank draws and keeps: its own seed, its RNG state in checkpoints, and one
object gathered from every rank; and which rank a process is before any process group exists (its
node-local index, the job an external launcher started it in).  Plain torch.distributed and the
launchers' environment variables, so it runs on gloo ranks in the tests."""
from __future__ import annotations

import os
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


# where a process learns its index on its node: Lightning's launcher (ranks 1..) and torchrun set LOCAL_RANK;
# under srun nothing sets it before Lightning's SLURMEnvironment, which reads SLURM_LOCALID
LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "SLURM_LOCALID")


def local_rank() -> int:
    """This process's index among the ranks of its node (0 for a single process)."""
    for name in LOCAL_RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return int(value)
    return 0


def external_job() -> tuple[str, int] | None:
    """(a name shared by every rank of this job, this process's global rank) where an external launcher
    started every rank (srun, torchrun), or None (one process, or Lightning's launcher, which starts
    ranks 1.. itself and hands them rank 0's run folder).  torchrun's name is its rendezvous id, so it
    must be given one (--rdzv-id, or --standalone, which makes one)."""
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_PROCID", "") != "":
        return f"slurm{env.get('SLURM_JOB_ID', 'job')}.{env.get('SLURM_STEP_ID', '0')}", int(env["SLURM_PROCID"])
    if "TORCHELASTIC_RUN_ID" in env and int(env.get("WORLD_SIZE", "1") or 1) > 1:
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}", int(env.get("RANK", "0") or 0)
    return None
