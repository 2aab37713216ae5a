"""Toy denoisers for 2-D points, conditioned on a class label.

ToyFlowMLP is a small MLP flow model: it predicts the velocity d x_t/dt = x0 - noise
(as Z-Image and Lumina2 do) and exposes x0 = x_t + (1 - t) v.  ExactToyDenoiser is the
mixture's closed-form E[x0 | x_t, c] behind the same interface.  Label ``num_classes``
is the null label used by label dropout, so one call gives both the cond and the uncond
prediction.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from ddmd_lab.backbones.base import Backbone
from ddmd_lab.core.flow import x0_from_velocity


class ToyBackbone(Backbone):
    """Class labels as conditions, ``num_classes`` the null one."""

    num_classes: int

    def null_batch(self, n: int) -> Tensor:
        device = next(itertools.chain(self.parameters(), self.buffers())).device  # the exact one has only a buffer
        return torch.full((n,), self.num_classes, dtype=torch.long, device=device)

    def null_condition(self, cond: Tensor) -> Tensor:
        return torch.full_like(cond, self.num_classes)


class FourierTime(nn.Module):
    def __init__(self, dim: int = 32, max_freq: float = 64.0):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(max_freq), dim // 2)) * math.pi)

    def forward(self, t: Tensor) -> Tensor:
        angles = t.float()[:, None] * self.freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class ToyFlowMLP(ToyBackbone):
    def __init__(self, num_classes: int = 4, hidden: int = 256, depth: int = 3, dim: int = 2):
        super().__init__()
        self.num_classes = num_classes
        self.sample_shape = (dim,)
        self.time = FourierTime(32)
        self.label = nn.Embedding(num_classes + 1, 32)
        layers: list[nn.Module] = [nn.Linear(dim + 64, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def _inputs(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        return torch.cat([x_t.float(), self.time(t), self.label(labels)], dim=1)

    def velocity(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        return self.net(self._inputs(x_t, t, labels))

    def features(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.net[:-1](self._inputs(x_t, t, cond))

    def x0(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return x0_from_velocity(x_t.float(), self.velocity(x_t, t, cond), t)


class ExactToyDenoiser(ToyBackbone):
    """A teacher without error: the mixture's posterior mean, conditional for a label and
    unconditional for the null label (toy2d's ``teacher.kind=exact``).  It has no weights, so
    the networks a run trains start from elsewhere (DistillModule's ``init``)."""

    def __init__(self, mixture):  # data.toy2d.ToyMixture (data/ sits above backbones/: duck-typed here)
        super().__init__()
        self.mixture, self.num_classes = mixture, mixture.num_classes
        self.sample_shape = (2,)
        # the mixture's parameters as the one frozen tensor: a checkpoint's teacher fingerprint then
        # names the mixture it was distilled from, as it names a trained teacher's weights
        spec = [mixture.num_classes, mixture.comps_per_class, mixture.radius, mixture.std]
        self.register_buffer("mixture_spec", torch.tensor(spec, dtype=torch.float64))

    def x0(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.mixture.posterior_x0(x_t, t, cond)
