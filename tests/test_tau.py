import pytest
import torch

from ddmd_lab.core.flow import shift_time
from ddmd_lab.core.tau import TauRule, sample_tau


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("clamp", [(0.0, 1.0), (0.02, 0.98)])
def test_uniform_rule_in_bounds(shift, clamp):
    torch.manual_seed(0)
    rule = TauRule("uniform", 0.1, 0.6)
    t = torch.rand(20000)
    tau = sample_tau(rule, t, shift, clamp)
    lo = max(shift_time(torch.tensor(0.1), shift).item(), clamp[0])
    hi = min(shift_time(torch.tensor(0.6), shift).item(), clamp[1])
    assert tau.min() >= lo - 1e-6 and tau.max() <= hi + 1e-6
    # drawn uniformly in *unshifted* time: the unshifted median is the interval's midpoint
    assert tau.median().item() == pytest.approx(shift_time(torch.tensor(0.35), shift).item(), abs=0.01)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_above_t_rule_never_below_student_time(shift):
    torch.manual_seed(1)
    t = shift_time(torch.rand(20000), shift)
    tau = sample_tau(TauRule("above_t", 0.0, 1.0), t, shift, (0.0, 1.0))
    assert torch.all(tau >= t - 1e-6) and torch.all(tau <= 1.0)
    # per-sample: a noisy student's tau spreads wider than a clean student's
    assert (tau[t < 0.2] - t[t < 0.2]).mean() > (tau[t > 0.8] - t[t > 0.8]).mean()


def test_global_clamp_applies_last():
    t = torch.full((1000,), 0.99)
    tau = sample_tau(TauRule("above_t"), t, 1.0, (0.02, 0.98))
    assert torch.all(tau == 0.98)  # the clamp wins over U(t, 1) at the clean end
    tau = sample_tau(TauRule("uniform", 0.0, 0.01), torch.zeros(1000), 1.0, (0.02, 0.98))
    assert torch.all(tau == 0.02)


def test_per_sample_draws_differ():
    tau = sample_tau(TauRule(), torch.zeros(64))
    assert tau.unique().numel() > 60


@pytest.mark.parametrize("bad", [dict(kind="gaussian"), dict(lo=0.5, hi=0.2), dict(hi=1.5)])
def test_bad_rules_rejected(bad):
    with pytest.raises(ValueError):
        TauRule(**bad)
