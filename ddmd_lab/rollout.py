"""Sampling: the few-step student, backward simulation, the teacher's CFG ODE.

Samplers are pure functions of a model and tensors (k-diffusion's shape); a
"model" here is anything with ``x0(x_t, t, cond)``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .flow import renoise, shift_time, velocity_from_x0
from .guidance import cfg


def student_times(num_steps: int, shift: float = 1.0) -> Tensor:
    """The N fixed times a student is evaluated at: shift(k / N), k = 0..N-1.

    t_0 = 0 is pure noise (1-step students start there); with shift 1 and N=4
    this is DMD2's 4-step SDXL list (timesteps 999, 749, 499, 249 -> t ~ 0,
    0.25, 0.5, 0.75).
    """
    if num_steps < 1:
        raise ValueError(f"a student needs at least one step, got {num_steps}")
    return shift_time(torch.arange(num_steps, dtype=torch.float32) / num_steps, shift)


def times_for_model(model, num_steps: int, shift: float = 1.0, explicit: list | None = None) -> Tensor:
    """A student's times: explicit ones, else the family's published ones (SDXL: DMD2's DDPM
    timesteps), else shift(k / N)."""
    if explicit:
        return torch.tensor(explicit, dtype=torch.float32)
    times = model.default_student_times(num_steps)
    return student_times(num_steps, shift) if times is None else times


def _times_for(times: Tensor, k: int, batch: int, like: Tensor) -> Tensor:
    return times[k].to(like.device).expand(batch)


def backward_simulate(model, noise: Tensor, cond: Any, times: Tensor, k: int) -> Tensor:
    """The input the student sees at step k, simulated as at inference.

    Runs the student without gradients from pure noise through steps < k:
    predict x0, re-noise it with fresh noise to the next time (DMD2's
    "backward simulation", which removes the train/test mismatch of feeding
    re-noised real data).
    """
    x = noise
    with torch.no_grad():
        for j in range(k):
            x0 = model.x0(x, _times_for(times, j, x.shape[0], x), cond)
            x = renoise(x0, torch.randn_like(x0), times[j + 1].item())
    return x


def sample_student(model, noise: Tensor, cond: Any, times: Tensor) -> Tensor:
    """Few-step sampling: the last step's x0 prediction is the sample."""
    x = backward_simulate(model, noise, cond, times, len(times) - 1)
    with torch.no_grad():
        return model.x0(x, _times_for(times, len(times) - 1, x.shape[0], x), cond)


def sample_cfg_ode(
    x0_fn: Callable[[Tensor, Tensor], Tensor],
    noise: Tensor,
    steps: int,
    shift: float = 1.0,
    t_start: float = 0.0,
) -> Tensor:
    """Euler integration of the probability-flow ODE from t=t_start to t=1.

    ``x0_fn(x_t, t)`` returns the (guided) x0 prediction; the velocity is
    (x0 - x_t)/(1 - t), so the last step lands exactly on the x0 prediction.
    VP models start at their noisiest timestep (t_start > 0) from pure noise,
    as their own samplers do.
    """
    ts = (t_start + (1 - t_start) * shift_time(torch.linspace(0, 1, steps + 1), shift)).tolist()
    x = noise
    with torch.no_grad():
        for t0, t1 in zip(ts[:-1], ts[1:]):
            t = torch.full((x.shape[0],), t0, device=x.device)
            x = x + (t1 - t0) * velocity_from_x0(x, x0_fn(x, t), t)
    return x


class Guided:
    """``model`` with CFG applied to its x0 (cond and uncond in one batched call): the
    teacher's ODE, or a distilled student asked for guidance anyway."""

    def __init__(self, model, alpha: float):
        self.model, self.alpha = model, alpha
        self._both = self._for = None

    def x0(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        if self._for is not cond:  # samplers call with one condition throughout: build the pair once
            self._both, self._for = self.model.cat_conditions([cond, self.model.null_condition(cond)]), cond
        c, u = self.model.x0(torch.cat([x, x]), torch.cat([t, t]), self._both).chunk(2)
        return cfg(c, u, self.alpha)


def teacher_cfg_sample(model, noise: Tensor, cond: Any, alpha: float, steps: int, shift: float = 1.0) -> Tensor:
    """The teacher's many-step CFG sample."""
    guided = Guided(model, alpha)
    return sample_cfg_ode(lambda x, t: guided.x0(x, t, cond), noise, steps, shift, getattr(model, "min_time", 0.0))
