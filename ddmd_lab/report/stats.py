"""Seeds as an axis: runs grouped by their config without the seed, means with 95% intervals,
and findings judged from the interval of a *paired* difference (same seeds, so the same
teacher, evaluation noise and initial draws on both sides), not from two single numbers.

Pure functions on numbers and configs; scipy's t distribution for the quantiles.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Iterable, Mapping

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    mean: float
    lo: float  # the interval's ends (nan with fewer than 2 values)
    hi: float
    n: int

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.4g} (n={self.n})"
        return f"{self.mean:.4g} ± {(self.hi - self.lo) / 2:.2g} (n={self.n})"


def mean_interval(values: Iterable[float], level: float = LEVEL) -> Estimate:
    """Mean and two-sided Student-t interval of independent values (the seeds of one group)."""
    from scipy import stats  # deferred: scipy takes ~1 s to import, and only an interval needs it

    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = sum(xs) / n
    if n < 2:
        return Estimate(mean, math.nan, math.nan, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL) -> Estimate:
    """Interval of mean(a[s] - b[s]) over the seeds s both sides have."""
    seeds = sorted(set(a) & set(b))
    return mean_interval([a[s] - b[s] for s in seeds], level)


def verdict(diff: Estimate, lower_is_better: bool = True) -> str:
    """Whether 'a is better than b' holds, given the interval of a - b: 'holds' when the whole
    interval is on the better side of 0, 'does not hold' when it is wholly on the other side,
    else 'inconclusive' (also with fewer than 2 paired seeds)."""
    if diff.n < 2 or math.isnan(diff.lo):
        return "inconclusive"
    better = diff.hi < 0 if lower_is_better else diff.lo > 0
    worse = diff.lo > 0 if lower_is_better else diff.hi < 0
    return "holds" if better else "does not hold" if worse else "inconclusive"


def score(summary: Mapping, metric: str) -> float | None:
    """A run's number for ``metric``: its score (the mean of its last score_last evaluations), or its
    final value where the run has no scores (runs written before scores existed, end-of-run FID)."""
    value = summary.get("scores", {}).get(metric, summary.get(metric))
    return None if value is None else float(value)


def last_evaluations_mean(rows: list[Mapping], k: int) -> dict[str, float]:
    """Each numeric metric's mean over the last ``k`` evaluation rows (metrics.csv's): a run's score.
    One evaluation reads one point of an oscillating training path; the mean of the last few is a
    steadier number for the same run (``score_last`` in the config).  Non-finite readings count as
    what they are: a metric that was NaN in any of the rows scores NaN."""
    out: dict[str, float] = {}
    last = list(rows)[-k:]
    for key in (last[0] if last else {}):
        if key in ("step", "generator_steps"):
            continue
        try:
            values = [float(r[key]) for r in last]
        except (TypeError, ValueError, KeyError):
            continue
        out[key] = sum(values) / len(values)
    return out


def group_key(config: Mapping, ignore: tuple[str, ...] = ("seed", "runs_dir", "cache_dir", "wandb", "progress_bar")) -> str:
    """A run's group: its resolved config without the seed (and without where and how it logs),
    as a canonical string; runs of one arm that differ in anything else are other groups."""
    return json.dumps({k: v for k, v in config.items() if k not in ignore}, sort_keys=True, default=str)


def by_seed(records: Iterable, metric: str) -> dict[str, dict[int, float]]:
    """{group key: {seed: the summary's metric}} of run records (report.run_record.RunRecord); a seed
    run twice in one group keeps its latest run."""
    out: dict[str, dict[int, float]] = {}
    for r in sorted(records, key=lambda r: r.path.name):
        value = score(r.summary, metric)
        if value is not None:
            out.setdefault(group_key(r.cfg.to_dict()), {})[r.cfg.run.seed] = float(value)
    return out
