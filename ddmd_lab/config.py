"""Run configuration: scale YAML + arm (+ the arm's overrides) + user overrides.

Every key is declared here with its type, so a misspelt or mistyped key stops
the run with one sentence instead of being silently ignored.  The resolved
config (with the arm spelled out) is what a run folder's config.yaml holds,
and loading that file gives back the same run.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ddmd_lab.core.arms import REGISTRY, Arm
from ddmd_lab.errors import UserError


@dataclass
class RunConfig:
    scale: str = "toy2d"
    arm: Arm = field(default_factory=lambda: REGISTRY["decoupled_hybrid"])
    seed: int = 0
    # -- length and cadence: one "step" = one critic update; the generator is
    # updated on every ttur-th step (DMD2's TTUR), so a run of S steps makes
    # ceil(S / ttur) generator updates.
    steps: int = 2000
    ttur: int = 5
    batch_size: int = 256
    # -- the objective
    alpha: float = 3.0  # standard CFG scale: uncond + alpha*(cond - uncond)
    shift: float = 1.0  # time shift s (1 = none)
    student_steps: int = 4
    # Explicit student times in the paper's convention (empty: shift(k / student_steps)).
    # VP models cannot start at t = 0 (SDXL's DMD2 times are DDPM 999, 749, 499, 249).
    student_times: list = field(default_factory=list)
    # How the student moves between its times, the same in training (backward simulation) and in use:
    # renoise = x0 re-noised with fresh noise (DMD2; diffusers' LCMScheduler / stochastic flow Euler),
    # euler = the deterministic flow step (Z-Image-Turbo's ZImagePipeline with its default scheduler).
    student_sampler: str = "renoise"
    tau_clamp: list = field(default_factory=lambda: [0.02, 0.98])  # DMD2's clamp
    normaliser_eps: float = 1e-5
    critic_target: str = "x0"  # x0 | velocity
    meanvar_mu: float = 0.0
    meanvar_var: float = 1.0
    meanvar_scope: str = "sample"  # sample (per image) | batch (per feature)
    # -- optimisation
    lr_generator: float = 1e-4
    lr_fake: float = 1e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    grad_clip: float = 10.0
    max_nonfinite_in_row: int = 20
    # -- evaluation, logging, outputs
    eval_every: int = 100  # in steps
    log_every: int = 10  # per-step training logs (losses, update norms) every this many optimiser steps
    eval_samples: int = 2000
    # CA/DM diagnostics per tau bin (diagnostics.py) every this many generator steps and at the last one; 0 = off
    diagnostics_every: int = 10
    fid_samples: int = 0  # Inception FID at the end of a run on this many samples (0 = none)
    checkpoint_every: int = 500  # in steps; 0 = only the final checkpoint
    wandb: str = "offline"  # offline | online | disabled (W&B's own mode names)
    runs_dir: str = "runs"
    cache_dir: str = "artifacts"
    accelerator: str = "cpu"
    devices: Any = 1
    # Data parallelism (sharding.py): "ddp" averages each optimiser's own gradients after its backward
    # (no DDP wrapper), "fsdp" shards each model block by block; other names go to Lightning as they are.
    strategy: str = "auto"
    fsdp_teacher: str = "shard"  # under fsdp: the frozen teacher sharded like the trained models, or replicate(d)
    # LoRA on one shared frozen base (lora.py): {rank: 0} is full fine-tuning of two copies
    lora: dict = field(default_factory=lambda: {"rank": 0})
    precision: str = "32-true"  # Lightning's precision, e.g. "bf16-mixed" (autocast; the math stays float32/64)
    gradient_checkpointing: bool = False  # diffusers' own, on the trained networks
    # dtype of what is trained (generator, fake, LoRA adapters, discriminator head) and so of its optimiser
    # states, whatever teacher.dtype is: float32 master weights under a bfloat16 frozen teacher / LoRA base
    master_dtype: str = "float32"
    num_nodes: int = 1
    progress_bar: bool = True
    teacher: dict = field(default_factory=dict)  # scale-specific teacher settings
    data: dict = field(default_factory=dict)  # scale-specific data settings

    def __post_init__(self):
        checks = [
            (self.steps >= 1, "steps must be at least 1"),
            (self.ttur >= 1, "ttur must be at least 1"),
            (self.student_steps >= 1, "student_steps must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.eval_every >= 1 and self.log_every >= 1, "eval_every and log_every must be at least 1"),
            (self.diagnostics_every >= 0, "diagnostics_every must be 0 (off) or a number of generator steps"),
            (self.shift > 0, "shift must be positive"),
            (len(self.tau_clamp) == 2 and 0 <= self.tau_clamp[0] <= self.tau_clamp[1] <= 1,
             "tau_clamp must be [lo, hi] with 0 <= lo <= hi <= 1"),
            (self.critic_target in ("x0", "velocity"), "critic_target must be x0 or velocity"),
            (self.student_sampler in ("renoise", "euler"), "student_sampler must be renoise or euler"),
            (self.master_dtype in ("float32", "bfloat16"), "master_dtype must be float32 or bfloat16"),
            (not self.student_times or (len(self.student_times) == self.student_steps and self.student_times[0] >= 0
                                        and all(a < b for a, b in zip(self.student_times, self.student_times[1:] + [1.0]))),
             "student_times must list student_steps increasing times in [0, 1)"),
            (self.meanvar_scope in ("sample", "batch"), "meanvar_scope must be sample or batch"),
            (self.wandb in ("offline", "online", "disabled"), "wandb must be offline, online or disabled"),
            (set(self.lora) <= {"rank", "alpha", "targets"} and int(self.lora.get("rank", 0)) >= 0,
             "lora takes rank (0 = off), alpha and targets, e.g. lora={rank: 16, alpha: 16}"),
            (self.fsdp_teacher in ("shard", "replicate"), "fsdp_teacher must be shard or replicate"),
            (not (self.strategy == "fsdp" and int(self.lora.get("rank", 0))),
             "strategy=fsdp does not take LoRA (the adapters sit inside the frozen base's shards, so each backward "
             "would reduce-scatter a gradient buffer the size of the base); LoRA holds one base and fits one GPU "
             "(make plan): use strategy=ddp, or lora.rank=0 for sharded full fine-tuning"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"config: {message}.")

    @property
    def generator_steps(self) -> int:
        return -(-self.steps // self.ttur)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["arm"] = self.arm.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> "RunConfig":
        data = dict(data)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UserError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}.")
        if isinstance(data.get("arm"), dict):
            data["arm"] = Arm.from_dict(data["arm"])
        for name in data:  # type check against the declared default's type
            if name not in ("arm", "devices"):
                data[name] = _coerce(name, data[name], type(getattr(_DEFAULTS, name)), where)
        return cls(**data)


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


_DEFAULTS = RunConfig()


def experiments_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "experiments"


def known_scales() -> list[str]:
    return sorted(p.stem for p in (experiments_dir() / "scales").glob("*.yaml"))


def parse_overrides(items: list[str]) -> dict:
    """``key=value`` strings (value parsed as YAML; dotted keys nest)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value; write e.g. --set alpha=4.")
        key, raw = item.split("=", 1)
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def load_config(scale: str, arm: str, overrides: dict | None = None) -> RunConfig:
    path = experiments_dir() / "scales" / f"{scale}.yaml"
    if not path.is_file():
        raise UserError(f"unknown scale {scale!r}; known scales: {', '.join(known_scales())}.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML ({exc.__class__.__name__}); fix the file.") from None
    arm_obj, arm_overrides = resolve_arm(arm)
    overrides = dict(overrides or {})
    arm_changes = overrides.pop("arm", None)
    if arm_changes:
        arm_obj = arm_obj.with_overrides(**arm_changes)
    merged = _merge(_merge(data, arm_overrides), overrides)
    merged.update(scale=scale, arm=arm_obj)
    return RunConfig.from_dict(merged, where=f"{path.name} + overrides")


