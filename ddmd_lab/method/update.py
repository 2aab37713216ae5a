"""The generator's update direction for one arm: draws, network calls, math.

This is the only place that turns an arm (which terms, which tau rules,
shared or independent draws) into network evaluations.  The teacher's queries
of one step (cond at tau_DM, cond and uncond at tau_CA) go out as one batched
call; the fake model is called once, at tau_DM, and never with CFG.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ddmd_lab.backbones.base import batched_x0
from ddmd_lab.core.arms import Arm
from ddmd_lab.core.flow import renoise
from ddmd_lab.core.guidance import cfg
from ddmd_lab.core.objective import ca_vector, dm_vector, dmd_normaliser, per_sample_norm
from ddmd_lab.core.streams import Streams
from ddmd_lab.core.tau import sample_tau


@dataclass(frozen=True)
class UpdateSettings:
    alpha: float
    shift: float = 1.0
    tau_clamp: tuple[float, float] = (0.02, 0.98)
    normaliser_eps: float = 1e-5


@dataclass
class Draws:
    """Re-noising draws of one step; tests pass their own to pin identities."""

    tau_ca: Tensor | None
    noise_ca: Tensor | None
    tau_dm: Tensor | None
    noise_dm: Tensor | None


def draw(arm: Arm, x: Tensor, t_student: Tensor, s: UpdateSettings, streams: Streams | None = None,
         step: int = 0) -> Draws:
    """The step's (tau, noise) per term: from the run's keyed streams at ``step`` (core/streams.py: the CA
    draw, which is also coupled's shared one, comes from the tau_ca / noise_ca streams, the DM draw from
    tau_dm / noise_dm), or from torch's global RNG where no streams are given."""
    def one(term, rule):
        if streams is None:
            return sample_tau(rule, t_student, s.shift, s.tau_clamp).to(x.device), torch.randn_like(x)
        tau = sample_tau(rule, t_student, s.shift, s.tau_clamp, streams.at(f"tau_{term}", step)).to(x.device)
        return tau, streams.randn(f"noise_{term}", step, x.shape, x.device).to(x.dtype)

    tau_ca, noise_ca = one("ca", arm.tau_ca) if arm.uses_ca else (None, None)
    if arm.uses_dm and arm.shared_draw and arm.uses_ca:
        tau_dm, noise_dm = tau_ca, noise_ca
    else:
        tau_dm, noise_dm = one("dm", arm.tau_dm) if arm.uses_dm else (None, None)
    return Draws(tau_ca, noise_ca, tau_dm, noise_dm)


@dataclass
class Terms:
    """One step's update split into its terms (x0 space, float32): what ``generator_update`` sums,
    and what diagnostics.py measures.  A term is None where the arm switches it off."""

    x: Tensor  # the generator output the terms were computed for (detached, float32)
    draws: Draws
    ca: Tensor | None  # ca_weight * CA / norm_ca, as it enters the update
    dm: Tensor | None  # dm_weight * DM / norm_dm
    norm_ca: Tensor | None  # per-sample normalisers, shape (B, 1, ..., 1)
    norm_dm: Tensor | None
    update: Tensor  # the sum of the terms


@torch.no_grad()
def update_terms(
    arm: Arm,
    x: Tensor,
    cond: Any,
    t_student: Tensor,
    teacher,
    fake,
    s: UpdateSettings,
    draws: Draws | None = None,
    streams: Streams | None = None,
    step: int = 0,
) -> Terms:
    """The arm's CA and DM terms for generator output x: one batched teacher call, one fake call."""
    x = x.detach().float()
    d = draws or draw(arm, x, t_student, s, streams, step)
    shared = arm.shared_draw and arm.uses_ca and arm.uses_dm
    queries: dict[str, tuple] = {}
    if arm.uses_dm:
        x_dm = renoise(x, d.noise_dm, d.tau_dm)
        queries["cond_dm"] = (x_dm, d.tau_dm, cond)
    if arm.uses_ca:
        x_ca = renoise(x, d.noise_ca, d.tau_ca)
        if not shared:  # with one shared draw, cond@tau_CA is cond@tau_DM
            queries["cond_ca"] = (x_ca, d.tau_ca, cond)
        queries["uncond_ca"] = (x_ca, d.tau_ca, teacher.null_condition(cond))
    real = dict(zip(queries, batched_x0(teacher, list(queries.values()))))
    if shared:
        real["cond_ca"] = real["cond_dm"]

    ca = dm = None
    if arm.uses_ca:
        ca = ca_vector(real["cond_ca"], real["uncond_ca"], s.alpha)
    if arm.uses_dm:
        fake_cond = fake.x0(x_dm, d.tau_dm, cond)
        dm = dm_vector(real["cond_dm"], fake_cond)

    norm_ca, norm_dm = _normalisers(arm, x, real, s)
    update = torch.zeros_like(x)
    ca_term = dm_term = None
    if ca is not None:
        ca_term = arm.ca_weight * ca / norm_ca
        update += ca_term
    if dm is not None:
        dm_term = arm.dm_weight * dm / norm_dm
        update += dm_term
    return Terms(x, d, ca_term, dm_term, norm_ca if ca is not None else None, norm_dm if dm is not None else None,
                 update)


