"""Ablation arms as data.

An arm says which terms of the objective are on, where each looks (its tau
rule), whether the two share one draw, and how updates are normalised.  A new
arm is a new registry entry or a YAML file in experiments/arms/ (read by config.py), never new code.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from ddmd_lab.core.tau import TauRule
from ddmd_lab.errors import UserError

NORMALISERS = ("shared", "per_term", "per_loss", "none")
# the terms' weights: in [0, MAX_WEIGHT].  A negative weight turns its term around (CA away from the guided
# prediction, DM towards the fake distribution, the GAN against itself).  A weight is relative to the other
# terms' (CA and DM 1, DMD2's GAN 5e-3 / 1e-2): above 1e3 its term drowns the others, and a huge one makes the
# loss or the gradient norm overflow float32, so every update is skipped
WEIGHTS = ("ca_weight", "dm_weight", "meanvar_weight", "gan_weight", "gan_disc_weight")
MAX_WEIGHT = 1e3


@dataclass(frozen=True)
class Arm:
    name: str
    description: str = ""
    ca_weight: float = 1.0  # 0 switches CFG augmentation off
    dm_weight: float = 1.0  # 0 switches distribution matching off
    tau_ca: TauRule = field(default_factory=TauRule)
    tau_dm: TauRule = field(default_factory=TauRule)
    # Original DMD: one tau and one noise for both terms (tau_dm is ignored).
    shared_draw: bool = False
    # shared: one per-sample scale mean|x - x0_teacher_guided| (DMD2);
    # per_term: CA by mean|x - x0_cond(tau_CA)|, DM by mean|x - x0_cond(tau_DM)|;
    # per_loss (the authors'): CA by mean|x - x0_guided(tau_CA)|, DM by mean|x - x0_cond(tau_DM)|.
    normaliser: str = "shared"
    # Train the fake model.  Needed for DM; for CA-only arms it is an observer
    # (trained beside the generator, never used in its update).
    train_fake: bool = True
    meanvar_weight: float = 0.0  # mean-variance KL regulariser weight
    gan_weight: float = 0.0  # generator's GAN loss weight (discriminator head on the fake's features)
    gan_disc_weight: float = 0.0  # the discriminator's loss weight, trained with the fake model

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or not isinstance(self.description, str):
            raise UserError(f"an arm needs a name and a description that are strings, got {self.name!r} and "
                            f"{self.description!r}.")
        for key in WEIGHTS:  # YAML 1.1 reads 5e-3 (no dot) as a string
            value = getattr(self, key)
            try:
                number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
            except ValueError:
                number = None
            if number is None or not math.isfinite(number) or not 0 <= number <= MAX_WEIGHT:
                raise UserError(f"arm {self.name!r}: {key} must be a finite number in [0, {MAX_WEIGHT:g}] (0 = the "
                                f"term off), got {value!r}.")
            object.__setattr__(self, key, number)
        for key in ("shared_draw", "train_fake"):
            if not isinstance(getattr(self, key), bool):
                raise UserError(f"arm {self.name!r}: {key} must be true or false, got {getattr(self, key)!r}.")
        for key in ("tau_ca", "tau_dm"):
            if not isinstance(getattr(self, key), TauRule):
                raise UserError(f"arm {self.name!r}: {key} must be a tau rule, written {{kind: uniform|above_t, "
                                f"lo: 0.0, hi: 1.0}}, got {getattr(self, key)!r}.")
        if self.normaliser not in NORMALISERS:
            raise UserError(f"arm {self.name!r}: normaliser {self.normaliser!r} is unknown; use one of {', '.join(NORMALISERS)}.")
        if self.ca_weight == 0 and self.dm_weight == 0:
            raise UserError(f"arm {self.name!r} switches both CA and DM off; give ca_weight or dm_weight a non-zero value.")
        if (self.dm_weight != 0 or self.gan_weight != 0) and not self.train_fake:
            raise UserError(f"arm {self.name!r} uses DM or a GAN, which need the fake model; set train_fake: true.")

    @property
    def uses_ca(self) -> bool:
        return self.ca_weight != 0

    @property
    def uses_dm(self) -> bool:
        return self.dm_weight != 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Arm":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"arm keys {sorted(unknown)} are unknown; known keys are {sorted(known)}.")
        data = dict(data)
        for key in ("tau_ca", "tau_dm"):
            if isinstance(data.get(key), dict):
                data[key] = _tau_rule(data[key], key)
        return cls(**data)

    def with_overrides(self, **changes) -> "Arm":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise UserError(f"arm keys {sorted(unknown)} are unknown; known keys are {sorted(f.name for f in fields(self))}.")
        for key in ("tau_ca", "tau_dm"):
            if isinstance(changes.get(key), dict):
                changes[key] = _tau_rule({**getattr(self, key).to_dict(), **changes[key]}, key)
        return replace(self, **changes)


def _tau_rule(data: dict, key: str) -> TauRule:
    try:
        return TauRule(**data)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{key}: {str(exc).rstrip('.')}; write it as {{kind: uniform|above_t, lo: 0.0, hi: 1.0}}.") from None


FULL = TauRule("uniform", 0.0, 1.0)
ABOVE_T = TauRule("above_t", 0.0, 1.0)

REGISTRY: dict[str, Arm] = {
    a.name: a
    for a in [
        Arm("coupled", "Original DMD: CA + DM at one shared tau ~ U(0,1) and noise (schedule #1).",
            tau_ca=FULL, tau_dm=FULL, shared_draw=True),
        Arm("decoupled_full", "Independent tau_CA, tau_DM ~ U(0,1) (schedule #2).", tau_ca=FULL, tau_dm=FULL),
        Arm("decoupled_constrained", "tau_CA, tau_DM ~ U(t,1) (schedule #3).", tau_ca=ABOVE_T, tau_dm=ABOVE_T),
        Arm("decoupled_hybrid", "tau_CA ~ U(t,1), tau_DM ~ U(0,1) (schedule #4, the paper's best).",
            tau_ca=ABOVE_T, tau_dm=FULL),
        Arm("ca_only", "CFG augmentation alone, tau_CA ~ U(0,1); fake model trained as an observer.",
            dm_weight=0.0, tau_ca=FULL),
        Arm("dm_only", "Distribution matching alone (alpha = 1), tau_DM ~ U(0,1).", ca_weight=0.0, tau_dm=FULL),
        Arm("ca_meanvar", "CA plus the mean-variance KL regulariser instead of DM.",
            dm_weight=0.0, tau_ca=FULL, meanvar_weight=1.0),
        # DMD2's SDXL weights: 5e-3 for the generator, 1e-2 for the discriminator
        Arm("ca_gan", "CA plus a GAN regulariser on the fake model's features instead of DM.",
            dm_weight=0.0, tau_ca=FULL, gan_weight=5e-3, gan_disc_weight=1e-2),
        # Table 2's two rows: DMD2's full SDXL recipe (coupled DMD + GAN) and the paper's
        # Decoupled-Hybrid trained with the same recipe; they differ in the schedule only
        Arm("dmd2", "DMD2's full recipe: coupled DMD (schedule #1) plus its GAN on the fake's features (5e-3 / 1e-2).",
            tau_ca=FULL, tau_dm=FULL, shared_draw=True, gan_weight=5e-3, gan_disc_weight=1e-2),
        Arm("decoupled_hybrid_gan", "Decoupled-hybrid (schedule #4) plus DMD2's GAN (5e-3 / 1e-2): the paper's Table 2 recipe.",
            tau_ca=ABOVE_T, tau_dm=FULL, gan_weight=5e-3, gan_disc_weight=1e-2),
    ]
}
