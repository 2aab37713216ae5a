"""Counting the places ddmd_lab's own code reads a tensor's value on the host.

On a GPU each such read (``.item()``, ``.tolist()``, ``bool(t)``, ``float(t)``, ``int(t)``)
waits for every kernel queued before it: a training step should make as few as it can (the
module reads logged values only on logging steps).  torch's and Lightning's own reads are not
counted: the caller's file decides.  ``make bench`` prints the count per step; a test pins it.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Hashable

import torch

PACKAGE = str(Path(__file__).resolve().parents[1])  # ddmd_lab/, not util/
READS = ("item", "tolist", "__bool__", "__float__", "__int__")


@contextmanager
def counting_host_reads(bucket: Callable[[], Hashable | None] = lambda: "all"):
    """Within the block, count host reads made from ddmd_lab files into a dict, per ``bucket()``
    (e.g. the current training step; None = not counted)."""
    counts: dict = {}
    real = {name: getattr(torch.Tensor, name) for name in READS}

    def counted(name):
        def wrapper(self, *args, **kwargs):
            key = bucket()
            if key is not None and sys._getframe(1).f_code.co_filename.startswith(PACKAGE):
                counts[key] = counts.get(key, 0) + 1
            return real[name](self, *args, **kwargs)
        return wrapper

    for name in READS:
        setattr(torch.Tensor, name, counted(name))
    try:
        yield counts
    finally:
        for name, fn in real.items():
            setattr(torch.Tensor, name, fn)
