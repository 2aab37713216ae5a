"""Claims fixed in advance (analysis/claims.yaml): Holm's correction, the power analysis, the verdicts,
and contrasts found among fake run folders (no training)."""
import math

import pytest

from ddmd_lab.errors import UserError
from ddmd_lab.report.claims import (CLAIMS_FILE, detectable_effect, holm, judge, load_claims, paired_p,
                                    power_lines, seeds_needed)

from .test_stats import _fake_run


def test_holm_matches_its_step_down_definition():
    # sorted p 0.01, 0.02, 0.04 with m = 3: 0.03, 0.04, 0.04 (monotone), in the order given
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = holm([0.01, math.nan])
    assert out[0] == pytest.approx(0.01) and math.isnan(out[1])
    # the schedule study's one "differs" of issue 22 (p = 0.033) among 16 comparisons does not survive
    assert holm([0.033] + [0.5] * 15)[0] > 0.05


def test_paired_p_and_the_power_analysis_agree_with_scipy():
    from scipy import stats

    xs = [-10.0, -6.0, -12.0, -3.0]
    assert paired_p(xs) == pytest.approx(stats.ttest_1samp(xs, 0).pvalue)
    # issue 22's numbers: paired sd 7.0, n = 3 detects about 23 FD at 80% power, 5 FD needs about 18 seeds
    assert detectable_effect(7.0, 3, 0.05) == pytest.approx(23, abs=2.5)
    assert 16 <= seeds_needed(7.0, 5.0, 0.05) <= 20
    # the detectable effect shrinks with n and is met exactly at seeds_needed
    n = seeds_needed(7.0, 5.0, 0.05)
    assert detectable_effect(7.0, n, 0.05) <= 5.0 < detectable_effect(7.0, n - 1, 0.05)
    # power of a paired t-test at the detectable effect is 80% (noncentral t, the exact power)
    d, n = detectable_effect(2.0, 12, 0.05), 12
    nc = d / (2.0 / math.sqrt(n))
    crit = stats.t.ppf(0.975, n - 1)
    power = stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc)
    assert power == pytest.approx(0.8, abs=0.03)


def test_the_committed_claims_file_reads_and_bad_claims_are_refused(tmp_path):
    claims = load_claims(CLAIMS_FILE)
    assert {c.scale for c in claims} >= {"fashion", "toy2d"}
    assert any(len(c.terms) == 4 for c in claims)  # the normaliser x schedule interaction
    bad = tmp_path / "claims.yaml"
    bad.write_text("claims:\n  - {name: x, family: f, scale: fashion, question: q, metric: domain_fd, direction: lower,"
                   " smallest_effect: 3, terms: [{weight: 1, arm: coupled}]}\n")
    with pytest.raises(UserError, match="sum to 0"):
        load_claims(bad)
    bad.write_text("claims:\n  - {name: x, family: f}\n")
    with pytest.raises(UserError, match="lacks"):
        load_claims(bad)


def _claims_file(tmp_path, body: str):
    path = tmp_path / "claims.yaml"
    path.write_text("claims:\n" + body)
    return path


CLAIMS = """
  - {name: a_beats_b, family: sched, scale: fashion, question: "hybrid lower than coupled", metric: domain_fd,
     direction: lower, smallest_effect: 3, terms: [{weight: 1, arm: decoupled_hybrid}, {weight: -1, arm: coupled}]}
  - {name: same, family: sched, scale: fashion, question: "per_loss hybrid vs coupled", metric: domain_fd,
     direction: lower, smallest_effect: 3,
     terms: [{weight: 1, arm: decoupled_hybrid, set: {arm.normaliser: per_loss}},
             {weight: -1, arm: coupled, set: {arm.normaliser: per_loss}}]}
  - {name: inter, family: sched, scale: fashion, question: "gap differs by normaliser", metric: domain_fd,
     direction: differs, smallest_effect: 3,
     terms: [{weight: 1, arm: decoupled_hybrid}, {weight: -1, arm: coupled},
             {weight: -1, arm: decoupled_hybrid, set: {arm.normaliser: per_loss}},
             {weight: 1, arm: coupled, set: {arm.normaliser: per_loss}}]}
  - {name: noisy, family: sched, scale: fashion, question: "dm_only vs coupled", metric: domain_fd,
     direction: lower, smallest_effect: 3, terms: [{weight: 1, arm: dm_only}, {weight: -1, arm: coupled}]}
"""


def test_judged_claims_pair_seeds_use_scores_and_correct_within_the_family(tmp_path):
    from ddmd_lab.report.runs import finished_runs
    from ddmd_lab.report.seeded import seed_groups

    path = _claims_file(tmp_path, CLAIMS)
    seeds = range(10)
    # coupled: base score per seed; hybrid 5 lower every seed (+ tiny noise); per_loss: equal arms
    base = [40.0 + 7 * ((s * 37) % 5) for s in seeds]
    wobble = [0.3 * ((s * 13) % 3 - 1) for s in seeds]
    for s in seeds:
        # final value far off, score (mean of the last evaluations) what counts
        _fake_run(tmp_path, "coupled", s, {"domain_fd": 999.0, "scores": {"domain_fd": base[s]}})
        _fake_run(tmp_path, "decoupled_hybrid", s, {"domain_fd": 0.0, "scores": {"domain_fd": base[s] - 5 + wobble[s]}})
        for arm in ("coupled", "decoupled_hybrid"):
            _fake_run(tmp_path, arm, s, {"scores": {"domain_fd": base[s] + wobble[s] * (arm == "coupled")}},
                      {"arm": {"normaliser": "per_loss"}})
        _fake_run(tmp_path, "dm_only", s, {"scores": {"domain_fd": base[s] + (10 if s % 2 else -10)}})
    groups = seed_groups(finished_runs(tmp_path, "fashion"))
    judged = {j.claim.name: j for j in judge(groups, load_claims(path))}
    a = judged["a_beats_b"]
    assert a.diff.n == 10 and a.diff.mean == pytest.approx(-5 + sum(wobble) / 10) and a.verdict == "holds"
    assert a.p_adjusted >= a.p  # Holm over the family's 4 primaries
    same = judged["same"]
    assert same.verdict == "no difference larger than 3" and abs(same.diff.mean) < 0.3
    inter = judged["inter"]  # (h - c) - (h' - c') = -5 - 0 per seed, up to the wobble
    assert inter.diff.mean == pytest.approx(-5, abs=0.3) and inter.verdict == "differs"
    noisy = judged["noisy"]  # +-10 alternating: no verdict, and it says what it could have seen
    assert noisy.verdict == "inconclusive" and noisy.detectable > 10 and noisy.seeds_needed > 100
    assert "smallest effect these 10 seeds detect at 80% power" in noisy.line()
    lines = power_lines(groups, load_claims(path)[3], load_claims(path))
    assert lines[-1].startswith("n=") and int(lines[-1][2:]) == noisy.seeds_needed


def test_a_claim_without_runs_says_which_terms_are_missing(tmp_path):
    from ddmd_lab.report.runs import finished_runs
    from ddmd_lab.report.seeded import seed_groups

    path = _claims_file(tmp_path, CLAIMS)
    _fake_run(tmp_path, "coupled", 0, {"domain_fd": 1.0})
    judged = {j.claim.name: j for j in judge(seed_groups(finished_runs(tmp_path, "fashion")), load_claims(path))}
    assert judged["a_beats_b"].missing and "not run yet" in judged["a_beats_b"].line()
