import pytest
import torch

from ddmd_lab.core.arms import REGISTRY
from ddmd_lab.backbones.toy import ToyFlowMLP
from ddmd_lab.core.flow import renoise
from ddmd_lab.core.guidance import cfg
from ddmd_lab.core.objective import ca_vector, critic_loss, dm_vector, dmd_normaliser, meanvar_kl, proxy_loss
from ddmd_lab.method.update import Draws, UpdateSettings, draw, generator_update


def _nets(seed=0):
    torch.manual_seed(seed)
    return ToyFlowMLP(num_classes=3, hidden=32, depth=2).double(), ToyFlowMLP(num_classes=3, hidden=32, depth=2).double()


def test_ca_plus_dm_is_cfg_minus_fake():
    c, u, f = torch.randn(3, 6, 2).unbind(0)
    alpha = 4.5
    torch.testing.assert_close(ca_vector(c, u, alpha) + dm_vector(c, f), cfg(c, u, alpha) - f)


def test_shared_draw_update_equals_coupled_dmd():
    """Through the real update code: the coupled arm's Delta is DMD2's
    (x0_real_cfg - x0_fake) / mean|x - x0_real_cfg|, and a decoupled arm given
    the same tau and noise for both terms gives exactly the same Delta."""
    teacher, fake = _nets()
    teacher.float(), fake.float()
    x, labels, t = torch.randn(16, 2), torch.randint(3, (16,)), torch.zeros(16)
    s = UpdateSettings(alpha=3.0)
    tau, noise = torch.rand(16) * 0.9 + 0.05, torch.randn(16, 2)
    shared = Draws(tau, noise, tau, noise)
    coupled, _ = generator_update(REGISTRY["coupled"], x, labels, t, teacher, fake, s, shared)
    decoupled, _ = generator_update(REGISTRY["decoupled_full"], x, labels, t, teacher, fake, s, shared)

    x_tau = renoise(x, noise, tau)
    real_cfg = cfg(teacher.x0(x_tau, tau, labels), teacher.x0(x_tau, tau, teacher.null_condition(labels)), 3.0)
    expected = (real_cfg - fake.x0(x_tau, tau, labels)) / (x - real_cfg).abs().mean(1, keepdim=True)
    torch.testing.assert_close(coupled, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(decoupled, coupled, rtol=1e-5, atol=1e-6)


def test_coupled_arm_draws_one_tau_and_noise():
    d = draw(REGISTRY["coupled"], torch.randn(8, 2), torch.zeros(8), UpdateSettings(alpha=2.0))
    assert d.tau_ca is d.tau_dm and d.noise_ca is d.noise_dm
    d = draw(REGISTRY["decoupled_full"], torch.randn(8, 2), torch.zeros(8), UpdateSettings(alpha=2.0))
    assert not torch.equal(d.tau_ca, d.tau_dm)


def test_single_term_arms():
    teacher, fake = _nets()
    teacher.float(), fake.float()
    x, labels, t = torch.randn(8, 2), torch.randint(3, (8,)), torch.zeros(8)
    s = UpdateSettings(alpha=1.0)
    # alpha = 1 makes CA vanish: ca_only gives no update at all
    upd, logs = generator_update(REGISTRY["ca_only"], x, labels, t, teacher, None, s)
    assert torch.all(upd == 0) and "update_norm_dm" not in logs
    upd, logs = generator_update(REGISTRY["dm_only"], x, labels, t, teacher, fake, UpdateSettings(alpha=5.0))
    assert "update_norm_ca" not in logs and logs["update_norm_dm"] > 0


def test_proxy_loss_gradient_is_minus_update_over_numel():
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    update = torch.randn(4, 3, 5, 5)
    proxy_loss(x, update).backward()
    torch.testing.assert_close(x.grad, -update / x.numel())


def test_normaliser_is_per_sample_and_guarded():
    x = torch.randn(3, 2, 4, 4)
    x0 = x.clone()
    x0[1] += 2.0
    n = dmd_normaliser(x, x0, eps=1e-5)
    assert n.shape == (3, 1, 1, 1)
    assert n[1].item() == 2.0 and n[0].item() == pytest.approx(1e-5)  # identical prediction: guarded, not 0
    update = (x0 - x) / n
    assert torch.isfinite(update).all()


def test_meanvar_kl_zero_at_target_positive_elsewhere():
    torch.manual_seed(0)
    x = torch.randn(8, 4096) * 0.9 + 0.075
    at_target = meanvar_kl(x, mu=x.mean(1).mean().item(), var=0.81, scope="sample")
    assert at_target < 1e-3
    assert meanvar_kl(x * 2, mu=0.075, var=0.81) > 0.2
    exact = torch.tensor([[1.0, -1.0]])  # mean 0, variance 1
    assert meanvar_kl(exact, 0.0, 1.0, eps=0.0).abs() < 1e-7
    b = torch.randn(10000, 2)
    assert meanvar_kl(b, 0.0, 1.0, scope="batch") < 1e-3


def test_critic_loss_targets():
    x0, pred = torch.zeros(4, 2), torch.ones(4, 2)
    tau = torch.tensor([0.0, 0.5, 0.5, 0.9])
    assert critic_loss(pred, x0, tau, "x0").item() == 1.0
    # velocity target: error scaled by 1/(1-tau)
    expected = torch.tensor([1.0, 4.0, 4.0, 100.0]).mean()
    torch.testing.assert_close(critic_loss(pred, x0, tau, "velocity"), expected)


def test_per_loss_normaliser_is_the_sum_of_two_dmd2_losses():
    """normaliser per_loss (the authors'): CA / mean|x - x0_guided(tau_CA)| + DM / mean|x - x0_cond(tau_DM)|;
    with a shared draw and alpha = 1 it is DMD2's update, whichever normaliser."""
    teacher, fake = _nets()
    teacher.float(), fake.float()
    x, labels, t = torch.randn(16, 2), torch.randint(3, (16,)), torch.zeros(16)
    tau_ca, tau_dm, n_ca, n_dm = torch.rand(16) * 0.9 + 0.05, torch.rand(16) * 0.9 + 0.05, torch.randn(16, 2), torch.randn(16, 2)
    arm = REGISTRY["decoupled_hybrid"].with_overrides(normaliser="per_loss")
    s = UpdateSettings(alpha=3.0)
    upd, logs = generator_update(arm, x, labels, t, teacher, fake, s, Draws(tau_ca, n_ca, tau_dm, n_dm))
    x_ca, x_dm = renoise(x, n_ca, tau_ca), renoise(x, n_dm, tau_dm)
    c_ca, u_ca = teacher.x0(x_ca, tau_ca, labels), teacher.x0(x_ca, tau_ca, teacher.null_condition(labels))
    c_dm = teacher.x0(x_dm, tau_dm, labels)
    ca = ca_vector(c_ca, u_ca, 3.0) / (x - cfg(c_ca, u_ca, 3.0)).abs().mean(1, keepdim=True)
    dm = dm_vector(c_dm, fake.x0(x_dm, tau_dm, labels)) / (x - c_dm).abs().mean(1, keepdim=True)
    torch.testing.assert_close(upd, ca + dm, rtol=1e-5, atol=1e-6)
    shared, one = Draws(tau_ca, n_ca, tau_ca, n_ca), UpdateSettings(alpha=1.0)
    dmd2, _ = generator_update(REGISTRY["coupled"], x, labels, t, teacher, fake, one, shared)
    for arm in (REGISTRY["coupled"].with_overrides(normaliser="per_loss"), arm):
        torch.testing.assert_close(generator_update(arm, x, labels, t, teacher, fake, one, shared)[0], dmd2,
                                   rtol=1e-5, atol=1e-6)
