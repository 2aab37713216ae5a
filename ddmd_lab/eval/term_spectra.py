"""Where CA and DM act in frequency: spectra of the two update vectors per tau.

The paper shows qualitatively that CA at noisy tau shapes low frequencies
(composition) and at clean tau high ones (edges, texture); it publishes no
spectrum.  Here each term's vector is measured: for samples x, re-noise to
tau in a bin, take CA = (alpha-1)(x0_cond - x0_uncond) and DM = x0_cond -
x0_fake, and average their radially averaged power spectra per bin.

The observer measure: an observer fake model beside a CA-only generator
reproduces the generator's high-frequency excess in its x0 predictions, the
frozen teacher does not -- the reason subtracting the fake score cancels it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ddmd_lab.core.flow import renoise
from ddmd_lab.core.objective import ca_vector, dm_vector
from ddmd_lab.eval.spectra import high_frequency_excess, raps, spectral_centroid

DEFAULT_BINS = ((0.02, 0.1), (0.1, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 0.9), (0.9, 0.98))


@torch.no_grad()
def term_spectra(teacher, fake, x: Tensor, cond, alpha: float, bins=DEFAULT_BINS, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {"bins": torch.tensor(bins), "ca": [], "dm": [], "ca_centroid": [], "dm_centroid": []}
    for lo, hi in bins:
        tau = lo + (hi - lo) * torch.rand(x.shape[0], generator=g)
        x_tau = renoise(x, torch.randn(x.shape, generator=g), tau)
        both = teacher.x0(torch.cat([x_tau, x_tau]), torch.cat([tau, tau]),
                          teacher.cat_conditions([cond, teacher.null_condition(cond)]))
        c, u = both.chunk(2)
        ca = raps(ca_vector(c, u, alpha))
        out["ca"].append(ca)
        out["ca_centroid"].append(spectral_centroid(ca))
        if fake is not None:
            dm = raps(dm_vector(c, fake.x0(x_tau, tau, cond)))
            out["dm"].append(dm)
            out["dm_centroid"].append(spectral_centroid(dm))
    out["ca"] = torch.stack(out["ca"])
    out["dm"] = torch.stack(out["dm"]) if out["dm"] else torch.empty(0)
    return out


@torch.no_grad()
def observer_excess(teacher, fake, x: Tensor, cond, real_spectrum: Tensor, tau: float = 0.5, seed: int = 0) -> dict:
    """High-frequency excess (vs real data) of the generator's samples and of
    the teacher's and the fake model's x0 predictions from them re-noised at tau."""
    g = torch.Generator().manual_seed(seed)
    t = torch.full((x.shape[0],), tau)
    x_tau = renoise(x, torch.randn(x.shape, generator=g), t)
    return {
        "generator_hf_excess": high_frequency_excess(raps(x.clamp(-1, 1)), real_spectrum),
        "teacher_x0_hf_excess": high_frequency_excess(raps(teacher.x0(x_tau, t, cond).clamp(-1, 1)), real_spectrum),
        "fake_x0_hf_excess": high_frequency_excess(raps(fake.x0(x_tau, t, cond).clamp(-1, 1)), real_spectrum),
        "tau": tau,
    }
