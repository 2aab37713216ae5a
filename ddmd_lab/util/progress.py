"""Progress in a run's own units, readable on a terminal and in a log file.

On a terminal: a tqdm bar (``step k/N``, rate, ETA, the key numbers).  Anywhere else (a
cluster job's log, ``nohup``, a pipe) a bar is no use -- rich draws nothing there until the
end, tqdm rewrites one line with carriage returns -- so a plain line is printed every few
percent instead: ``distillation: step 300/3000 (10%) | 41.2 step/s | elapsed 0:00:07 | ETA
0:01:05 | gen 60 | loss_critic 0.312``.

``Progress`` serves loops of our own (Inception features, COCO sampling, prompt embedding);
Lightning's bar for teacher, classifier and distillation runs draws it
(training/callbacks/progress.py).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator

from tqdm import tqdm

PLAIN_EVERY = 5  # percent between two plain lines


def is_terminal(stream=None) -> bool:
    """A terminal tqdm can draw on (a pseudo-terminal reporting 0 rows gets nothing from tqdm: plain lines)."""
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty()) and os.get_terminal_size(stream.fileno()).lines > 0
    except (AttributeError, ValueError, OSError):  # no isatty / fileno, a closed stream, no size
        return False


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _number(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def plain_line(desc: str, unit: str, done: int, total: int, since: int, elapsed: float, numbers: dict) -> str:
    """One progress line; rate and ETA from the ``done - since`` units of this process's ``elapsed`` seconds."""
    parts = [f"{desc}: {unit} {done}/{total}" + (f" ({100 * done / total:.0f}%)" if total else "")]
    rate = (done - since) / elapsed if elapsed > 0 else 0.0
    if rate > 0:
        parts.append(f"{rate:.3g} {unit}/s")
    parts.append(f"elapsed {_clock(elapsed)}")
    if rate > 0 and total:
        parts.append(f"ETA {_clock((total - done) / rate)}")
    parts += [f"{k} {_number(v)}" for k, v in numbers.items()]
    return " | ".join(parts)


class Progress:
    """``done`` of ``total`` units: a tqdm bar on a terminal, else a plain line every ``every`` percent
    (and at the end).  ``enabled=False``: silent."""

    def __init__(self, total: int, desc: str, unit: str = "step", initial: int = 0, every: float = PLAIN_EVERY,
                 enabled: bool = True, stream=None, leave: bool = True):
        self.total, self.desc, self.unit, self.every = int(total), desc, unit, every
        self.stream = sys.stdout if stream is None else stream
        self.done = self.since = int(initial)
        self.numbers: dict = {}
        self.start = time.monotonic()
        self.enabled = enabled
        self.bar = None
        self._next = self._threshold_after(self.done)
        if enabled and is_terminal(self.stream):
            self.bar = tqdm(total=self.total, initial=self.done, desc=f"{desc}: {unit}", unit=unit, file=self.stream,
                            dynamic_ncols=True, leave=leave, smoothing=0.1,
                            bar_format="{desc} {n_fmt}/{total_fmt} |{bar}| {percentage:3.0f}% "
                                       "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")

    def _threshold_after(self, done: int) -> int:
        """The first count at or past the next multiple of ``every`` percent after ``done``."""
        if not self.total:
            return 1 << 62
        step = max(self.total * self.every / 100, 1)
        return min(int((int(done / step) + 1) * step + 0.999999), self.total)

    def update(self, done: int, **numbers) -> None:
        """Move to ``done`` (absolute); ``numbers`` (floats or ints) are shown beside it."""
        self.done = int(done)
        self.numbers.update(numbers)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.n = self.done
            if numbers:
                self.bar.set_postfix({k: _number(v) for k, v in self.numbers.items()}, refresh=False)
            self.bar.refresh() if self.done >= self.total else self.bar.update(0)
        elif self.done >= self._next:
            self._print()
            self._next = self._threshold_after(self.done)

    def advance(self, n: int = 1, **numbers) -> None:
        self.update(self.done + n, **numbers)

    def _print(self) -> None:
        line = plain_line(self.desc, self.unit, self.done, self.total, self.since, time.monotonic() - self.start,
                          self.numbers)
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.done < self.total and self.done > self.since:
            self._print()  # stopped early: where it stopped
        self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def track(items: Iterable, total: int, desc: str, unit: str = "batch", enabled: bool = True,
          leave: bool = True) -> Iterator:
    """``items`` with a Progress counting one per item."""
    with Progress(total, desc, unit, enabled=enabled, leave=leave) as progress:
        for i, item in enumerate(items):
            yield item
            progress.update(i + 1)
