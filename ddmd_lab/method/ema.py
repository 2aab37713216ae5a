"""An exponential moving average of the generator's weights: the student a run evaluates and ships.

A distillation run's generator oscillates (the fake model chases it, and it chases the fake model's
errors): one evaluation reads one point of that path.  The average over the last ~1 / (1 - decay)
updates is a quieter student at no extra network evaluation (DMD2 and most distillation codes ship
their EMA).  The average is kept for the tensors this rank holds -- whole parameters, or its shards
under FSDP -- so it costs one trained model's memory per rank and no communication.

Warm-up: update n (counted from 0) uses min(decay, (1 + n) / (10 + n)), so the first updates
forget the teacher-initialised start quickly (the rule of TensorFlow's ExponentialMovingAverage
with num_updates); after a few hundred updates it is the plain decay.

Under FSDP2 a parameter is a DTensor: the average holds its local shard (a plain tensor), updated and
copied in place through ``to_local()`` -- the storage FSDP gathers from at the next forward, so inside
``applied()`` every rank's forward sees the averaged weights.  ``sharded_average`` wraps the shards
as DTensors again for a sharded checkpoint (parallel/dcp_state.py).
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor


def local(t: Tensor) -> Tensor:
    """The part of ``t`` this rank holds: its shard for a DTensor (a view of its storage), else ``t``."""
    return t.to_local() if isinstance(t, DTensor) else t


def decay_at(decay: float, updates: int) -> float:
    """The decay of update number ``updates`` (0-based) under the warm-up."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class WeightAverage:
    """The EMA of ``params`` (the trained tensors of one model, as this rank holds them)."""

    def __init__(self, params: list[Tensor], decay: float, updates: int = 0, average: list[Tensor] | None = None):
        self.params, self.decay, self.updates = list(params), decay, updates
        held = [local(p.detach()) for p in self.params]
        if average is None:
            average = [h.clone() for h in held]
        average = [local(a) for a in average]
        if len(average) != len(held) or any(a.shape != h.shape for a, h in zip(average, held)):
            raise ValueError("the weight average holds other tensors than this model's trained ones")
        self.average = [a.to(device=h.device, dtype=h.dtype) for a, h in zip(average, held)]

    @torch.no_grad()
    def update(self) -> None:
        """average <- d * average + (1 - d) * params."""
        weight = 1.0 - decay_at(self.decay, self.updates)
        for a, p in zip(self.average, self.params):
            a.lerp_(local(p.detach()), weight)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self):
        """The model holds the average inside the block and its own weights again after it (copied into
        the tensors' own storage -- under FSDP2 each rank's shard -- so whatever wraps them sees it)."""
        with torch.no_grad():
            own = [local(p.detach()).clone() for p in self.params]
            for p, a in zip(self.params, self.average):
                local(p.detach()).copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, o in zip(self.params, own):
                    local(p.detach()).copy_(o)

    def sharded_average(self) -> list[Tensor]:
        """The average shaped like the parameters: DTensors (this rank's shards, no copy) where they are."""
        return [DTensor.from_local(a, p.device_mesh, p.placements, shape=p.shape, stride=p.stride(), run_check=False)
                if isinstance(p, DTensor) else a for a, p in zip(self.average, self.params)]

    def state(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "average": [a.detach().cpu() for a in self.average]}