@torch.no_grad()
def generator_update(
    arm: Arm,
    x: Tensor,
    cond: Any,
    t_student: Tensor,
    teacher,
    fake,
    s: UpdateSettings,
    draws: Draws | None = None,
    out: dict | None = None,
    streams: Streams | None = None,
    step: int = 0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Return the x0-space update Delta for generator output x, and logs.

    The logs are 0-dim tensors on x's device: reading one waits for the device, which
    the caller does only on the steps it logs.  ``out``, where given, receives the
    step's Terms under ``"terms"`` (the diagnostics read them).
    """
    terms = update_terms(arm, x, cond, t_student, teacher, fake, s, draws, streams, step)
    if out is not None:
        out["terms"] = terms
    return terms.update, term_logs(terms)


def term_logs(terms: Terms) -> dict[str, Tensor]:
    """Batch means of the taus, the terms' sizes and the normalisers (0-dim tensors, no host read)."""
    d, logs = terms.draws, {}
    if terms.ca is not None:
        logs["tau_ca_mean"] = d.tau_ca.mean()
    if terms.dm is not None:
        logs["tau_dm_mean"] = d.tau_dm.mean()
    if terms.ca is not None:
        logs["update_norm_ca"] = per_sample_norm(terms.ca).mean()
        logs["normaliser_ca"] = terms.norm_ca.mean()
    if terms.dm is not None:
        logs["update_norm_dm"] = per_sample_norm(terms.dm).mean()
        logs["normaliser_dm"] = terms.norm_dm.mean()
    logs["update_norm"] = per_sample_norm(terms.update).mean()
    return logs


def _normalisers(arm: Arm, x: Tensor, real: dict[str, Tensor], s: UpdateSettings) -> tuple[Tensor, Tensor]:
    if arm.normaliser == "none":
        one = torch.ones(x.shape[0], *([1] * (x.ndim - 1)), device=x.device)
        return one, one
    if arm.normaliser == "per_term":
        n_ca = dmd_normaliser(x, real["cond_ca"], s.normaliser_eps) if arm.uses_ca else None
        n_dm = dmd_normaliser(x, real["cond_dm"], s.normaliser_eps) if arm.uses_dm else None
        return n_ca, n_dm
    if arm.normaliser == "per_loss":
        # the authors' answer (Z-Image issue #56): the generator's loss is a CA loss plus a DM loss, each
        # normalised DMD2-style by its own teacher prediction at its own tau -- CA by the guided prediction
        # at tau_CA, DM by the conditional one at tau_DM.  Shared draw and alpha = 1: DMD2's normaliser.
        n_ca = (dmd_normaliser(x, cfg(real["cond_ca"], real["uncond_ca"], s.alpha), s.normaliser_eps)
                if arm.uses_ca else None)
        n_dm = dmd_normaliser(x, real["cond_dm"], s.normaliser_eps) if arm.uses_dm else None
        return n_ca, n_dm
    # shared (DMD2): one scale from the guided teacher prediction.  It is taken
    # where the CA term looks (the guided prediction exists only there), or at
    # tau_DM without CA (alpha = 1, guided == cond).  With a shared draw this is
    # exactly DMD2's mean|x - x0_real_cfg|.
    if arm.uses_ca:
        guided = cfg(real["cond_ca"], real["uncond_ca"], s.alpha)
    else:
        guided = real["cond_dm"]
    n = dmd_normaliser(x, guided, s.normaliser_eps)
    return n, n
