"""A run's configuration as typed sections, each handed only to the code that needs it.

Users still write one flat set of keys (scale YAML, arm variant overrides, ``SET="alpha=4"``) and a run
folder's config.yaml still holds them flat: ``RunConfig.from_dict`` sorts each key into its section, and
``to_dict`` writes them back in the order they always had, so run folders written before the sections
existed load unchanged.  Every key is declared here with its type, so a misspelt or mistyped key stops the
run with one sentence instead of being silently ignored.

What each key accepts (its type and range: finite, positive, one of a set...) is declared once, beside its
default, as a rule of config/rules.py (``key(default, rule)``), and checked when its section is built
(``check_fields``), before anything loads; ``from_dict`` checks each key first with where its value came
from (the scale or arm file, ``--set``, a run's config.yaml).  Checks of several keys together stay in the
sections' ``__post_init__``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from ddmd_lab.config.rules import (ConfigError, Devices, Flag, Lora, Number, Numbers, OneOf, Text, check_fields, key,
                                   parse_value, rule_of)
from ddmd_lab.core.arms import REGISTRY, Arm
from ddmd_lab.errors import UserError

# Lightning's names (the config layer does not import Lightning; tests/test_config_fuzz.py pins these lists to
# the installed Lightning's own: lightning_fabric.connector's precision inputs, StrategyRegistry, AcceleratorRegistry)
PRECISIONS = ("32-true", "32", "64-true", "64", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true",
              "transformer-engine", "transformer-engine-float16")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
LIGHTNING_STRATEGIES = (
    "ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_find_unused_parameters_false", "ddp_find_unused_parameters_true",
    "ddp_spawn_find_unused_parameters_false", "ddp_spawn_find_unused_parameters_true",
    "ddp_fork_find_unused_parameters_false", "ddp_fork_find_unused_parameters_true",
    "ddp_notebook_find_unused_parameters_false", "ddp_notebook_find_unused_parameters_true", "deepspeed",
    "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3",
    "deepspeed_stage_3_offload", "deepspeed_stage_3_offload_nvme", "fsdp_cpu_offload", "single_device", "single_xla",
    "xla_debug", "xla", "single_tpu")
STRATEGIES = ("auto", "ddp", "fsdp") + LIGHTNING_STRATEGIES
# what strategy=fsdp runs under: Lightning's ModelParallelStrategy takes these precisions (no 16-mixed scaler)
FSDP_PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-true")
SEED_MAX = 2**32 - 1  # Lightning's seed_everything replaces a seed outside [0, 2**32 - 1] by a random one


def _check(checks: list[tuple[bool, str]]) -> None:
    """Checks of several keys together (one key's range is its rule)."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{message}.")


@dataclass(frozen=True)
class RunSettings:
    """Which run it is and where it writes."""
    scale: str = key("toy2d", Text("a scale name"))
    seed: int = key(0, Number(0, SEED_MAX, integer=True))
    wandb: str = key("offline", OneOf(("offline", "online", "disabled")))  # W&B's own mode names
    runs_dir: str = key("runs", Text("a folder (a non-empty string)"))
    cache_dir: str = key("artifacts", Text("a folder (a non-empty string)"))
    checkpoint_every: int = key(500, Number(0, integer=True, note="in steps; 0 = only the final checkpoint"))
    progress_bar: bool = key(True, Flag())

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class Schedule:
    """How long the run is and how its updates alternate: one "step" = one critic update; the generator is
    updated on every ttur-th step (DMD2's TTUR), so a run of S steps makes ceil(S / ttur) generator updates."""
    steps: int = key(2000, Number(1, integer=True))
    ttur: int = key(5, Number(1, integer=True))
    batch_size: int = key(256, Number(1, integer=True))

    def __post_init__(self):
        check_fields(self)

    @property
    def generator_steps(self) -> int:
        return -(-self.steps // self.ttur)


@dataclass(frozen=True)
class StudentSampling:
    """The few-step generator's times and how it moves between them, the same in training (backward
    simulation) and in use."""
    student_steps: int = key(4, Number(1, integer=True))
    # Explicit student times in the paper's convention (empty: shift(k / student_steps)).
    # VP models cannot start at t = 0 (SDXL's DMD2 times are DDPM 999, 749, 499, 249).
    student_times: list = key(rule=Numbers(Number(0, 1, hi_open=True), what="times of the student"), factory=list)
    # renoise = x0 re-noised with fresh noise (DMD2; diffusers' LCMScheduler / stochastic flow Euler),
    # euler = the deterministic flow step (Z-Image-Turbo's ZImagePipeline with its default scheduler).
    student_sampler: str = key("renoise", OneOf(("renoise", "euler")))
    # time shift s (1 = none), of the student's times and of every tau draw: t -> 1 - s(1-t) / (1 + (s-1)(1-t)).
    # Bounded to [1e-3, 1e3]: beyond, every time is pressed against one end of [0, 1] (s = 1e3 puts t = 0.5 at
    # 0.0005), and below ~1e-7 float32 rounds 1 + (s-1) to 0 and the shift divides by it (NaN times)
    shift: float = key(1.0, Number(1e-3, 1e3, note="1 = none"))

    def __post_init__(self):
        check_fields(self)
        _check([
            (not self.student_times or (len(self.student_times) == self.student_steps and self.student_times[0] >= 0
                                        and all(a < b for a, b in zip(self.student_times, self.student_times[1:] + [1.0]))),
             "student_times must list student_steps increasing times in [0, 1)"),
        ])


@dataclass(frozen=True)
class Objective:
    """The distillation objective's numbers (which terms and tau rules: the arm)."""
    # standard CFG scale: uncond + alpha*(cond - uncond).  >= 0: 0 is the unconditional prediction, the end of
    # the CFG family; a negative alpha reaches past it, away from the condition (anti-guidance no arm studies,
    # most likely a sign slip), so it is refused; 0 <= alpha < 1 with CA on is allowed but warned (training/run.py)
    alpha: float = key(3.0, Number(0, note="the CFG scale; 0 = unconditional, 1 = no guidance"))
    tau_clamp: list = key(rule=Numbers(Number(0, 1), length=2, what="[lo, hi]"), factory=lambda: [0.02, 0.98])  # DMD2's
    # the normalisers' guard against dividing by ~0: small against mean|x - x0| (of the data's scale, ~0.1 to 1);
    # above 1e-2 it would be a visible part of the normaliser and shrink every update, so it is refused
    normaliser_eps: float = key(1e-5, Number(0, 1e-2, lo_open=True))
    critic_target: str = key("x0", OneOf(("x0", "velocity")))
    # the target mean: the KL squares m - mu, which leaves float32's range for a huge mu (1e30 does); +-1e3 spans any data
    meanvar_mu: float = key(0.0, Number(-1e3, 1e3, note="the target mean of the samples"))
    # the target variance: the KL divides by it, so a tiny one makes its gradient (and its norm, a sum of squares)
    # overflow float32 (1e-30 does); [1e-6, 1e6] spans any data's variance (images ~0.3, latents ~1, toy2d 1.27)
    meanvar_var: float = key(1.0, Number(1e-6, 1e6))
    meanvar_scope: str = key("sample", OneOf(("sample", "batch")))  # sample (per image) | batch (per feature)

    def __post_init__(self):
        check_fields(self)
        _check([(self.tau_clamp[0] <= self.tau_clamp[1], "tau_clamp must be [lo, hi] with 0 <= lo <= hi <= 1")])


@dataclass(frozen=True)
class Optimisation:
    """What is trained and how: AdamW per model, clipping, the non-finite guard, LoRA, master weights."""
    # AdamW moves each weight by about lr per step: above 1 every weight jumps past its own scale at once
    lr_generator: float = key(1e-4, Number(0, 1, lo_open=True))
    lr_fake: float = key(1e-4, Number(0, 1, lo_open=True))
    betas: list = key(rule=Numbers(Number(0, 1, hi_open=True), length=2, what="AdamW's [beta1, beta2]"),
                      factory=lambda: [0.9, 0.999])
    # AdamW's decoupled decay multiplies each weight by 1 - lr * weight_decay per step: in [0, 1] it never flips a sign
    weight_decay: float = key(0.01, Number(0, 1))
    # the global gradient norm's cap; > 0: clip_grad_norm_ with 0 would zero every gradient (nothing learnt)
    grad_clip: float = key(10.0, Number(0, lo_open=True, note="a huge value clips nothing"))
    max_nonfinite_in_row: int = key(20, Number(1, integer=True))
    # the run stops (NonFiniteError) once more than this share of the generator and critic updates attempted
    # so far were skipped as non-finite (judged from DistillModule.SHARE_AFTER_UPDATES updates on); 1 = never
    max_skipped_share: float = key(0.1, Number(0, 1))
    # exponential moving average of the generator's weights (0 = off): what is evaluated, sampled and
    # exported as the student; the decay ramps up as min(ema_decay, (1 + n) / (10 + n)) over its first
    # n updates, so the average does not remember the teacher-initialised weights for long
    ema_decay: float = key(0.0, Number(0, 1, hi_open=True, note="0 = no EMA"))
    # LoRA on one shared frozen base (backbones/lora.py): {rank: 0} is full fine-tuning of two copies
    lora: dict = key(rule=Lora(), factory=lambda: {"rank": 0})
    gradient_checkpointing: bool = key(False, Flag())  # diffusers' own, on the trained networks
    # dtype of what is trained (generator, fake, LoRA adapters, discriminator head) and so of its optimiser
    # states, whatever teacher.dtype is: float32 master weights under a bfloat16 frozen teacher / LoRA base
    master_dtype: str = key("float32", OneOf(("float32", "bfloat16")))

    def __post_init__(self):
        check_fields(self)

    @property
    def lora_rank(self) -> int:
        return int(self.lora.get("rank", 0))


@dataclass(frozen=True)
class Evaluation:
    """What is measured and logged, and how often."""
    eval_every: int = key(100, Number(1, integer=True, note="in steps"))
    # per-step training logs (losses, update norms) every this many optimiser steps
    log_every: int = key(10, Number(1, integer=True))
    eval_samples: int = key(2000, Number(1, integer=True))
    # CA/DM diagnostics per tau bin (method/diagnostics.py) every this many generator steps and at the last one; 0 = off
    diagnostics_every: int = key(10, Number(0, integer=True, note="0 = off"))
    # Inception FID at the end of a run on this many samples (0 = none; FID fits a covariance, so at least 2)
    fid_samples: int = key(0, Number(0, integer=True, note="0 = none"))
    # a run's score: the mean of each metric over its last score_last evaluations (the final value is one
    # reading of an oscillating path); tables and verdicts use it
    score_last: int = key(1, Number(1, integer=True, note="the number of last evaluations averaged"))

    def __post_init__(self):
        check_fields(self)
        _check([(self.fid_samples != 1, "fid_samples must be 0 (none) or at least 2 (FID fits a covariance), got 1")])


@dataclass(frozen=True)
class Parallel:
    """Where the run's processes go and how the models are laid out on them (parallel/strategies.py)."""
    accelerator: str = key("cpu", OneOf(ACCELERATORS))
    devices: Any = key(1, Devices())
    num_nodes: int = key(1, Number(1, integer=True))
    # "ddp" averages each optimiser's own gradients after its backward (no DDP wrapper), "fsdp" shards each
    # model block by block; other names go to Lightning as they are.
    strategy: str = key("auto", OneOf(STRATEGIES, described="auto, ddp, fsdp or another of Lightning's strategy names ("
                                      + ", ".join(LIGHTNING_STRATEGIES) + ")"))
    # under fsdp: the frozen teacher sharded like the trained models, or replicate(d)
    fsdp_teacher: str = key("shard", OneOf(("shard", "replicate")))
    # Lightning's precision, e.g. "bf16-mixed" (autocast; the math stays float32/64)
    precision: str = key("32-true", OneOf(PRECISIONS, numbers_as_names=True,
                                          described="one of Lightning's precisions " + ", ".join(PRECISIONS)))
    # seconds a collective may wait for the other ranks before the run stops (a dead rank, or one evaluating
    # alone); torch's and Lightning's default, 30 minutes, written out so a long end-of-run FID can raise it
    pg_timeout: float = key(1800.0, Number(0, lo_open=True, note="seconds"))

    def __post_init__(self):
        check_fields(self)
        d = self.devices
        _check([(self.strategy != "fsdp" or str(self.precision) in FSDP_PRECISIONS,
                 f"strategy=fsdp takes precision {', '.join(FSDP_PRECISIONS)} (FSDP2 casts the gathered weights itself; "
                 f"no gradient scaler), not {self.precision!r}: use precision=bf16-mixed"),
                (self.accelerator != "cpu" or d == "auto" or isinstance(d, int) and d >= 1
                 or isinstance(d, str) and d.strip().isdigit(),
                 f"accelerator=cpu takes devices as a number of processes (or auto), not {d!r}; "
                 "device indices and -1 are for GPUs")])


# (section name, its class) in the order of the attributes; teacher / data are the scale's own dicts
SECTIONS = (("run", RunSettings), ("schedule", Schedule), ("student", StudentSampling), ("objective", Objective),
            ("optimisation", Optimisation), ("evaluation", Evaluation), ("parallel", Parallel))
SECTION_OF = {f.name: name for name, cls in SECTIONS for f in fields(cls)}
SECTION_CLASS = dict(SECTIONS)
# the flat keys in the order config.yaml has always written them
KEY_ORDER = ("scale", "arm", "seed", "steps", "ttur", "batch_size", "alpha", "shift", "student_steps", "student_times",
             "student_sampler", "tau_clamp", "normaliser_eps", "critic_target", "meanvar_mu", "meanvar_var",
             "meanvar_scope", "lr_generator", "lr_fake", "betas", "weight_decay", "grad_clip", "max_nonfinite_in_row",
             "max_skipped_share", "ema_decay",              "eval_every", "log_every", "eval_samples", "diagnostics_every", "fid_samples", "score_last",
             "checkpoint_every", "wandb",
             "runs_dir", "cache_dir", "accelerator", "devices", "strategy", "fsdp_teacher", "lora", "precision",
             "gradient_checkpointing", "master_dtype", "num_nodes", "progress_bar", "pg_timeout", "teacher", "data")
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
        _check([(not (self.parallel.strategy == "fsdp" and self.optimisation.lora_rank
                      and self.parallel.fsdp_teacher == "replicate"),
                 "strategy=fsdp with LoRA shards the one base the teacher and both adapters share, so it cannot keep "
                 "the teacher whole: set fsdp_teacher=shard (or use strategy=ddp)")])

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
    def from_dict(cls, data: dict, where: str = "config", origins: dict | None = None) -> "RunConfig":
        """A config from flat keys, each checked by its key's rule; a bad value is named with where it came
        from (``origins``: key -> its file or ``--set``, where the caller knows; else ``where``)."""
        data, origins = dict(data), origins or {}
        unknown = sorted(set(data) - KNOWN_KEYS)
        if unknown:
            raise UserError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(KNOWN_KEYS)}.")
        for name in data:
            source = origins.get(name, where)
            if name == "arm":
                if isinstance(data[name], dict):
                    try:
                        data[name] = Arm.from_dict(data[name])
                    except UserError as exc:
                        raise UserError(f"{source}: {exc}") from None
                elif not isinstance(data[name], Arm):
                    raise ConfigError(f"arm must be an arm's mapping of keys (as config.yaml writes it), got {data[name]!r}.",
                                      source)
            elif name in ("teacher", "data"):
                if not isinstance(data[name], dict):
                    raise ConfigError(f"{name} must be a mapping of the scale's {name} settings, e.g. "
                                      f"{name}={{key: value}}, got {data[name]!r}.", source)
            else:
                data[name] = parse_value(name, data[name], rule_of(SECTION_CLASS[SECTION_OF[name]], name), source)
        try:
            return cls.of(**data)
        except ConfigError as exc:  # keys that do not fit together: named with every source
            raise ConfigError(exc.sentence, where) from None
