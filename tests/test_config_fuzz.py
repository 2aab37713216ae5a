"""No bad value looks like success (issue 25): every config key, fuzzed.

The keys come from the config itself -- every field of every section (config.sections.SECTIONS, with the
rule it declares) and every field of an arm (core.arms.Arm) -- so a new key is fuzzed without a line here.
Each value goes in the way a user's does (``--set key=value``: parse_overrides + load_config) and must
either stop with one sentence (a UserError naming the key and ``--set``, no newline) or be accepted; an
accepted value of a key that reaches the training math (PASSIVE below lists the ones that do not) then
trains a few steps of toy2d with finite losses, gradient norms and samples and no skipped update.

Values: for a number NaN, inf, -1, 0, 1e-30, 1e30, a word and an empty value, plus the ends of its declared
range where they are allowed; for a name an unknown one; for a list each of those in its first place.
"""
from __future__ import annotations

import math
import os
import typing
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from ddmd_lab.config import load_config, parse_overrides, read_config
from ddmd_lab.config.rules import RULE, Devices, Flag, Lora, Number, Numbers, OneOf, Text
from ddmd_lab.config.sections import (ACCELERATORS, LIGHTNING_STRATEGIES, PRECISIONS, SECTIONS, SECTION_OF, RunConfig)
from ddmd_lab.core.arms import MAX_WEIGHT, REGISTRY, Arm
from ddmd_lab.core.tau import TauRule
from ddmd_lab.errors import NonFiniteError, UserError

from .tiny_toy import TINY_TOY

ARM = "decoupled_hybrid"
NUMBERS = ["nan", "inf", "-1", "0", "1e-30", "1e30", "abc", ""]  # as typed after --set key=
UNKNOWN = "no_such_name"
# keys whose accepted values never reach the training math of a toy2d run (where and how it runs, what is
# logged or evaluated, the stopping rule, LoRA (off on toy2d)): their values are only checked, not trained
PASSIVE = {"scale", "seed", "wandb", "runs_dir", "cache_dir", "checkpoint_every", "progress_bar", "eval_every",
           "log_every", "eval_samples", "diagnostics_every", "fid_samples", "score_last", "accelerator", "devices",
           "num_nodes", "pg_timeout", "strategy", "fsdp_teacher", "precision", "max_nonfinite_in_row", "lora",
           "gradient_checkpointing", "master_dtype", "arm.name", "arm.description"}
# the arm a math key is trained with: one that uses it
ARM_FOR = {"meanvar_mu": "ca_meanvar", "meanvar_var": "ca_meanvar", "meanvar_scope": "ca_meanvar",
           "arm.meanvar_weight": "ca_meanvar", "arm.gan_weight": "ca_gan", "arm.gan_disc_weight": "ca_gan"}


def _bounds(rule: Number) -> list[str]:
    return [repr(v) for v, open_ in ((rule.lo, rule.lo_open), (rule.hi, rule.hi_open)) if v is not None and not open_]


def _values(rule) -> list[str]:
    """What a key is fuzzed with, by the kind of rule it declares."""
    if isinstance(rule, Number):
        return NUMBERS + _bounds(rule)
    if isinstance(rule, (OneOf, Text)):
        return [UNKNOWN, ""]
    if isinstance(rule, Flag):
        return ["abc", "0", ""]
    if isinstance(rule, Devices):
        return NUMBERS + ["[]", "[0, 0]", "auto"]
    raise AssertionError(f"no fuzz values for a {type(rule).__name__} rule: add them here")


def _section_cases() -> list[tuple[str, list[str]]]:
    """(key, its ``--set`` items) for every section key."""
    cases = []
    for _, cls in SECTIONS:
        for f in fields(cls):
            rule = f.metadata.get(RULE)
            assert rule is not None, f"{f.name} declares no rule: key({f.name} default, <rule>) in config/sections.py"
            if isinstance(rule, Numbers):  # each value in the first place of a valid list
                base = getattr(cls(), f.name) or [0.0, 0.25, 0.5, 0.75]  # student_times: 4 times for 4 steps
                items = [f"{f.name}=[{v if v else 'null'}, {', '.join(map(repr, base[1:]))}]"
                         for v in NUMBERS + _bounds(rule.item)] + [f"{f.name}=abc", f"{f.name}="]
            elif isinstance(rule, Lora):
                items = [f"lora.{k}={v}" for k in ("rank", "alpha") for v in NUMBERS] + ["lora.targets=[]", "lora=abc", "lora="]
            else:
                items = [f"{f.name}={v}" for v in _values(rule)]
            cases.append((f.name, items))
    return cases


