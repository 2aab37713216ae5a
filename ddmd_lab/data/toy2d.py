"""Class-conditional 2-D Gaussian mixture with closed-form denoisers.

Every class owns ``comps_per_class`` isotropic components on a ring, placed so
that neighbouring classes overlap: guidance then has something to push
against.  Under x_t = t x0 + (1-t) noise a component N(mu, s^2 I) becomes
N(t mu, v_t I) with v_t = t^2 s^2 + (1-t)^2, so the exact posterior mean
E[x0 | x_t, c] (the ideal x0 prediction) is a responsibility-weighted sum of
per-component Gaussian posteriors, conditional or unconditional.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ddmd_lab.core.flow import expand_like, velocity_from_x0
from ddmd_lab.core.guidance import cfg


@dataclass(frozen=True)
class ToyMixture:
    num_classes: int = 4
    comps_per_class: int = 2
    radius: float = 1.5
    std: float = 0.35

    @property
    def means(self) -> Tensor:
        n = self.num_classes * self.comps_per_class
        # component j belongs to class j % K: a class's components sit apart on
        # the ring, interleaved with the other classes' components.
        angles = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
        return self.radius * torch.stack([angles.cos(), angles.sin()], dim=1)

    @property
    def component_class(self) -> Tensor:
        return torch.arange(self.num_classes * self.comps_per_class) % self.num_classes

    def sample(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples of p(x0 | c) for each label."""
        pick = torch.randint(self.comps_per_class, labels.shape, generator=generator)
        comp = labels.cpu() + self.num_classes * pick
        noise = torch.randn(labels.shape[0], 2, generator=generator, dtype=torch.float64)
        return (self.means[comp] + self.std * noise).float()

    def posterior_x0(self, x_t: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        """E[x0 | x_t, c] (or unconditional when labels is None), float64 inside.  A row whose label is
        ``num_classes`` (the null label of label dropout) is unconditional too, so a batch of cond and
        null rows is answered in one call, as a teacher network answers it."""
        x = x_t.double().cpu()
        tt = expand_like(t.double().cpu(), x)  # (B,1)
        mu = self.means  # (J,2)
        var_t = tt**2 * self.std**2 + (1 - tt) ** 2  # (B,1)
        diff = x[:, None, :] - tt[:, None, :] * mu[None]  # (B,J,2)
        logp = -(diff**2).sum(-1) / (2 * var_t)  # equal weights, equal variances: no log-det term needed
        if labels is not None:
            lab = labels.cpu()[:, None]
            own = (self.component_class[None, :] == lab) | (lab == self.num_classes)
            logp = logp.masked_fill(~own, float("-inf"))
        resp = torch.softmax(logp, dim=1)  # (B,J)
        comp_mean = mu[None] + (tt[:, None, :] * self.std**2 / var_t[:, None, :]) * diff
        out = (resp[..., None] * comp_mean).sum(1)
        return out.to(device=x_t.device, dtype=torch.float32)

    def guided_x0(self, x_t: Tensor, t: Tensor, labels: Tensor, alpha: float) -> Tensor:
        return cfg(self.posterior_x0(x_t, t, labels), self.posterior_x0(x_t, t, None), alpha)

    def cfg_ode_sample(self, noise: Tensor, labels: Tensor, alpha: float, steps: int = 500) -> Tensor:
        """Integrate the exact CFG-guided probability-flow ODE from t=0 to t=1 (Euler)."""
        x = noise.double()
        ts = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
        for i in range(steps):
            t = ts[i].expand(x.shape[0])
            x0 = self.guided_x0(x, t, labels, alpha).double()
            x = x + (ts[i + 1] - ts[i]) * velocity_from_x0(x, x0, t)
        return x.float()

    def class_log_likelihood(self, x: Tensor) -> Tensor:
        """log p(x | c) for every class, (B, K) -- for class precision."""
        d2 = ((x.double().cpu()[:, None, :] - self.means[None]) ** 2).sum(-1)
        logp = -d2 / (2 * self.std**2)
        per_class = logp.view(x.shape[0], self.comps_per_class, self.num_classes)
        return torch.logsumexp(per_class, dim=1)

    def outside_support(self, x: Tensor, n_std: float = 3.0) -> Tensor:
        """True where a point is more than n_std from every component's mean."""
        d = torch.cdist(x.double().cpu(), self.means).min(dim=1).values
        return d > n_std * self.std
