"""Training batches as a pure function of (seed, step).

Batch k of a run is drawn from a generator seeded by (seed, k), so a run
resumed at step k reads exactly the batches the uninterrupted run would have
read, with no sampler state to save.  It is the "batches" stream of core/streams.py: arms run with one
seed read the same labels (drawn first) and real images at every step.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ddmd_lab.core.streams import stream_seed


class StepBatches(Dataset):
    def __init__(self, make_batch: Callable[[torch.Generator], Any], seed: int, steps: int):
        self.make_batch, self.seed, self.steps = make_batch, seed, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int):
        # each data-parallel rank draws its own batch of the step (the global batch is batch x ranks)
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        g = torch.Generator().manual_seed(stream_seed(self.seed, rank, "batches", step))
        return self.make_batch(g)


class ResumeSampler(Sampler):
    """Yields steps start..stop-1 but reports the run's full length.

    On resume Lightning restores how many batches of the epoch were done and
    ends the epoch when that count reaches len(loader); it does not skip
    batches of a plain DataLoader.  So the loader keeps the full length and
    starts at the resume step itself.
    """

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop


def step_loader(make_batch: Callable[[torch.Generator], Any], seed: int, start: int, stop: int) -> DataLoader:
    return DataLoader(StepBatches(make_batch, seed, stop), batch_size=None, sampler=ResumeSampler(start, stop))


def condition_of(batch):
    """A step's batch is the condition alone, or (condition, real data, ...)."""
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def real_data_of(batch):
    """The real samples of a (condition, real data) batch, or None."""
    return batch[1] if isinstance(batch, (list, tuple)) and len(batch) > 1 else None
