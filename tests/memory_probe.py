"""Bytes the CPU allocator hands out while a block runs, measured with torch's profiler
(profile_memory=True): its allocation and free events in time order give the block's peak
above where it started and what it left behind.  Only torch's allocator is seen (tensors),
not Python objects or the profiler's own bookkeeping."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate

from torch.profiler import ProfilerActivity, profile


@dataclass
class Allocated:
    peak: int = 0  # the most bytes live at once above the start
    net: int = 0  # bytes still live at the end above the start (negative: the block freed more)


@contextmanager
def allocations():
    """``with allocations() as a: ...``; a.peak and a.net are set when the block ends."""
    result = Allocated()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield result
    # memory events are instant; sorted stably by their time (the order they were recorded within a tick)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    running = list(accumulate(e.nbytes() for e in events)) or [0]
    result.peak, result.net = max(0, max(running)), running[-1]


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct tensors given (None skipped)."""
    unique = {id(t): t for t in tensors if t is not None}
    return sum(t.numel() * t.element_size() for t in unique.values())
