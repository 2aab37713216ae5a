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


def _fake_run(root, arm, seed, summary, changes=None, n=[0]):
    """A finished run folder (config.yaml + summary.json) as the report reads it; no training."""
    import json

    from ddmd_lab.config import save_config

    n[0] += 1
    cfg = load_config("fashion", arm, {"seed": seed, "steps": 400, "eval_every": 250, **(changes or {})})
    folder = root / "fashion" / arm / f"20260101-{n[0]:06d}-s{seed}"
    folder.mkdir(parents=True)
    save_config(cfg, folder / "config.yaml")
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_seeded_groups_labels_primary_and_paired_claims(tmp_path):
    """Groups split by config without the seed; the sweep's common settings are said once, a
    variant is labelled by what sets it apart and never stands for its arm; the claims pair seeds."""
    from ddmd_lab.report.runs import finished_runs, latest_runs
    from ddmd_lab.report.seeded import claims, find, primary, seed_groups, sweep_settings

    fd = {"coupled": [80.0, 84.0, 82.0], "decoupled_hybrid": [90.0, 95.0, 91.0]}
    for seed in range(3):
        for arm, values in fd.items():
            _fake_run(tmp_path, arm, seed, {"domain_fd": values[seed], "class_adherence": 0.9})
            _fake_run(tmp_path, arm, seed, {"domain_fd": values[seed] - 5}, {"arm": {"normaliser": "per_loss"}})
    newest_variant = _fake_run(tmp_path, "coupled", 0, {"domain_fd": 1.0}, {"lr_fake": 4e-4})  # one seed, newest
    groups = seed_groups(finished_runs(tmp_path, "fashion"))
    assert len(groups) == 5 and sorted(len(g.runs) for g in groups) == [1, 3, 3, 3, 3]
    assert sweep_settings(groups) == {"steps": 400, "eval_every": 250}  # said once, in a note
    per_loss = find(groups, "coupled", 4, arm__normaliser="per_loss")
    assert per_loss.label == {"arm.normaliser": "per_loss"} and per_loss.name == "coupled [arm.normaliser=per_loss]"
    base = primary(groups)[("coupled", 4)]
    assert base.label == {} and base is find(groups, "coupled", 4)
    assert latest_runs(tmp_path, "fashion")[("coupled", 4)].path != newest_variant  # the variant never shadows
    by_claim = {c.claim: c for c in claims(groups)}
    assert "#4 decoupled_hybrid better than #1 coupled" not in by_claim  # a claim fixed in advance (test_claims.py)
    n = by_claim["coupled: normaliser per_loss better than the default"]
    assert n.diff.mean == pytest.approx(-5) and n.result == "holds"  # 5 lower on every seed
    assert "coupled: lr_fake 0.0004 differs from the default" not in by_claim or by_claim[
        "coupled: lr_fake 0.0004 differs from the default"].result == "inconclusive"  # one seed


def test_convergence_lines_name_the_sweeps_length_when_the_long_runs_have_seeds_too(tmp_path):
    """Seeded 1000-step runs beside a seeded 400-step sweep: 'the sweeps' length' is 400, not 1000."""
    import json

    from ddmd_lab.report.report import convergence_lines
    from ddmd_lab.report.runs import finished_runs
    from ddmd_lab.report.seeded import seed_groups

    for seed in range(2):
        _fake_run(tmp_path, "coupled", seed, {"domain_fd": 20.0})
        long = _fake_run(tmp_path, "decoupled_hybrid", seed, {"domain_fd": 9.0}, {"steps": 1000})
        steps = [0, 200, 400, 600, 800, 1000]
        rows = ["step,generator_steps,domain_fd"] + [f"{s},{s // 5},{30 - s / 100}" for s in steps]
        (long / "metrics.csv").write_text("\n".join(rows) + "\n")
    lines = convergence_lines(seed_groups(finished_runs(tmp_path, "fashion")))
    assert len(lines) == 2 and all("26 at 80 (the sweeps' length)" in line for line in lines), lines
