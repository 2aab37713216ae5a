"""Seeds as an axis: intervals, paired differences and verdicts against scipy; grouping by config."""
import math

import pytest

from ddmd_lab.config import load_config
from ddmd_lab.report.stats import Estimate, group_key, mean_interval, paired_difference, verdict


def test_mean_interval_is_scipys_t_interval():
    from scipy import stats

    xs = [81.4, 94.4, 88.0, 79.2]
    est = mean_interval(xs)
    lo, hi = stats.t.interval(0.95, len(xs) - 1, loc=sum(xs) / len(xs), scale=stats.sem(xs))
    assert est.n == 4 and est.lo == pytest.approx(lo) and est.hi == pytest.approx(hi)
    assert mean_interval([3.0]).n == 1 and math.isnan(mean_interval([3.0]).lo)
    assert mean_interval([1.0, float("nan"), 3.0]).n == 2  # a failed run's NaN is not a seed


def test_paired_difference_uses_common_seeds_and_matches_scipys_paired_test():
    from scipy import stats

    a = {0: 80.0, 1: 85.0, 2: 83.0, 7: 1.0}
    b = {0: 90.0, 1: 91.0, 2: 95.0, 5: 1.0}
    d = paired_difference(a, b)
    diffs = [-10.0, -6.0, -12.0]
    assert d.n == 3 and d.mean == pytest.approx(sum(diffs) / 3)
    lo, hi = stats.t.interval(0.95, 2, loc=d.mean, scale=stats.sem(diffs))
    assert (d.lo, d.hi) == (pytest.approx(lo), pytest.approx(hi))
    # the paired t statistic is the same as scipy's ttest_rel: the interval excludes 0 iff p < 0.05
    p = stats.ttest_rel([a[s] for s in (0, 1, 2)], [b[s] for s in (0, 1, 2)]).pvalue
    assert (d.hi < 0) == (p < 0.05)


def test_verdicts():
    assert verdict(Estimate(-8, -12, -4, 3)) == "holds"  # a's FID lower on every plausible value
    assert verdict(Estimate(8, 4, 12, 3)) == "does not hold"
    assert verdict(Estimate(-1, -5, 3, 3)) == "inconclusive"
    assert verdict(Estimate(-8, math.nan, math.nan, 1)) == "inconclusive"
    assert verdict(Estimate(0.2, 0.1, 0.3, 3), lower_is_better=False) == "holds"  # e.g. accuracy


def test_runs_group_by_config_without_the_seed():
    base = load_config("toy2d", "decoupled_hybrid", {"seed": 0, "runs_dir": "/a"}).to_dict()
    assert group_key(base) == group_key(load_config("toy2d", "decoupled_hybrid", {"seed": 3, "runs_dir": "/b"}).to_dict())
    assert group_key(base) != group_key(load_config("toy2d", "coupled").to_dict())
    assert group_key(base) != group_key(load_config("toy2d", "decoupled_hybrid", {"lr_fake": 1e-3}).to_dict())
    assert group_key(base) != group_key(load_config("toy2d", "decoupled_hybrid", {"student_steps": 1}).to_dict())
