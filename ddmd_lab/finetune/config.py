"""The fine-tune's settings: typed, every key declared, unknown or mistyped keys refused.

``make finetune ... SET="lora.rank=8 lr=1e-4 train_guidance=1.5 steps=200"`` (values read
as YAML, dotted keys nest, as make ablation's SET).  Guidances are in the offset form
(objective.py): 0 = no CFG, alpha = 1 + g, for every family.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ddmd_lab.errors import UserError


@dataclass
class FinetuneConfig:
    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 0              # 0 = the distillation run's batch_size
    train_guidance: float = 0.0      # CFG on the student's prediction inside the loss (offset form; 0 = none)
    seed: int = 0
    # the new adapter on the frozen student; alpha defaults to the rank (scale 1), targets to the family's
    # (student.default_targets: attention projections; on the image scales also the ResNet convolutions)
    lora: dict = field(default_factory=lambda: {"rank": 8})
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 50             # the curves (metrics.csv) at guidance 0 and the student's step count
    eval_samples: int = 200          # old classes (image scales: label i % classes) / old prompts (text: at most 64)
    eval_new: int = 100              # samples of the new concept
    sample_guidances: list = field(default_factory=lambda: [0.0, 1.5, 3.0])  # the grids, before and after
    step_offsets: list = field(default_factory=lambda: [-4, 0, 4])           # student steps + these (where >= 1)
    runs_dir: str = ""               # "" = the distillation run's runs_dir
    device: str = ""                 # "" = cuda when available, else cpu
    progress_bar: bool = True

    def __post_init__(self):
        rank = self.lora.get("rank", 0)
        checks = [
            (self.steps >= 1, "steps must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (self.batch_size >= 0, "batch_size must be 0 (the run's) or positive"),
            (self.train_guidance >= 0, "train_guidance must be >= 0 (offset form: 0 = no CFG)"),
            (set(self.lora) <= {"rank", "alpha", "targets"} and isinstance(rank, int) and rank >= 1,
             "lora takes rank (>= 1), alpha and targets, e.g. lora.rank=8"),
            (self.eval_every >= 1 and self.eval_samples >= 1 and self.eval_new >= 1,
             "eval_every, eval_samples and eval_new must be at least 1"),
            (all(isinstance(g, (int, float)) and g >= 0 for g in self.sample_guidances),
             "sample_guidances must be a list of guidances >= 0"),
            (all(isinstance(o, int) for o in self.step_offsets), "step_offsets must be a list of integers"),
            (self.grad_clip > 0, "grad_clip must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"finetune config: {message}.")

    @property
    def rank(self) -> int:
        return int(self.lora["rank"])

    @property
    def lora_alpha(self) -> float:
        return float(self.lora.get("alpha", self.lora["rank"]))

    @property
    def targets(self) -> tuple[str, ...] | None:
        """The modules SET named (None: the family's default, student.default_targets)."""
        return tuple(self.lora["targets"]) if "targets" in self.lora else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_overrides(cls, overrides: dict) -> "FinetuneConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise UserError(f"finetune SET: unknown key(s) {unknown}; known keys are {sorted(known)}.")
        data = {}
        defaults = cls()
        for name, value in overrides.items():
            default = getattr(defaults, name)
            if isinstance(default, dict) and isinstance(value, dict):
                value = {**default, **value}
            data[name] = _coerce(name, value, type(default))
        return cls(**data)


def _coerce(name: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-4 as a string
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"finetune SET: {name} must be {kind.__name__}, got {value!r}.")
    return value
