"""Diagnostics that explain why a schedule wins or loses: the CA and DM terms compared per tau bin.

Per sample of a generator step (``per_sample``, pure tensor math, no networks):
- ``cos_ca_dm_own``: cosine between the CA and DM terms, each at its own tau as the arm draws them;
- ``ratio_ca_dm``: |CA| / |DM| after normalisation (the terms as they enter the update);
- ``share_ca`` / ``share_dm``: <term, update> / |update|^2, the share of the update along each term
  (they sum to 1: update = CA + DM);
- ``update_norm_ca`` / ``update_norm_dm`` / ``update_norm``: the sizes, ``normaliser_ca`` / ``normaliser_dm``:
  each term's per-sample normaliser;
- ``cos_ca_dm_shared`` / ``ratio_ca_dm_shared``: the same pair with both terms at one common tau (``measure``:
  the arm's own draw where it shares one, as coupled does; otherwise a fresh draw, tau ~ U(0,1) shifted and
  clamped as the run's taus, costing one batched teacher call and one fake call).

Bins (``Binned``, method/tau_bins.py): fixed tau bins (10 equal bins on [0, 1]); a quantity is averaged per bin of one tau --
the own-tau quantities per bin of tau_CA and, separately, of tau_DM; the shared-tau ones per bin of the
common tau.  The counts per bin are the taus' histograms.  Sums are kept, so batches and steps add up.
Everything a quantity cannot mean for an arm (a pair where one term is off) is NaN and counted nowhere.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddmd_lab.core.arms import FULL, Arm
from ddmd_lab.core.tau import sample_tau
from ddmd_lab.method.tau_bins import OWN
from ddmd_lab.method.update import Draws, Terms, UpdateSettings, update_terms


# ---- per sample (pure) ---------------------------------------------------------------------------
def per_sample(ca: Tensor | None, dm: Tensor | None, norm_ca: Tensor | None = None,
               norm_dm: Tensor | None = None) -> dict[str, Tensor]:
    """Per-sample quantities (B,) in float64 from the CA and DM terms as they enter the update (either may be
    None: that term is off) and their normalisers ((B, 1, ..., 1) or (B,)).  A pair needs both terms; a zero
    vector makes its cosine (and a zero update its shares) NaN, a zero DM makes the ratio NaN."""
    ref = ca if ca is not None else dm
    if ref is None:
        raise ValueError("per_sample needs at least one of the CA and DM terms")
    b = ref.shape[0]
    nan = torch.full((b,), float("nan"), dtype=torch.float64, device=ref.device)
    a = ca.detach().flatten(1).double() if ca is not None else None
    d = dm.detach().flatten(1).double() if dm is not None else None
    u = a + d if a is not None and d is not None else (a if a is not None else d)
    uu = (u * u).sum(1)
    na = a.norm(dim=1) if a is not None else nan
    nd = d.norm(dim=1) if d is not None else nan
    out = {"update_norm_ca": na, "update_norm_dm": nd, "update_norm": uu.sqrt()}
    if a is not None and d is not None:
        out["cos_ca_dm"] = _div((a * d).sum(1), na * nd)
        out["ratio_ca_dm"] = _div(na, nd)
    else:
        out["cos_ca_dm"], out["ratio_ca_dm"] = nan, nan
    out["share_ca"] = _div((a * u).sum(1), uu) if a is not None else nan
    out["share_dm"] = _div((d * u).sum(1), uu) if d is not None else nan
    out["normaliser_ca"] = norm_ca.detach().reshape(b, -1)[:, 0].double() if norm_ca is not None and a is not None else nan
    out["normaliser_dm"] = norm_dm.detach().reshape(b, -1)[:, 0].double() if norm_dm is not None and d is not None else nan
    return out


def _div(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.full_like(num, float("nan")))


# ---- one generator step (networks) ---------------------------------------------------------------
def common_draw(x: Tensor, t_student: Tensor, s: UpdateSettings, generator: torch.Generator | None = None):
    """One (tau, noise) for both terms: tau ~ U(0,1), shifted and clamped as the run's taus; fresh noise."""
    tau = sample_tau(FULL, t_student, s.shift, s.tau_clamp, generator).to(x.device)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return tau, noise


@torch.no_grad()
def measure(arm: Arm, x: Tensor, cond: Any, t_student: Tensor, teacher, fake, s: UpdateSettings,
            draws: Draws | None = None, terms: Terms | None = None, shared: tuple[Tensor, Tensor] | None = None,
            generator: torch.Generator | None = None) -> dict[str, np.ndarray]:
    """Per-sample diagnostics of one generator step (float64 arrays (B,) on the host), with the taus they are
    binned by (``tau_ca``, ``tau_dm``, ``tau_shared``, where they exist).

    ``terms``: the step's own Terms (training passes them, so the own taus cost no network call); else they
    are computed here from ``draws`` (or drawn).  The shared-tau pair (two-term arms only): the own draw where
    the arm shares one; else ``shared`` = (tau, noise), or a common draw from ``generator``, evaluated as a
    shared-draw arm with the same normaliser would be: one batched teacher call, one fake call.
    """
    if terms is None:
        terms = update_terms(arm, x, cond, t_student, teacher, fake, s, draws)
    own = per_sample(terms.ca, terms.dm, terms.norm_ca, terms.norm_dm)
    out = {k: own["cos_ca_dm" if k == "cos_ca_dm_own" else k] for k in OWN}
    d = terms.draws
    if terms.ca is not None:
        out["tau_ca"] = d.tau_ca
    if terms.dm is not None:
        out["tau_dm"] = d.tau_dm
    if terms.ca is not None and terms.dm is not None:
        if arm.shared_draw:
            both, tau = own, d.tau_dm
        else:
            tau, noise = shared if shared is not None else common_draw(terms.x, t_student, s, generator)
            one = update_terms(replace(arm, shared_draw=True), terms.x, cond, t_student, teacher, fake, s,
                               Draws(tau, noise, tau, noise))
            both = per_sample(one.ca, one.dm, one.norm_ca, one.norm_dm)
        out.update(cos_ca_dm_shared=both["cos_ca_dm"], ratio_ca_dm_shared=both["ratio_ca_dm"], tau_shared=tau)
    # one transfer (on a GPU: the step's one wait for the device; .cpu is no counted host read)
    keys = list(out)
    flat = torch.stack([out[k].detach().double().reshape(-1) for k in keys]).cpu().numpy()
    return dict(zip(keys, flat))