def _arm_cases() -> list[tuple[str, list[str]]]:
    """(arm.key, its ``--set`` items) for every Arm field, by the type of its default."""
    cases, default = [], REGISTRY[ARM]
    for f in fields(Arm):
        value = getattr(default, f.name)
        if isinstance(value, TauRule):
            for end in ("lo", "hi"):
                cases.append((f"arm.{f.name}.{end}", [f"arm.{f.name}.{end}={v}" for v in NUMBERS + ["1"]]))
            cases.append((f"arm.{f.name}.kind", [f"arm.{f.name}.kind={UNKNOWN}", f"arm.{f.name}=3"]))
        elif isinstance(value, bool):
            cases.append((f"arm.{f.name}", [f"arm.{f.name}=abc", f"arm.{f.name}="]))
        elif isinstance(value, float):
            cases.append((f"arm.{f.name}", [f"arm.{f.name}={v}" for v in NUMBERS + ["1", repr(MAX_WEIGHT)]]))
        else:
            cases.append((f"arm.{f.name}", [f"arm.{f.name}={UNKNOWN}", f"arm.{f.name}="]))
    return cases


CASES = _section_cases() + _arm_cases()


def _build(key: str, item: str) -> RunConfig:
    return load_config("toy2d", ARM_FOR.get(key, ARM), parse_overrides([item]))


def _accepted_math() -> list[tuple[str, str]]:
    """(key, item) of the accepted values that reach the math and differ from the key's default: trained."""
    out, seen = [], set()
    for key, items in CASES:
        if key in PASSIVE:
            continue
        default = _build(key, "seed=0").to_dict()
        for item in items:
            try:
                cfg = _build(key, item)
            except UserError:
                continue
            made = repr(cfg.to_dict())
            if cfg.to_dict() != default and made not in seen:  # once per config (0 and 0.0 make one)
                seen.add(made)
                out.append((key, item))
    return out


@pytest.mark.parametrize("key,items", CASES, ids=[k for k, _ in CASES])
def test_every_value_of_every_key_is_accepted_or_one_sentence(key, items):
    refused = 0
    for item in items:
        try:
            _build(key, item)
        except UserError as exc:
            refused += 1
            msg = str(exc)
            name = key.split(".")[-1] if not key.startswith("lora") else "lora"
            assert "\n" not in msg and msg.endswith(".") and name in msg and "--set" in msg, (item, msg)
        except Exception as exc:  # anything else is a traceback for the user
            raise AssertionError(f"--set {item} raised {type(exc).__name__}: {exc}") from exc
    assert refused, f"{key}: no fuzzed value was refused"


def test_the_old_holes_are_closed():
    """alpha=nan trained nothing and precision=fp8 ended in Lightning's raw ValueError."""
    with pytest.raises(UserError, match=r"^--set: alpha must be a finite number >= 0 .*got 'nan'\.$"):
        load_config("toy2d", ARM, parse_overrides(["alpha=nan"]))
    with pytest.raises(UserError, match=r"^--set: precision must be one of Lightning's precisions .*got 'fp8'\.$"):
        load_config("toy2d", ARM, parse_overrides(["precision=fp8"]))
    assert load_config("toy2d", ARM, parse_overrides(["precision=32"])).parallel.precision == "32"  # YAML's int


def test_a_bad_value_names_the_file_it_came_from(tmp_path, monkeypatch):
    import ddmd_lab.config.files as files

    (tmp_path / "bad_variant.yaml").write_text("base: ca_only\noverrides: {alpha: .nan}\n")
    (tmp_path / "bad_weight.yaml").write_text("base: ca_only\narm: {ca_weight: -2}\n")
    monkeypatch.setattr(files, "arms_dir", lambda: tmp_path)
    with pytest.raises(UserError, match=rf"^{tmp_path}/bad_variant\.yaml: alpha must be a finite number"):
        load_config("toy2d", "bad_variant")
    with pytest.raises(UserError, match=rf"^{tmp_path}/bad_weight\.yaml: arm 'bad_weight': ca_weight must be a finite number in"):
        load_config("toy2d", "bad_weight")
    path = tmp_path / "config.yaml"
    path.write_text("alpha: .inf\n")
    with pytest.raises(UserError, match=rf"^{path}: alpha must be a finite number >= 0 .*got inf\.$"):
        read_config(path)
    # the scale file's own values are checked the same way (and named: none is bad today)
    assert load_config("toy2d", ARM).objective.alpha == 3.0