def scale_settings(given: dict, defaults: dict, what: str) -> dict:
    """A scale's ``teacher`` / ``data`` dict over its defaults; unknown keys are an error."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise UserError(f"{what}: unknown key(s) {unknown}; known: {sorted(defaults)}.")
    return {**defaults, **given}


def _merge(base: dict, changes: dict) -> dict:
    """``changes`` over ``base``; dict values (teacher, data, lora) merge key by key, so
    --set teacher.source=... keeps the YAML's teacher.family."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_config(path: Path) -> RunConfig:
    return RunConfig.from_dict(yaml.safe_load(Path(path).read_text()), where=str(path))


# -- arm variants: experiments/arms/<name>.yaml (a registry arm changed by its keys, plus run overrides)

def arms_dir() -> Path:
    return experiments_dir() / "arms"


def known_arm_names(directory: Path | None = None) -> list[str]:
    directory = directory or arms_dir()
    variants = sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []
    return sorted(REGISTRY) + [v for v in variants if v not in REGISTRY]


def resolve_arm(name: str, directory: Path | None = None) -> tuple[Arm, dict]:
    """Return the arm and the run-config overrides it carries.

    A registry name gives the arm itself; a file experiments/arms/<name>.yaml
    gives ``base`` (a registry arm) changed by its ``arm`` keys, plus the
    ``overrides`` it applies to the run config (e.g. student_steps: 1).
    """
    directory = directory or arms_dir()
    if name in REGISTRY:
        return REGISTRY[name], {}
    path = directory / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown arm {name!r}; known arms: {', '.join(known_arm_names(directory))}.")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML ({exc.__class__.__name__}); fix the file.") from None
    extra = set(spec) - {"base", "arm", "overrides", "description"}
    if extra or "base" not in spec:
        raise UserError(f"{path}: an arm variant needs 'base' and may have 'arm', 'overrides', 'description'; found {sorted(spec)}.")
    base, _ = resolve_arm(spec["base"], directory)
    changes = dict(spec.get("arm") or {})
    changes.setdefault("description", spec.get("description", base.description))
    try:
        arm = base.with_overrides(name=name, **changes)
    except TypeError as exc:
        raise UserError(f"{path}: {exc}; arm keys are {[f.name for f in fields(Arm)]}.") from None
    return arm, dict(spec.get("overrides") or {})
