"""A run's configuration from its files: the scale YAML, the arm (a registry name or a variant in
experiments/arms/), the arm's overrides and the user's (``SET="k=v"``), merged and typed once
(``load_config``); a run folder's config.yaml written and read back (``save_config`` / ``read_config``)."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import yaml

from ddmd_lab.config.sections import RunConfig
from ddmd_lab.core.arms import REGISTRY, Arm
from ddmd_lab.errors import UserError


def experiments_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "experiments"


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


def read_yaml(path: Path) -> dict:
    """A scale or arm file's mapping (empty file: {}); broken YAML stops with one sentence."""
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML ({exc.__class__.__name__}); fix the file.") from None


def load_config(scale: str, arm: str, overrides: dict | None = None, source: str = "--set") -> RunConfig:
    """The scale's YAML, the arm's overrides (a variant file's) and ``overrides`` (the user's: ``source``),
    merged and checked; a bad value is named with the file or ``--set`` it came from."""
    path = experiments_dir() / "scales" / f"{scale}.yaml"
    if not path.is_file():
        raise UserError(f"unknown scale {scale!r}; known scales: {', '.join(known_scales())}.")
    data = read_yaml(path)
    arm_obj, arm_overrides = resolve_arm(arm)
    overrides = dict(overrides or {})
    if "scale" in overrides and overrides["scale"] != scale:  # it would be overwritten by the scale named here
        raise UserError(f"{source}: scale={overrides['scale']!r} is not set with {source}; pick the scale with SCALE= "
                        f"(--scale), here {scale!r}.")
    arm_changes = overrides.pop("arm", None)
    if arm_changes is not None:
        if not isinstance(arm_changes, dict):
            raise UserError(f"{source}: arm={arm_changes!r} is not a mapping of arm keys; change one arm key with "
                            f"arm.<key>=<value> (arm keys are {[f.name for f in fields(Arm)]}), or pick the arm with ARM=.")
        try:
            arm_obj = arm_obj.with_overrides(**arm_changes)
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None
    merged = _merge(_merge(data, arm_overrides), overrides)
    merged.update(scale=scale, arm=arm_obj)
    files = {"scale file": _shown_path(path), "arm file": _shown_path(arms_dir() / f"{arm}.yaml")}
    origins = {**{k: files["scale file"] for k in data}, **{k: files["arm file"] for k in arm_overrides},
               **{k: source for k in overrides}}
    where = " + ".join(dict.fromkeys([files["scale file"]] + ([files["arm file"]] if arm_overrides else [])
                                     + ([source] if overrides else [])))
    return RunConfig.from_dict(merged, where=where, origins=origins)


def _shown_path(path: Path) -> str:
    """A file under experiments/ as the user sees it (experiments/scales/toy2d.yaml)."""
    try:
        return str(path.relative_to(experiments_dir().parent))
    except ValueError:
        return str(path)


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
    spec = read_yaml(path)
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
    except UserError as exc:  # a value the arm does not accept: named with its file
        raise UserError(f"{path}: {exc}") from None
    return arm, dict(spec.get("overrides") or {})
