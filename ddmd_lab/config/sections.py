"""A run's configuration as typed sections, each handed only to the code that needs it.

Users still write one flat set of keys (scale YAML, arm variant overrides, ``SET="alpha=4"``) and a run
folder's config.yaml still holds them flat: ``RunConfig.from_dict`` sorts each key into its section, and
``to_dict`` writes them back in the order they always had, so run folders written before the sections
existed load unchanged.  Every key is declared here with its type, so a misspelt or mistyped key stops the
run with one sentence instead of being silently ignored.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from ddmd_lab.core.arms import REGISTRY, Arm
from ddmd_lab.errors import UserError


def _check(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise UserError(f"config: {message}.")


@dataclass(frozen=True)
class RunSettings:
    """Which run it is and where it writes."""
    scale: str = "toy2d"
    seed: int = 0
    wandb: str = "offline"  # offline | online | disabled (W&B's own mode names)
    runs_dir: str = "runs"
    cache_dir: str = "artifacts"
    checkpoint_every: int = 500  # in steps; 0 = only the final checkpoint
    progress_bar: bool = True

    def __post_init__(self):
        _check([(self.wandb in ("offline", "online", "disabled"), "wandb must be offline, online or disabled")])


@dataclass(frozen=True)
class Schedule:
    """How long the run is and how its updates alternate: one "step" = one critic update; the generator is
    updated on every ttur-th step (DMD2's TTUR), so a run of S steps makes ceil(S / ttur) generator updates."""
    steps: int = 2000
    ttur: int = 5
    batch_size: int = 256

    def __post_init__(self):
        _check([(self.steps >= 1, "steps must be at least 1"), (self.ttur >= 1, "ttur must be at least 1"),
                (self.batch_size >= 1, "batch_size must be at least 1")])

    @property
    def generator_steps(self) -> int:
        return -(-self.steps // self.ttur)


@dataclass(frozen=True)
class StudentSampling:
    """The few-step generator's times and how it moves between them, the same in training (backward
    simulation) and in use."""
    student_steps: int = 4
    # Explicit student times in the paper's convention (empty: shift(k / student_steps)).
    # VP models cannot start at t = 0 (SDXL's DMD2 times are DDPM 999, 749, 499, 249).
    student_times: list = field(default_factory=list)
    # renoise = x0 re-noised with fresh noise (DMD2; diffusers' LCMScheduler / stochastic flow Euler),
    # euler = the deterministic flow step (Z-Image-Turbo's ZImagePipeline with its default scheduler).
    student_sampler: str = "renoise"
    shift: float = 1.0  # time shift s (1 = none), of the student's times and of every tau draw

    def __post_init__(self):
        _check([
            (self.student_steps >= 1, "student_steps must be at least 1"),
            (self.shift > 0, "shift must be positive"),
            (self.student_sampler in ("renoise", "euler"), "student_sampler must be renoise or euler"),
            (not self.student_times or (len(self.student_times) == self.student_steps and self.student_times[0] >= 0
                                        and all(a < b for a, b in zip(self.student_times, self.student_times[1:] + [1.0]))),
             "student_times must list student_steps increasing times in [0, 1)"),
        ])


@dataclass(frozen=True)
class Objective:
    """The distillation objective's numbers (which terms and tau rules: the arm)."""
    alpha: float = 3.0  # standard CFG scale: uncond + alpha*(cond - uncond)
    tau_clamp: list = field(default_factory=lambda: [0.02, 0.98])  # DMD2's clamp
    normaliser_eps: float = 1e-5
    critic_target: str = "x0"  # x0 | velocity
    meanvar_mu: float = 0.0
    meanvar_var: float = 1.0
    meanvar_scope: str = "sample"  # sample (per image) | batch (per feature)

    def __post_init__(self):
        _check([
            (len(self.tau_clamp) == 2 and 0 <= self.tau_clamp[0] <= self.tau_clamp[1] <= 1,
             "tau_clamp must be [lo, hi] with 0 <= lo <= hi <= 1"),
            (self.critic_target in ("x0", "velocity"), "critic_target must be x0 or velocity"),
            (self.meanvar_scope in ("sample", "batch"), "meanvar_scope must be sample or batch"),
        ])


@dataclass(frozen=True)
class Optimisation:
    """What is trained and how: AdamW per model, clipping, the non-finite guard, LoRA, master weights."""
    lr_generator: float = 1e-4
    lr_fake: float = 1e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    grad_clip: float = 10.0
    max_nonfinite_in_row: int = 20
    # exponential moving average of the generator's weights (0 = off): what is evaluated, sampled and
    # exported as the student; the decay ramps up as min(ema_decay, (1 + n) / (10 + n)) over its first
    # n updates, so the average does not remember the teacher-initialised weights for long
    ema_decay: float = 0.0
    # LoRA on one shared frozen base (backbones/lora.py): {rank: 0} is full fine-tuning of two copies
    lora: dict = field(default_factory=lambda: {"rank": 0})
    gradient_checkpointing: bool = False  # diffusers' own, on the trained networks
    # dtype of what is trained (generator, fake, LoRA adapters, discriminator head) and so of its optimiser
    # states, whatever teacher.dtype is: float32 master weights under a bfloat16 frozen teacher / LoRA base
    master_dtype: str = "float32"

    def __post_init__(self):
        _check([
            (self.master_dtype in ("float32", "bfloat16"), "master_dtype must be float32 or bfloat16"),
            (0.0 <= self.ema_decay < 1.0, "ema_decay must be in [0, 1) (0 = no EMA)"),
            (set(self.lora) <= {"rank", "alpha", "targets"} and int(self.lora.get("rank", 0)) >= 0,
             "lora takes rank (0 = off), alpha and targets, e.g. lora={rank: 16, alpha: 16}"),
        ])

    @property
    def lora_rank(self) -> int:
        return int(self.lora.get("rank", 0))


@dataclass(frozen=True)
class Evaluation:
    """What is measured and logged, and how often."""
    eval_every: int = 100  # in steps
    log_every: int = 10  # per-step training logs (losses, update norms) every this many optimiser steps
    eval_samples: int = 2000
    # CA/DM diagnostics per tau bin (method/diagnostics.py) every this many generator steps and at the last one; 0 = off
    diagnostics_every: int = 10
    fid_samples: int = 0  # Inception FID at the end of a run on this many samples (0 = none)
    # a run's score: the mean of each metric over its last score_last evaluations (the final value is one
    # reading of an oscillating path); tables and verdicts use it
    score_last: int = 1

    def __post_init__(self):
        _check([(self.eval_every >= 1 and self.log_every >= 1, "eval_every and log_every must be at least 1"),
                (self.score_last >= 1, "score_last must be at least 1 (the number of last evaluations averaged)"),
                (self.diagnostics_every >= 0, "diagnostics_every must be 0 (off) or a number of generator steps")])


@dataclass(frozen=True)
class Parallel:
    """Where the run's processes go and how the models are laid out on them (parallel/strategies.py)."""
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    # "ddp" averages each optimiser's own gradients after its backward (no DDP wrapper), "fsdp" shards each
    # model block by block; other names go to Lightning as they are.
    strategy: str = "auto"
    fsdp_teacher: str = "shard"  # under fsdp: the frozen teacher sharded like the trained models, or replicate(d)
    precision: str = "32-true"  # Lightning's precision, e.g. "bf16-mixed" (autocast; the math stays float32/64)

    def __post_init__(self):
        _check([(self.fsdp_teacher in ("shard", "replicate"), "fsdp_teacher must be shard or replicate")])


# (section name, its class) in the order of the attributes; teacher / data are the scale's own dicts
SECTIONS = (("run", RunSettings), ("schedule", Schedule), ("student", StudentSampling), ("objective", Objective),
            ("optimisation", Optimisation), ("evaluation", Evaluation), ("parallel", Parallel))
SECTION_OF = {f.name: name for name, cls in SECTIONS for f in fields(cls)}
# the flat keys in the order config.yaml has always written them
KEY_ORDER = ("scale", "arm", "seed", "steps", "ttur", "batch_size", "alpha", "shift", "student_steps", "student_times",
             "student_sampler", "tau_clamp", "normaliser_eps", "critic_target", "meanvar_mu", "meanvar_var",
             "meanvar_scope", "lr_generator", "lr_fake", "betas", "weight_decay", "grad_clip", "max_nonfinite_in_row",
             "ema_decay",              "eval_every", "log_every", "eval_samples", "diagnostics_every", "fid_samples", "score_last",
             "checkpoint_every", "wandb",
             "runs_dir", "cache_dir", "accelerator", "devices", "strategy", "fsdp_teacher", "lora", "precision",
             "gradient_checkpointing", "master_dtype", "num_nodes", "progress_bar", "teacher", "data")
KNOWN_KEYS = frozenset(KEY_ORDER)
assert KNOWN_KEYS == set(SECTION_OF) | {"arm", "teacher", "data"}, "every section key has its place in KEY_ORDER"


@dataclass(frozen=True)
class RunConfig:
    """A resolved run: the arm, the typed sections, and the scale's own teacher / data settings (dicts that
    the scale checks against its defaults, scales.*.teacher_settings / data_settings)."""
    arm: Arm = field(default_factory=lambda: REGISTRY["decoupled_hybrid"])
    run: RunSettings = field(default_factory=RunSettings)
    schedule: Schedule = field(default_factory=Schedule)
    student: StudentSampling = field(default_factory=StudentSampling)
    objective: Objective = field(default_factory=Objective)
    optimisation: Optimisation = field(default_factory=Optimisation)
    evaluation: Evaluation = field(default_factory=Evaluation)
    parallel: Parallel = field(default_factory=Parallel)
    teacher: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)

    def __post_init__(self):
        _check([(not (self.parallel.strategy == "fsdp" and self.optimisation.lora_rank),
                 "strategy=fsdp does not take LoRA (the adapters sit inside the frozen base's shards, so each backward "
                 "would reduce-scatter a gradient buffer the size of the base); LoRA holds one base and fits one GPU "
                 "(make plan): use strategy=ddp, or lora.rank=0 for sharded full fine-tuning")])

    @classmethod
    def of(cls, **flat) -> "RunConfig":
        """A config from flat keys (``RunConfig.of(steps=10, alpha=4)``), the rest at their defaults."""
        return cls().replace(**flat)

    def replace(self, **flat) -> "RunConfig":
        """This config with flat keys changed, each in its section (``cfg.replace(seed=1)``)."""
        unknown = sorted(set(flat) - KNOWN_KEYS)
        if unknown:
            raise UserError(f"config: unknown key(s) {unknown}; known keys are {sorted(KNOWN_KEYS)}.")
        top = {k: flat.pop(k) for k in ("arm", "teacher", "data") if k in flat}
        sections = {}
        for key, value in flat.items():
            sections.setdefault(SECTION_OF[key], {})[key] = value
        return replace(self, **top, **{name: replace(getattr(self, name), **changes) for name, changes in sections.items()})

    def to_dict(self) -> dict:
        """The flat keys, in config.yaml's order (the arm spelled out)."""
        out = {}
        for key in KEY_ORDER:
            if key == "arm":
                out[key] = self.arm.to_dict()
            elif key in ("teacher", "data"):
                out[key] = dict(getattr(self, key))
            else:
                value = getattr(getattr(self, SECTION_OF[key]), key)
                out[key] = list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value
        return out

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> "RunConfig":
        data = dict(data)
        unknown = sorted(set(data) - KNOWN_KEYS)
        if unknown:
            raise UserError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(KNOWN_KEYS)}.")
        if isinstance(data.get("arm"), dict):
            data["arm"] = Arm.from_dict(data["arm"])
        for name in data:  # type check against the declared default's type
            if name not in ("arm", "devices"):
                data[name] = _coerce(name, data[name], _default_type(name), where)
        return cls.of(**data)


def _default_type(key: str) -> type:
    if key in ("teacher", "data"):
        return dict
    return type(getattr(DEFAULTS_BY_SECTION[SECTION_OF[key]], key))


def _coerce(name: str, value: Any, kind: type, where: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-4 as a string
        except ValueError:
            pass
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"{where}: {name} must be {kind.__name__}, got {value!r}.")
    return value


DEFAULTS_BY_SECTION = {name: cls() for name, cls in SECTIONS}
