"""The one small interface every backbone sits behind.

Everything above an adapter (objective, rollout, DistillModule, evaluation)
speaks the paper's time (t = 0 noise, 1 clean) and x0 predictions in float32;
the adapter converts to whatever its network was trained with.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ddmd_lab.errors import UserError


class Backbone(nn.Module):
    """A denoiser: predicts x0 from (x_t, t, condition).

    Conditions are opaque to callers; the adapter knows how to make the null
    (unconditional) one and how to batch several together, which is what lets
    the teacher's cond / uncond evaluations of one step go out as one call.
    """

    sample_shape: tuple[int, ...]
    denoiser_attr: str = ""  # the attribute holding the diffusers network (what LoRA adapts)
    min_time: float = 0.0  # the noisiest time the network accepts (VP models: > 0); ODE samplers start here
    # DDPM (epsilon, variance-preserving) networks start their trajectories at x_vp = noise (rollout.start_state)
    variance_preserving: bool = False

    def denoiser(self) -> nn.Module:
        if not self.denoiser_attr:
            raise UserError(f"{type(self).__name__} wraps no diffusers network; LoRA needs one (set lora.rank=0).")
        return getattr(self, self.denoiser_attr)

    def x0(self, x_t: Tensor, t: Tensor, cond: Any) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def null_condition(self, cond: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def null_batch(self, n: int) -> Any:  # pragma: no cover - interface
        """n null (unconditional) conditions, e.g. to probe shapes."""
        raise NotImplementedError

    def cat_conditions(self, conds: list[Any]) -> Any:
        return torch.cat(conds, dim=0)

    def condition_rows(self, cond: Any) -> list[Any]:
        """A batch of conditions as single-sample conditions (cat_conditions undoes it)."""
        return list(cond.split(1))

    def default_student_times(self, num_steps: int) -> Tensor | None:
        """The family's published student times in the paper's convention, or None for
        the generic shift(k / N)."""
        return None

    def features(self, x_t: Tensor, t: Tensor, cond: Any) -> Tensor:  # pragma: no cover - interface
        """Bottleneck features (for discriminator heads)."""
        raise NotImplementedError


def batched_x0(model: Backbone, queries: list[tuple[Tensor, Tensor, Any]]) -> list[Tensor]:
    """Evaluate several (x_t, t, cond) queries with one network call."""
    if len(queries) == 1:
        x, t, c = queries[0]
        return [model.x0(x, t, c)]
    xs, ts, cs = zip(*queries)
    out = model.x0(torch.cat(xs), torch.cat(ts), model.cat_conditions(list(cs)))
    return list(out.split([x.shape[0] for x in xs]))
