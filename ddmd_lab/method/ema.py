"""An exponential moving average of the generator's weights: the student a run evaluates and ships.

A distillation run's generator oscillates (the fake model chases it, and it chases the fake model's
errors): one evaluation reads one point of that path.  The average over the last ~1 / (1 - decay)
updates is a quieter student at no extra network evaluation (DMD2 and most distillation codes ship
their EMA).  The average is kept for the tensors this rank holds -- whole parameters, or its shards
under FSDP -- so it costs one trained model's memory per rank and no communication.

Warm-up: update n (counted from 0) uses min(decay, (1 + n) / (10 + n)), so the first updates
forget the teacher-initialised start quickly (the rule of TensorFlow's ExponentialMovingAverage
with num_updates); after a few hundred updates it is the plain decay.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor


def decay_at(decay: float, updates: int) -> float:
    """The decay of update number ``updates`` (0-based) under the warm-up."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class WeightAverage:
    """The EMA of ``params`` (the trained tensors of one model, as this rank holds them)."""

    def __init__(self, params: list[Tensor], decay: float, updates: int = 0, average: list[Tensor] | None = None):
        self.params, self.decay, self.updates = list(params), decay, updates
        if average is None:
            average = [p.detach().clone() for p in self.params]
        if len(average) != len(self.params) or any(a.shape != p.shape for a, p in zip(average, self.params)):
            raise ValueError("the weight average holds other tensors than this model's trained ones")
        self.average = [a.to(device=p.device, dtype=p.dtype) for a, p in zip(average, self.params)]

    @torch.no_grad()
    def update(self) -> None:
        """average <- d * average + (1 - d) * params."""
        weight = 1.0 - decay_at(self.decay, self.updates)
        for a, p in zip(self.average, self.params):
            a.lerp_(p.detach(), weight)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self):
        """The model holds the average inside the block and its own weights again after it (copied, so
        whatever wraps the tensors -- FSDP's flat shards, autograd -- sees the same storage)."""
        with torch.no_grad():
            own = [p.detach().clone() for p in self.params]
            for p, a in zip(self.params, self.average):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, o in zip(self.params, own):
                    p.copy_(o)

    def state(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "average": [a.detach().cpu() for a in self.average]}
