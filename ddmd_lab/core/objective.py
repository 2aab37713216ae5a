"""Pure tensor math of the Decoupled-DMD objective (x0-prediction space).

The practical DMD gradient splits into two terms (Liu et al. 2025, eq. 3):

    cfg - fake = (real_cond - fake_cond)             DM, "the shield"
               + (alpha - 1) (real_cond - real_uncond)  CA, "the spear"

Both are differences of x0 predictions, proportional to score differences.
Decoupled DMD evaluates them at independently re-noised samples; with a shared
tau and noise their sum is the coupled (original) DMD update exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def ca_vector(real_cond: Tensor, real_uncond: Tensor, alpha: float) -> Tensor:
    """CFG augmentation: (alpha - 1) * (x0_real_cond - x0_real_uncond)."""
    return (alpha - 1.0) * (real_cond - real_uncond)


def dm_vector(real_cond: Tensor, fake_cond: Tensor) -> Tensor:
    """Distribution matching: x0_real_cond - x0_fake_cond (no CFG on either side)."""
    return real_cond - fake_cond


def dmd_normaliser(x: Tensor, x0_teacher: Tensor, eps: float = 1e-5) -> Tensor:
    """DMD/DMD2's per-sample step normaliser, mean_{C,H,W} |x - x0_teacher|.

    Returned with shape (B, 1, ..., 1) so it divides a batch directly.  The
    clamp guards the case the teacher agrees with the generator exactly
    (users of public DMD code report NaN there); ``eps`` is a config value.
    """
    dims = tuple(range(1, x.ndim))
    scale = (x.detach().float() - x0_teacher.detach().float()).abs().mean(dim=dims, keepdim=True)
    return scale.clamp_min(eps)


def proxy_loss(x: Tensor, update: Tensor) -> Tensor:
    """Generator proxy loss ``0.5 * mse(x, stopgrad(x + update))``.

    Its gradient w.r.t. x is ``-update / x.numel()`` (mean reduction, as in
    DMD2, so the effective step size depends on the tensor size); descending
    it moves x along ``update``.
    """
    target = (x + update).detach()
    return 0.5 * F.mse_loss(x.float(), target.float(), reduction="mean")


def critic_loss(
    fake_x0: Tensor,
    x0: Tensor,
    tau: Tensor,
    target: str = "x0",
    max_weight: float = 100.0,
) -> Tensor:
    """Denoising loss of the fake model on detached generator samples.

    ``target="x0"`` regresses x0 directly.  ``target="velocity"`` is the
    flow-matching loss written through the x0 prediction: the velocity error is
    (x0_pred - x0) / (1 - tau), so it is an x0 loss weighted by 1/(1-tau)^2,
    capped at ``max_weight`` because the weight diverges as tau -> 1.
    """
    err = (fake_x0.float() - x0.detach().float()) ** 2
    err = err.flatten(1).mean(dim=1)
    if target == "x0":
        return err.mean()
    if target == "velocity":
        weight = (1.0 / (1.0 - tau.float()).clamp_min(1e-6) ** 2).clamp_max(max_weight)
        return (weight * err).mean()
    raise ValueError(f"critic target must be 'x0' or 'velocity', got {target!r}")


def meanvar_kl(x: Tensor, mu: float, var: float, scope: str = "sample", eps: float = 1e-6) -> Tensor:
    """Mean-variance KL regulariser (Liu et al. 2025, Sec. 4.2).

    Fits a Gaussian and returns KL(N(m, v) || N(mu, var)), zero exactly when
    the fitted mean is mu and the variance var.  ``scope="sample"`` fits one
    Gaussian per sample over its pixels (the paper's per-image form);
    ``scope="batch"`` fits one per feature over the batch, the only meaningful
    form for low-dimensional samples such as the 2-D toy.
    """
    flat = x.float().flatten(1)
    dim = {"sample": 1, "batch": 0}.get(scope)
    if dim is None:
        raise ValueError(f"meanvar scope must be 'sample' or 'batch', got {scope!r}")
    m = flat.mean(dim=dim)
    v = flat.var(dim=dim, unbiased=False) + eps
    kl = 0.5 * (torch.log(var / v) + (v + (m - mu) ** 2) / var - 1.0)
    return kl.mean()


def per_sample_norm(x: Tensor) -> Tensor:
    """L2 norm of each sample, (B,) -- for logging update sizes."""
    return x.detach().float().flatten(1).norm(dim=1)
