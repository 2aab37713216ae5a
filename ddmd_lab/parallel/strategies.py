"""Data parallelism for a distillation run: what each rank holds, and which gradients travel.

A training step makes up to two manual backward passes, each followed by one optimiser's step
(DistillModule._update): the generator's, then the fake model's (+ discriminator head).  A single
DistributedDataParallel wrapper around the whole module all-reduces every trained tensor in each
backward -- the idle model's zero gradients too, twice the traffic -- and needs
find_unused_parameters to get through a backward that leaves a model out.  Here instead:

``ddp`` (PerOptimizerDDP): no wrapper.  Every rank holds everything; after each manual backward
    exactly the stepped optimiser's gradients are averaged over the ranks, in coalesced all-reduces
    of at most BUCKET_BYTES (gradients.average_gradients).  The same with LoRA, where both adapters
    live in one base network: only the stepped adapter's tensors travel.  No overlap of communication
    with the backward (DDP's buckets overlap); for full fine-tuning at scale, use fsdp.
``fsdp`` (fsdp2.ShardedFSDP2): torch's FSDP2, one root per model and one unit per repeated block,
    sharded checkpoints (parallel/fsdp2.py, parallel/dcp_state.py).

Both take the config's ``pg_timeout`` (seconds) as the process group's timeout: a collective that
waits longer (a rank that died, or one busy alone) stops the run instead of hanging it.
"""
from __future__ import annotations

from datetime import timedelta

import torch
from pytorch_lightning.strategies import DDPStrategy
from torch import Tensor

from ddmd_lab.parallel.fsdp2 import ShardedFSDP2, sharded_ids
from ddmd_lab.parallel.gradients import BUCKET_BYTES, average_gradients

__all__ = ["BUCKET_BYTES", "PerOptimizerDDP", "ShardedFSDP2", "make_strategy", "rank_zeros_draw", "reduce_and_clip",
           "sharded_ids"]


def make_strategy(parallel):
    """Lightning's strategy for the config's parallel section (config.Parallel): ``ddp`` (and ``auto`` on several
    devices, where Lightning would pick DDP) -> PerOptimizerDDP, ``fsdp`` -> ShardedFSDP2; anything else goes to
    Lightning as named."""
    s = str(parallel.strategy)
    timeout = float(parallel.pg_timeout)
    if s == "ddp" or (s == "auto" and _several_devices(parallel)):
        return PerOptimizerDDP(timeout=timedelta(seconds=timeout))
    if s == "fsdp":
        return ShardedFSDP2(fsdp_teacher=parallel.fsdp_teacher, timeout_s=timeout)
    return s


def _several_devices(parallel) -> bool:
    return parallel.num_nodes > 1 or not (parallel.devices in (1, "1") or parallel.devices == [0])


def reduce_and_clip(strategy, params: list, max_norm: float) -> Tensor:
    """After a manual backward: average what no wrapper averaged, clip by the global norm."""
    own = getattr(strategy, "reduce_and_clip", None)
    if own is not None:
        return own(params, max_norm)
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def rank_zeros_draw(strategy, k: int, device) -> int:
    """``k`` of global rank 0 on every rank, where the strategy runs forwards in lockstep (FSDP: each
    forward gathers with every rank, so all must make the same number of calls: the backward
    simulation's k).  Elsewhere each rank keeps its own draw."""
    if not getattr(strategy, "forwards_in_lockstep", False) or strategy.world_size == 1:
        return k
    value = torch.tensor(k, dtype=torch.int64, device=device)
    torch.distributed.broadcast(value, src=0)
    return int(value.item())


class PerOptimizerDDP(DDPStrategy):
    """DDP without the DistributedDataParallel wrapper: the module's _update averages the stepped
    optimiser's gradients (reduce_and_clip).  Evaluation stays on global rank 0."""

    evaluates_on_every_rank = False
    forwards_in_lockstep = False

    def configure_ddp(self) -> None:
        # what the wrapper's construction did: every rank starts from rank 0's trained weights
        if self.world_size > 1:
            for p in self.lightning_module.parameters():
                if p.requires_grad:
                    torch.distributed.broadcast(p.data, src=0)

    def reduce_and_clip(self, params: list, max_norm: float) -> Tensor:
        average_gradients(params, self.world_size)
        return torch.nn.utils.clip_grad_norm_(params, max_norm)  # identical gradients: the global norm
