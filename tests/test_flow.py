import pytest
import torch

from ddmd_lab.core import flow, guidance


def test_renoise_endpoints():
    x0, noise = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.equal(flow.renoise(x0, noise, torch.ones(4)), x0)
    assert torch.equal(flow.renoise(x0, noise, torch.zeros(4)), noise)


@pytest.mark.parametrize("s", [1.0, 3.0, 0.5])
def test_shift_round_trip_and_monotone(s):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    shifted = flow.shift_time(t, s)
    torch.testing.assert_close(flow.unshift_time(shifted, s), t)
    assert torch.all(shifted.diff() >= 0) and shifted[0] == 0 and shifted[-1] == 1


def test_shift_known_value():
    # PAPER.md: clean-time 0.75 (sigma 0.25) -> 0.5 at shift 3
    assert flow.shift_time(torch.tensor(0.75), 3.0).item() == pytest.approx(0.5)


def test_velocity_and_eps_conversions_round_trip():
    x0, noise = torch.randn(5, 2, 4, 4), torch.randn(5, 2, 4, 4)
    t = torch.rand(5) * 0.9 + 0.05
    x_t = flow.renoise(x0, noise, t)
    v = flow.velocity_target(x0, noise)
    torch.testing.assert_close(flow.x0_from_velocity(x_t, v, t), x0)
    torch.testing.assert_close(flow.velocity_from_x0(x_t, x0, t), v)
    torch.testing.assert_close(flow.x0_from_flow_eps(x_t, noise, t), x0)


def test_ddpm_eps_conversion():
    x0, eps = torch.randn(3, 4), torch.randn(3, 4)
    alpha_bar = torch.tensor([0.9, 0.5, 0.0047])  # the last ~ SDXL's timestep 999
    a = alpha_bar[:, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    torch.testing.assert_close(flow.x0_from_ddpm_eps(x_t, eps, alpha_bar), x0, atol=1e-4, rtol=1e-4)


def test_diffusers_timestep_round_trip():
    t = torch.rand(10)
    ts = flow.diffusers_timestep_from_t(t)
    torch.testing.assert_close(flow.t_from_diffusers_timestep(ts), t)
    torch.testing.assert_close(flow.sigma_from_t(t), 1 - t)
    torch.testing.assert_close(flow.t_from_sigma(flow.sigma_from_t(t)), t)


def test_cfg_forms_agree():
    c, u = torch.randn(8), torch.randn(8)
    for alpha in (1.0, 3.5, 8.0):
        torch.testing.assert_close(guidance.cfg(c, u, alpha), guidance.cfg_offset(c, u, guidance.offset_from_alpha(alpha)))
        assert guidance.alpha_from_offset(guidance.offset_from_alpha(alpha)) == alpha
    torch.testing.assert_close(guidance.cfg(c, u, 1.0), c)  # alpha 1 = no guidance
    torch.testing.assert_close(guidance.cfg_offset(c, u, 0.0), c)  # Z-Image-Turbo's guidance 0
