"""Sampling: the few-step student, backward simulation, the teacher's CFG ODE.

Samplers are pure functions of a model and tensors (k-diffusion's shape); a
"model" here is anything with ``x0(x_t, t, cond)``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ddmd_lab.core.flow import expand_like, renoise, shift_time, velocity_from_x0, vp_scale
from ddmd_lab.core.guidance import cfg


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


STUDENT_SAMPLERS = ("renoise", "euler")


def _times_for(times: Tensor, k: int, batch: int, like: Tensor) -> Tensor:
    return times[k].to(like.device).expand(batch)


def start_state(model, noise: Tensor, t0: Tensor | float) -> Tensor:
    """The first state of a trajectory that starts at time t0 from pure noise.

    Flow networks start at t0 = 0, where x_t = noise.  Variance-preserving (DDPM) networks
    cannot start at t = 0; their samplers (diffusers' init_noise_sigma, DMD2's LCMScheduler)
    start at x_vp = noise at their noisiest timestep, which in flow time is
    x_t = noise / vp_scale(t0) = noise * sqrt(t0^2 + (1 - t0)^2).
    """
    if not getattr(model, "variance_preserving", False):
        return noise
    t0 = torch.as_tensor(t0, dtype=torch.float64)
    return (noise.double() / vp_scale(t0).to(noise.device)).to(noise.dtype)


def fresh_noise(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like ``like``; from ``generator`` (drawn on its device, as
    diffusers' randn_tensor does) or torch's global RNG."""
    if generator is None:
        return torch.randn_like(like)
    return torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def student_step(x: Tensor, x0: Tensor, t: Tensor, t_next: Tensor, sampler: str = "renoise",
                 generator: torch.Generator | None = None) -> Tensor:
    """From the student's x0 prediction at time t to its input at t_next.

    renoise: x0 re-noised with fresh noise (DMD2's sampler; diffusers' LCMScheduler and
             FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)).
    euler:   the deterministic probability-flow step, which keeps the predicted noise
             (diffusers' FlowMatchEulerDiscreteScheduler, Z-Image-Turbo's published sampler).
    """
    if sampler == "renoise":
        return renoise(x0, fresh_noise(x0, generator), t_next)
    if sampler == "euler":
        return x + (expand_like(t_next, x) - expand_like(t, x)) * velocity_from_x0(x, x0, t)
    raise ValueError(f"unknown student sampler {sampler!r}; known: {', '.join(STUDENT_SAMPLERS)}")


def backward_simulate(model, noise: Tensor, cond: Any, times: Tensor, k: int, sampler: str = "renoise",
                      generator: torch.Generator | None = None) -> Tensor:
    """The input the student sees at step k, simulated as at inference.

    Runs the student without gradients from pure noise through steps < k with
    the sampler it is used with (DMD2's "backward simulation", which removes
    the train/test mismatch of feeding re-noised real data).
    """
    x = start_state(model, noise, times[0])
    with torch.no_grad():
        for j in range(k):
            t = _times_for(times, j, x.shape[0], x)
            x0 = model.x0(x, t, cond)
            x = student_step(x, x0, t, _times_for(times, j + 1, x.shape[0], x), sampler, generator)
    return x


def sample_student(model, noise: Tensor, cond: Any, times: Tensor, sampler: str = "renoise",
                   generator: torch.Generator | None = None) -> Tensor:
    """Few-step sampling: the last step's x0 prediction is the sample."""
    x = backward_simulate(model, noise, cond, times, len(times) - 1, sampler, generator)
    with torch.no_grad():
        return model.x0(x, _times_for(times, len(times) - 1, x.shape[0], x), cond)


def ode_times(steps: int, shift: float = 1.0, t_start: float = 0.0) -> list[float]:
    """steps + 1 times from t_start to 1, uniform in shifted time."""
    return (t_start + (1 - t_start) * shift_time(torch.linspace(0, 1, steps + 1), shift)).tolist()


def sample_ode(velocity_fn: Callable[[Tensor, Tensor, int], Tensor], x: Tensor, ts: list[float]) -> Tensor:
    """Euler integration of dx/dt = velocity_fn(x_t, t, step index) over the times ``ts``
    (ending at t = 1, where the last step lands exactly on the x0 prediction)."""
    with torch.no_grad():
        for i, (t0, t1) in enumerate(zip(ts[:-1], ts[1:])):
            t = torch.full((x.shape[0],), t0, device=x.device)
            x = x + (t1 - t0) * velocity_fn(x, t, i)
    return x


def sample_cfg_ode(
    x0_fn: Callable[[Tensor, Tensor], Tensor],
    noise: Tensor,
    steps: int,
    shift: float = 1.0,
    t_start: float = 0.0,
) -> Tensor:
    """Euler integration of the probability-flow ODE from t=t_start to t=1 on a uniform
    shifted grid; ``x0_fn(x_t, t)`` returns the (guided) x0 prediction."""
    return sample_ode(lambda x, t, i: velocity_from_x0(x, x0_fn(x, t), t), noise, ode_times(steps, shift, t_start))


class Guided:
    """``model`` with CFG applied to its x0 (cond and uncond in one batched call): the
    teacher's ODE, or a distilled student asked for guidance anyway."""

    def __init__(self, model, alpha: float):
        self.model, self.alpha = model, alpha
        self._both = self._for = None

    @property
    def variance_preserving(self) -> bool:
        return getattr(self.model, "variance_preserving", False)

    def pair(self, x: Tensor, t: Tensor, cond: Any) -> tuple[Tensor, Tensor]:
        """(cond, uncond) x0 predictions in one network call."""
        if self._for is not cond:  # samplers call with one condition throughout: build the pair once
            self._both, self._for = self.model.cat_conditions([cond, self.model.null_condition(cond)]), cond
        c, u = self.model.x0(torch.cat([x, x]), torch.cat([t, t]), self._both).chunk(2)
        return c, u

    def x0(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        return cfg(*self.pair(x, t, cond), self.alpha)


def teacher_cfg_sample(model, noise: Tensor, cond: Any, alpha: float, steps: int, shift: float = 1.0) -> Tensor:
    """The teacher's many-step CFG sample on a uniform shifted grid (the CPU scales' teachers;
    text-to-image teachers follow their pipeline's own grid: backbones/pipeline_sampling.py)."""
    guided = Guided(model, alpha)
    t0 = getattr(model, "min_time", 0.0)
    return sample_cfg_ode(lambda x, t: guided.x0(x, t, cond), start_state(model, noise, t0), steps, shift, t0)
