"""The time convention and the conversions every backbone adapter needs.

Inside ddmd_lab time runs the paper's way: t = 0 is pure noise, t = 1 is clean
data, and a re-noised sample is ``x_t = t * x0 + (1 - t) * noise``.  diffusers'
schedulers count the other way (sigma = 1 - t, timestep = 1000 * sigma); the
adapters convert at their edge with the helpers below so nothing above them
ever sees another convention.
"""
from __future__ import annotations

import torch
from torch import Tensor


def expand_like(t: Tensor | float, x: Tensor) -> Tensor:
    """Broadcast a per-sample time (B,) against a batch x (B, ...)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))


def renoise(x0: Tensor, noise: Tensor, t: Tensor | float) -> Tensor:
    """x_t = t * x0 + (1 - t) * noise (t = 1 clean, t = 0 pure noise)."""
    t = expand_like(t, x0)
    return t * x0 + (1 - t) * noise


# ---- time shift ---------------------------------------------------------
# The shift is defined on sigma = 1 - t: sigma' = s*sigma / (1 + (s-1)*sigma).
# s > 1 moves time towards noise (more steps spent at high noise), as in
# FlowMatchEulerDiscreteScheduler(shift=s).

def shift_time(t: Tensor, shift: float) -> Tensor:
    """Apply a time shift of factor ``shift`` to clean-time t (0.75 -> 0.5 at s=3)."""
    if shift == 1.0:
        return t
    sigma = 1 - t
    return 1 - shift * sigma / (1 + (shift - 1) * sigma)


def unshift_time(t: Tensor, shift: float) -> Tensor:
    """Inverse of :func:`shift_time`: sigma = sigma' / (s - (s-1) * sigma')."""
    if shift == 1.0:
        return t
    sigma = 1 - t
    return 1 - sigma / (shift - (shift - 1) * sigma)


# ---- prediction types ---------------------------------------------------

def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """d x_t / dt = x0 - noise in the paper's time."""
    return x0 - noise


def x0_from_velocity(x_t: Tensor, velocity: Tensor, t: Tensor | float) -> Tensor:
    """x0 = x_t + (1 - t) * v (exact for any t, including t = 0)."""
    return x_t + (1 - expand_like(t, x_t)) * velocity


def velocity_from_x0(x_t: Tensor, x0: Tensor, t: Tensor | float) -> Tensor:
    """Inverse of :func:`x0_from_velocity`; undefined at t = 1, where x_t = x0."""
    return (x0 - x_t) / (1 - expand_like(t, x_t))


def x0_from_flow_eps(x_t: Tensor, eps: Tensor, t: Tensor | float) -> Tensor:
    """Flow-matching epsilon prediction: x0 = (x_t - (1 - t) eps) / t."""
    t = expand_like(t, x_t)
    return (x_t - (1 - t) * eps) / t


def x0_from_ddpm_eps(x_t: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """DDPM (SDXL) epsilon prediction, x_t = sqrt(a) x0 + sqrt(1-a) eps.

    Computed in float64 because sqrt(alpha_bar) is ~0.07 at timestep 999 and
    the division amplifies bf16/fp32 rounding in eps; returned as float32.
    """
    a = expand_like(alpha_bar.double(), x_t)
    x0 = (x_t.double() - (1 - a).sqrt() * eps.double()) / a.sqrt()
    return x0.float()


# ---- diffusers' counting ----------------------------------------------

def sigma_from_t(t: Tensor) -> Tensor:
    return 1 - t


def t_from_sigma(sigma: Tensor) -> Tensor:
    return 1 - sigma


def t_from_diffusers_timestep(timestep: Tensor, num_train_timesteps: int = 1000) -> Tensor:
    """Flow schedulers: timestep = num_train_timesteps * sigma."""
    return 1 - timestep / num_train_timesteps


def diffusers_timestep_from_t(t: Tensor, num_train_timesteps: int = 1000) -> Tensor:
    return (1 - t) * num_train_timesteps


def timestep_input(timestep: Tensor) -> Tensor:
    """A denoiser's timestep argument, in whatever convention the model counts: float32, whatever
    the weights' dtype, as diffusers' pipelines pass it.  The models' timestep embeddings compute
    their sinusoids in float32 and cast only the result to the weights' dtype; a timestep cast to
    bfloat16 first is already rounded (8 significant bits: DDPM timestep 999 -> 1000, 749 -> 748;
    Z-Image's and Lumina2's t near 0.25 to a multiple of 2^-9)."""
    return timestep.float()


# ---- variance-preserving (DDPM) models inside the flow convention ------
# A VP sample x_vp = sqrt(ab) x0 + sqrt(1-ab) eps and a flow sample
# x_t = t x0 + (1-t) eps with the same signal-to-noise ratio differ only by a
# scale: x_vp = x_t / sqrt(t^2 + (1-t)^2), ab = t^2 / (t^2 + (1-t)^2).  So an
# epsilon-prediction DDPM model (SDXL) runs inside the flow convention exactly.

def alpha_bar_from_t(t: Tensor) -> Tensor:
    t = t.double()
    return t**2 / (t**2 + (1 - t) ** 2)


def t_from_alpha_bar(alpha_bar: Tensor) -> Tensor:
    a = alpha_bar.double().sqrt()
    return a / (a + (1 - alpha_bar.double()).sqrt())


def vp_scale(t: Tensor) -> Tensor:
    """x_vp = x_t * vp_scale(t)."""
    t = t.double()
    return 1 / (t**2 + (1 - t) ** 2).sqrt()


def ddpm_timestep_from_t(t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """The (fractional) DDPM timestep whose alpha_bar matches t, by
    interpolating log-SNR over the scheduler's table (alphas_cumprod decreases
    with the timestep)."""
    log_snr_table = (alphas_cumprod.double() / (1 - alphas_cumprod.double())).log()  # decreasing
    ab = alpha_bar_from_t(t).clamp(1e-12, 1 - 1e-12)
    log_snr = (ab / (1 - ab)).log()
    # search in the increasing, reversed table
    rev = log_snr_table.flip(0)
    idx = torch.searchsorted(rev, log_snr.clamp(rev[0], rev[-1])).clamp(1, len(rev) - 1)
    lo, hi = rev[idx - 1], rev[idx]
    frac = (log_snr.clamp(rev[0], rev[-1]) - lo) / (hi - lo)
    rev_pos = idx - 1 + frac
    return (len(rev) - 1) - rev_pos


def t_from_ddpm_timestep(timestep: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Paper time of an integer DDPM timestep (e.g. DMD2's 999, 749, 499, 249)."""
    return t_from_alpha_bar(alphas_cumprod.double()[timestep.long()]).float()
