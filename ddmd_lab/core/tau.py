"""Re-noising time rules: where each term of the objective looks at the sample.

A rule draws one tau per sample.  Intervals are given in *unshifted* time and
the draw is shifted afterwards (the Z-Image authors' answer for shifted
schedules), then clamped globally (DMD2 clamps to [0.02, 0.98]).  The clamp is
applied last, in actual time, because it protects the networks at the ends
of the schedule whatever the rule asked for.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ddmd_lab.core.flow import shift_time, unshift_time

TAU_KINDS = ("uniform", "above_t")


@dataclass(frozen=True)
class TauRule:
    """``uniform``: U(lo, hi).  ``above_t``: U(t_student, hi) -- the
    constrained schedule, never noisier than the sample the student saw."""

    kind: str = "uniform"
    lo: float = 0.0
    hi: float = 1.0

    def __post_init__(self):
        if self.kind not in TAU_KINDS:
            raise ValueError(f"tau rule kind {self.kind!r} is unknown; use one of {', '.join(TAU_KINDS)}.")
        for end in ("lo", "hi"):  # finite numbers (YAML 1.1 reads 5e-2 as a string); NaN would pass no comparison
            value = getattr(self, end)
            try:
                number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
            except ValueError:
                number = None
            if number is None or not math.isfinite(number):
                raise ValueError(f"tau rule {end} must be a finite number in [0, 1], got {value!r}.")
            object.__setattr__(self, end, number)
        if not (0.0 <= self.lo <= self.hi <= 1.0):
            raise ValueError(f"tau rule needs 0 <= lo <= hi <= 1, got lo={self.lo}, hi={self.hi}.")

    def to_dict(self) -> dict:
        return asdict(self)


def sample_tau(
    rule: TauRule,
    t_student: Tensor,
    shift: float = 1.0,
    clamp: tuple[float, float] = (0.02, 0.98),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one tau per sample of the batch (t_student has shape (B,)); from ``generator`` (drawn on
    its device) or torch's global RNG."""
    b = t_student.shape[0]
    where = generator.device if generator is not None else t_student.device
    u = torch.rand(b, generator=generator, device=where, dtype=torch.float32).to(t_student.device)
    if rule.kind == "uniform":
        lo = torch.full_like(u, rule.lo)
    else:  # above_t: the student's t is in actual (shifted) time
        lo = unshift_time(t_student.float(), shift).clamp(rule.lo, rule.hi)
    tau = shift_time(lo + (rule.hi - lo) * u, shift)
    return tau.clamp(clamp[0], clamp[1])
