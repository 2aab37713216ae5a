"""The teacher's reference sampler, as each family's diffusers pipeline runs it by default.

The grid of noise levels comes from the checkpoint's own scheduler (its config: shift,
dynamic shifting and how the pipeline computes mu, timestep spacing), converted to the
paper's time; CFG follows the pipeline's options (Lumina2 renormalises by default, Z-Image
can clamp and truncate).  The three pipelines' default schedulers all take Euler steps
(FlowMatchEulerDiscreteScheduler; SDXL's EulerDiscreteScheduler, which with epsilon
prediction is DDIM), and an Euler step in the paper's time between the same two noise
levels is the same update, so the loop itself is rollout.sample_ode.

This is the *teacher's* sampler (tables' teacher rows, make sample without RUN).  The CA
term of training always uses plain CFG in x0 space, as the paper writes it.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ddmd_lab.core.flow import velocity_from_x0
from ddmd_lab.core.rollout import Guided, sample_ode, start_state

FLOW_FAMILIES = ("zimage", "lumina2")


def calculate_shift(seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
                    max_shift: float = 1.15) -> float:
    """mu of resolution-dependent shifting (Flux / Z-Image / Lumina2 pipelines): linear in the sequence length."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return seq_len * m + base_shift - m * base_seq_len


def pipeline_mu(family: str, scheduler, latent_shape: tuple[int, int, int]) -> float:
    """mu exactly as the family's pipeline computes it (diffusers 0.42.1).

    Z-Image: the token count (H/2)(W/2).  Lumina2Pipeline passes ``latents.shape[1]``, the
    channel count (16 for Lumina-Image-2.0), not the token count; it only matters when the
    scheduler has use_dynamic_shifting, and it is reproduced here because the point of this
    sampler is to equal the pipeline.
    """
    c, h, w = latent_shape
    seq = (h // 2) * (w // 2) if family == "zimage" else c
    cfg = scheduler.config
    return calculate_shift(seq, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                           cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))


def teacher_times(family: str, scheduler, steps: int, latent_shape: tuple[int, int, int]) -> list[float]:
    """steps + 1 times in the paper's convention (ending at t = 1) of the pipeline's default grid."""
    s = copy.deepcopy(scheduler)  # set_timesteps mutates; the pipeline's own scheduler stays untouched
    if family in FLOW_FAMILIES:
        # both pipelines: sigmas linspace(1, 1/N, N) (Z-Image through torch, Lumina2 through numpy), then the
        # scheduler's shift (static, or exp(mu) when dynamic) and a terminal 0
        sigmas = (torch.linspace(1.0, 1 / steps, steps).tolist() if family == "zimage"
                  else np.linspace(1.0, 1 / steps, steps))
        s.set_timesteps(sigmas=sigmas, mu=pipeline_mu(family, s, latent_shape))
        return (1 - s.sigmas.double()).tolist()
    if type(s).__name__ != "EulerDiscreteScheduler" or s.config.get("prediction_type", "epsilon") != "epsilon":
        warnings.warn(f"the checkpoint's scheduler is {type(s).__name__}; the teacher sampler takes Euler (DDIM) steps "
                      "on its noise levels, which equals EulerDiscreteScheduler / DDIMScheduler only.", stacklevel=2)
    s.set_timesteps(steps)
    # VE sigma -> the paper's time with the same signal-to-noise ratio: sigma = (1 - t) / t
    return (1 / (1 + s.sigmas.double())).tolist()


@dataclass(frozen=True)
class PipelineCFG:
    """CFG as a family's pipeline applies it to the velocity (standard alpha here).

    normalization: Lumina2 -- rescale the guided velocity to the conditional one's norm
    along the last axis (its default True); Z-Image -- cap the guided norm at
    ``normalization`` x the conditional norm (its default 0: off).  truncation: Lumina2 --
    no CFG once the step fraction (i + 1) / N exceeds it; Z-Image -- no CFG once t exceeds
    it (both default 1.0: CFG everywhere)."""

    family: str
    normalization: float = 0.0
    truncation: float = 1.0

    @staticmethod
    def pipeline_default(family: str, normalization=None, truncation=None) -> "PipelineCFG":
        default_norm = {"lumina2": 1.0}.get(family, 0.0)
        return PipelineCFG(family, float(default_norm if normalization is None else normalization),
                           float(1.0 if truncation is None else truncation))

    def velocity(self, v_cond: Tensor, v_uncond: Tensor, alpha: float, t: Tensor, step: int, steps: int) -> Tensor:
        if self.family == "lumina2" and (step + 1) / steps > self.truncation:
            return v_cond
        if self.family == "zimage" and float(t[0]) > self.truncation:
            return v_cond
        v = v_uncond + alpha * (v_cond - v_uncond)
        if self.family == "lumina2" and self.normalization:
            v = v * (v_cond.norm(dim=-1, keepdim=True) / v.norm(dim=-1, keepdim=True))
        elif self.family == "zimage" and self.normalization > 0:
            dims = tuple(range(1, v.ndim))
            cap = torch.linalg.vector_norm(v_cond, dim=dims, keepdim=True) * self.normalization
            norm = torch.linalg.vector_norm(v, dim=dims, keepdim=True)
            v = torch.where(norm > cap, v * cap / norm, v)
        return v


def pipeline_teacher_sample(family: str, backbone, scheduler, guidance: PipelineCFG, noise: Tensor, cond,
                            alpha: float, steps: int) -> Tensor:
    """The pipeline's default ``__call__`` (output_type="latent") on our adapter: same grid,
    same start (x_vp = noise for SDXL), same CFG; alpha <= 1 skips the unconditional call, as
    the pipelines do."""
    ts = teacher_times(family, scheduler, steps, tuple(backbone.sample_shape))
    guided = Guided(backbone, alpha)

    def velocity(x: Tensor, t: Tensor, i: int) -> Tensor:
        if alpha <= 1.0:  # the pipelines guide only above 1 (Z-Image: g > 0)
            return velocity_from_x0(x, backbone.x0(x, t, cond), t)
        c, u = guided.pair(x, t, cond)
        return guidance.velocity(velocity_from_x0(x, c, t), velocity_from_x0(x, u, t), alpha, t, i, steps)

    return sample_ode(velocity, start_state(backbone, noise, ts[0]), ts)