def test_lightnings_names_are_lightnings_own():
    """The config layer lists Lightning's precision, strategy and accelerator names (it does not import
    Lightning); they must be the installed Lightning's."""
    import lightning_fabric.connector as connector
    from pytorch_lightning.accelerators import AcceleratorRegistry
    from pytorch_lightning.strategies import StrategyRegistry

    def flat(t):
        return {x for a in typing.get_args(t) for x in (flat(a) if typing.get_args(a) else {a})}

    assert set(PRECISIONS) == {str(p) for p in flat(connector._PRECISION_INPUT)}
    assert set(LIGHTNING_STRATEGIES) | {"ddp", "fsdp"} == set(StrategyRegistry.available_strategies())
    assert set(ACCELERATORS) == set(AcceleratorRegistry.available_accelerators()) | {"gpu", "auto"}
    assert set(SECTION_OF) >= {"precision", "strategy", "accelerator"}


# ---- accepted values train ------------------------------------------------------------------------------

TINY = TINY_TOY + ["steps=3", "ttur=1", "log_every=1"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    return [f"runs_dir={root / 'runs'}", f"cache_dir={root / 'cache'}"]


def _train(cfg: RunConfig):
    """A few steps of toy2d's distillation (the scale's teacher and batches; no evaluation or folder)."""
    import pytorch_lightning as pl

    from ddmd_lab.scales.base import get_scale
    from ddmd_lab.training.module import DistillModule
    from ddmd_lab.training.networks import load_networks

    teacher, init = load_networks(cfg)
    pl.seed_everything(0, verbose=False)
    module = DistillModule(teacher, cfg, init)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(module, get_scale("toy2d").condition_loader(cfg, 0))
    with torch.no_grad():
        samples = module.sample(torch.randn(64, 2, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 4)
    return module, {k: float(v) for k, v in trainer.callback_metrics.items()}, samples


ACCEPTED = _accepted_math()


@pytest.mark.parametrize("key,item", ACCEPTED, ids=[i for _, i in ACCEPTED])
def test_an_accepted_value_trains_with_finite_numbers(key, item, dirs):
    cfg = load_config("toy2d", ARM_FOR.get(key, ARM), parse_overrides(TINY + dirs + [item]))
    module, metrics, samples = _train(cfg)
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    assert not bad and metrics and torch.isfinite(samples).all(), (item, bad)
    assert module.skipped_steps == 0 and module.critic_step_count + module.generator_step_count > 0, item


# ---- a run that learns nothing stops -----------------------------------------------------------------------

def test_skipped_updates_above_the_share_stop_the_run_and_keep_its_folder(dirs, monkeypatch):
    """Every 5th generator update from the 10th on is NaN: never 2 bad steps in a row, yet 20% of the
    generator's updates skipped, above max_skipped_share=0.1 once 50 were attempted."""
    import ddmd_lab.training.module as module_file
    from ddmd_lab.training.run import run_ablation

    real, calls = module_file.generator_update, {"n": 0}

    def sometimes_nan(*args, **kwargs):
        update, logs = real(*args, **kwargs)
        calls["n"] += 1
        return (update * float("nan"), logs) if calls["n"] >= 10 and calls["n"] % 5 == 0 else (update, logs)

    monkeypatch.setattr(module_file, "generator_update", sometimes_nan)
    cfg = load_config("toy2d", ARM, parse_overrides(TINY + dirs + ["steps=200", "checkpoint_every=20", "eval_every=1000"]))
    with pytest.raises(NonFiniteError) as err:
        run_ablation(cfg)
    msg = str(err.value)
    run = next((Path(cfg.run.runs_dir) / "toy2d" / ARM).iterdir())
    assert "\n" not in msg and msg.startswith("9 of the 50 generator updates attempted by step 50 were skipped")
    assert "the first non-finite value was the generator's update direction at step 10 (mean tau_CA " in msg
    assert "mean tau_DM " in msg and f"make ablation RESUME={run}" in msg
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["ddmd_counters"]["step_count"] == 40 and (run / "config.yaml").is_file()
    assert not (run / "summary.json").exists()  # RESUME=auto finds it as an interrupted run


def test_cpu_processes_beyond_the_cores_are_announced(capsys, monkeypatch):
    from ddmd_lab.training.run import announce_cpu_processes

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = os.cpu_count() or 1
    announce_cpu_processes(RunConfig.of(devices=cores + 1))
    announce_cpu_processes(RunConfig.of(devices=1))
    out = capsys.readouterr().out
    assert out == f"devices={cores + 1} on {cores} CPU cores: {cores + 1} processes will run, 1 thread(s) each, sharing the cores\n"
