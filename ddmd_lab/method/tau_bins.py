"""The diagnostics' per-tau-bin sums (numpy only, no network): what method/diagnostics.measure's per-sample
quantities become per bin of a tau, added over batches and steps, read back by the run's callback,
``make diagnose`` and the report (which runs no network, so it reads this module, not the measurement)."""
from __future__ import annotations

import numpy as np

EDGES = tuple(np.linspace(0.0, 1.0, 11).round(6).tolist())
OWN = ("cos_ca_dm_own", "ratio_ca_dm", "share_ca", "share_dm", "update_norm_ca", "update_norm_dm", "update_norm",
       "normaliser_ca", "normaliser_dm")
SHARED = ("cos_ca_dm_shared", "ratio_ca_dm_shared")
QUANTITIES = OWN + SHARED
# which tau a quantity is binned by in each binning: the own-tau ones by tau_ca and by tau_dm, the shared ones by tau_shared
BINNINGS = {"tau_ca": OWN, "tau_dm": OWN, "tau_shared": SHARED}
# the binning that reads most directly for each quantity (plots, W&B per-bin keys): a term's own tau; a pair's tau_DM
NATURAL = {"cos_ca_dm_own": "tau_dm", "ratio_ca_dm": "tau_dm", "share_ca": "tau_ca", "share_dm": "tau_dm",
           "update_norm_ca": "tau_ca", "update_norm_dm": "tau_dm", "update_norm": "tau_dm",
           "normaliser_ca": "tau_ca", "normaliser_dm": "tau_dm",
           "cos_ca_dm_shared": "tau_shared", "ratio_ca_dm_shared": "tau_shared"}


class Binned:
    """Per-bin sums of per-sample quantities binned by one tau: count (samples in the bin: the tau's
    histogram), and per quantity its finite values' number, sum and sum of squares.  ``+`` adds batches."""

    def __init__(self, names=QUANTITIES, edges=EDGES):
        self.edges = np.asarray(edges, dtype=np.float64)
        self.names = tuple(names)
        nb = len(self.edges) - 1
        self.count = np.zeros(nb)
        self.n = {q: np.zeros(nb) for q in self.names}
        self.sum = {q: np.zeros(nb) for q in self.names}
        self.sumsq = {q: np.zeros(nb) for q in self.names}

    @property
    def bins(self) -> int:
        return len(self.edges) - 1

    def index(self, tau: np.ndarray) -> np.ndarray:
        """Bin of each tau: lo <= tau < hi, the last bin closed (tau = 1 falls in it)."""
        return np.searchsorted(self.edges[1:-1], np.asarray(tau, dtype=np.float64), side="right")

    def add(self, tau: np.ndarray, values: dict[str, np.ndarray]) -> "Binned":
        idx = self.index(tau)
        self.count += np.bincount(idx, minlength=self.bins)
        for q in self.names:
            v = np.asarray(values[q], dtype=np.float64)
            ok = np.isfinite(v)
            self.n[q] += np.bincount(idx[ok], minlength=self.bins)
            self.sum[q] += np.bincount(idx[ok], weights=v[ok], minlength=self.bins)
            self.sumsq[q] += np.bincount(idx[ok], weights=v[ok] ** 2, minlength=self.bins)
        return self

    def __add__(self, other: "Binned") -> "Binned":
        if not np.array_equal(self.edges, other.edges) or self.names != other.names:
            raise ValueError("only bins with the same edges and quantities add up")
        out = Binned(self.names, self.edges)
        out.count = self.count + other.count
        for q in self.names:
            out.n[q], out.sum[q], out.sumsq[q] = self.n[q] + other.n[q], self.sum[q] + other.sum[q], \
                self.sumsq[q] + other.sumsq[q]
        return out

    def mean(self, q: str) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n[q] > 0, self.sum[q] / np.maximum(self.n[q], 1), np.nan)

    def std(self, q: str) -> np.ndarray:
        m = self.mean(q)
        var = np.where(self.n[q] > 0, self.sumsq[q] / np.maximum(self.n[q], 1) - m ** 2, np.nan)
        return np.sqrt(np.clip(var, 0.0, None))

    def total_mean(self, q: str) -> float:
        n = self.n[q].sum()
        return float(self.sum[q].sum() / n) if n > 0 else float("nan")

    def to_dict(self) -> dict:
        """JSON-ready: NaN as null."""
        def clean(a):
            return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=np.float64)]

        return {"edges": clean(self.edges), "count": clean(self.count),
                "mean": {q: clean(self.mean(q)) for q in self.names}, "std": {q: clean(self.std(q)) for q in self.names},
                "n": {q: clean(self.n[q]) for q in self.names}}

    @classmethod
    def from_means(cls, edges, count, means: dict[str, np.ndarray], n: dict[str, np.ndarray] | None = None) -> "Binned":
        """Bins from per-bin means and counts (diagnostics.csv / .json); each mean weighs by its number of values
        (default: the bin's count where the mean is finite).  Standard deviations are not recovered."""
        out = cls(tuple(means), edges)
        out.count = np.asarray(count, dtype=np.float64)
        for q, m in means.items():
            m = np.asarray(m, dtype=np.float64)
            w = np.asarray(n[q], dtype=np.float64) if n is not None else out.count
            w = np.where(np.isfinite(m), w, 0.0)
            out.n[q], out.sum[q] = w, np.where(w > 0, m, 0.0) * w
            out.sumsq[q] = np.where(w > 0, m ** 2, 0.0) * w
        return out


def bin_samples(samples: dict[str, np.ndarray], edges=EDGES) -> dict[str, Binned]:
    """``measure``'s per-sample arrays binned: {binning tau: Binned}, for the taus present."""
    return {by: Binned(names, edges).add(samples[by], samples) for by, names in BINNINGS.items() if by in samples}


def add_bins(a: dict[str, Binned] | None, b: dict[str, Binned]) -> dict[str, Binned]:
    out = dict(a or {})
    for by, bins in b.items():
        out[by] = out[by] + bins if by in out else bins
    return out


def overall(bins: dict[str, Binned]) -> dict[str, float]:
    """Batch means of every quantity (own ones over all samples: from the tau_DM binning, else tau_CA)."""
    out = {}
    for q in QUANTITIES:
        by = "tau_shared" if q in SHARED else ("tau_dm" if "tau_dm" in bins else "tau_ca")
        if by in bins:
            out[q] = bins[by].total_mean(q)
    return out
