"""The fine-tuning loss of a distilled student, as pure functions.

Family objective: the scale teachers' flow matching (teacher_module.py): the velocity
of the prediction, (x0_pred - x_t) / (1 - t), regressed onto x0 - noise, where
x_t = t * x0 + (1 - t) * noise (t = 0 noise, t = 1 clean).  Z-Image and Lumina2 are
flow-matching models trained the same way, so one loss serves every family this
fine-tunes.  What differs from teacher training is where t comes from: a distilled
student only ever runs at its N times (rollout.times_for_model), so t is drawn from
those, one per sample, never from U(0, 1).

Guidance in the loss (``train_guidance`` = g) is written in the offset form
cond + g * (cond - uncond) = guidance.cfg(cond, uncond, alpha = 1 + g) (guidance.py's
cfg_offset): g = 0 is then exactly "no CFG", the plain conditional prediction, as
Z-Image-Turbo's "guidance_scale = 0" and the advice under test ("train at guidance
0") mean it; the standard form's alpha = 0 would instead be the unconditional
prediction.  CFG is applied to x0 predictions; the velocity is affine in x0 at fixed
(x_t, t), so CFG on x0 and CFG on the velocity give the same loss.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ddmd_lab.core.flow import renoise, velocity_from_x0, velocity_target
from ddmd_lab.core.guidance import cfg_offset


def draw_student_times(times: Tensor, batch: int, generator: torch.Generator | None = None) -> Tensor:
    """One of the student's times per sample, uniformly over its steps."""
    k = torch.randint(len(times), (batch,), generator=generator)
    return times.cpu()[k]


def guided_x0(model, x_t: Tensor, t: Tensor, cond: Any, guidance: float) -> Tensor:
    """The student's x0 prediction, with CFG in the offset form when ``guidance`` > 0
    (cond and uncond in one batched call, as rollout.Guided does)."""
    if guidance == 0:
        return model.x0(x_t, t, cond)
    both = model.cat_conditions([cond, model.null_condition(cond)])
    c, u = model.x0(torch.cat([x_t, x_t]), torch.cat([t, t]), both).chunk(2)
    return cfg_offset(c, u, guidance)


def denoising_loss(model, x0: Tensor, cond: Any, t: Tensor, guidance: float = 0.0,
                   noise: Tensor | None = None) -> Tensor:
    """Flow-matching MSE of the (guided) prediction at times ``t`` (B,), velocity target."""
    x0 = x0.float()
    noise = torch.randn_like(x0) if noise is None else noise.to(x0)
    t = t.to(x0.device, x0.dtype)
    x_t = renoise(x0, noise, t)
    pred = guided_x0(model, x_t, t, cond, guidance)
    return F.mse_loss(velocity_from_x0(x_t, pred.float(), t), velocity_target(x0, noise))
