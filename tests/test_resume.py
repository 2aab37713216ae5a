"""Never lose a run: SIGKILL at a random moment, resume, compare with an uninterrupted run."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ddmd_lab.config import load_config, parse_overrides
from ddmd_lab.errors import NonFiniteError, UserError
from ddmd_lab.training.run import resume_ablation, run_ablation

SMALL = ["teacher={steps: 100, data_size: 4096, hidden: 64}", "batch_size=64", "ttur=3", "eval_every=25",
         "eval_samples=200", "checkpoint_every=20", "progress_bar=false", "wandb=disabled", "ema_decay=0.9"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return [f"runs_dir={root / 'runs'}", f"cache_dir={root / 'cache'}"]


def _overrides(dirs, steps):
    return SMALL + dirs + [f"steps={steps}"]


_REFERENCES: dict = {}


def _reference(dirs, arm, steps):
    """The uninterrupted run of (arm, steps), made once per test session."""
    if (arm, steps) not in _REFERENCES:
        _REFERENCES[arm, steps] = run_ablation(load_config("toy2d", arm, parse_overrides(_overrides(dirs, steps))))
    return _REFERENCES[arm, steps]


def _start(dirs, arm, steps, env_extra=None):
    cmd = [sys.executable, "-m", "ddmd_lab", "ablation", "--arm", arm]
    for kv in _overrides(dirs, steps):
        cmd += ["--set", kv]
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _run_dir_of(dirs, arm, exclude):
    root = dirs[0].split("=", 1)[1]
    runs = [p for p in (Path(root) / "toy2d" / arm).iterdir() if p not in exclude]
    assert len(runs) == 1
    return runs[0]


def _assert_same_run(a, b):
    ca = torch.load(a / "checkpoints" / "final.ckpt", weights_only=True)
    cb = torch.load(b / "checkpoints" / "final.ckpt", weights_only=True)
    assert ca["ddmd_counters"] == cb["ddmd_counters"]
    for k, v in ca["state_dict"].items():
        assert torch.equal(v, cb["state_dict"][k]), k
    # the generator's weight average: each rank's, to resume, and the student's whole weights
    assert len(ca["ddmd_ema"]) == len(cb["ddmd_ema"])
    for ea, eb in zip(ca["ddmd_ema"], cb["ddmd_ema"]):
        assert ea["updates"] == eb["updates"] and all(torch.equal(x, y) for x, y in zip(ea["average"], eb["average"]))
    assert ca["ddmd_student"].keys() == cb["ddmd_student"].keys()
    assert all(torch.equal(v, cb["ddmd_student"][k]) for k, v in ca["ddmd_student"].items())
    for oa, ob in zip(ca["optimizer_states"], cb["optimizer_states"]):
        for sa, sb in zip(oa["state"].values(), ob["state"].values()):
            assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    for rows in ("metrics.csv", "diagnostics.csv"):  # diagnostics: seeded by step, so a resume measures them again exactly
        assert (a / rows).read_text() == (b / rows).read_text(), rows
    assert json.loads((a / "summary.json").read_text()) == json.loads((b / "summary.json").read_text())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_random_moment_then_resume_is_exact(dirs, seed):
    arm, steps = "decoupled_hybrid", 1000  # several seconds: the kill lands mid-run
    reference = _reference(dirs, arm, steps)
    proc = _start(dirs, arm, steps)
    run = None
    deadline = time.time() + 120
    while time.time() < deadline and run is None:  # wait for the first checkpoint
        time.sleep(0.05)
        parent = reference.parent
        found = [p for p in parent.iterdir() if p not in _REFERENCES.values()
                 and (p / "checkpoints" / "last.ckpt").exists() and not (p / "summary.json").exists()]
        run = found[0] if found else None
    assert run is not None, proc.stderr.read().decode()[-2000:]
    time.sleep(random.Random(seed).uniform(0.0, 0.8))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists(), "the run finished before the kill; make it longer"
    resume_ablation(str(run))
    _assert_same_run(reference, run)


def test_kill_during_checkpoint_write_keeps_previous(dirs):
    arm, steps = "coupled", 100
    reference = _reference(dirs, arm, steps)
    proc = _start(dirs, arm, steps, {"DDMD_FAULT": "kill_during_write:2"})
    proc.wait(timeout=180)
    assert proc.returncode == -signal.SIGKILL
    run = _run_dir_of(dirs, arm, exclude=set(_REFERENCES.values()))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # still whole
    assert ckpt["ddmd_counters"]["step_count"] == 20
    assert list((run / "checkpoints").glob(".*.tmp"))  # the half-written one
    # a lean checkpoint: no frozen teacher (it comes from the cache on resume), only its fingerprint
    assert ckpt["ddmd_teacher"] and not [k for k in ckpt["state_dict"] if k.startswith("teacher.")]
    resume_ablation(str(run))
    assert not list((run / "checkpoints").glob(".*.tmp"))
    _assert_same_run(reference, run)


def test_resume_refuses_other_arm_and_missing_checkpoints(dirs, tmp_path):
    run = _reference(dirs, "dm_only", 20)
    with pytest.raises(UserError, match="is a run of arm 'dm_only'"):
        resume_ablation(str(run), arm="coupled")
    with pytest.raises(UserError, match="neither a run folder nor a .ckpt"):
        resume_ablation(str(tmp_path / "nope"))
    bad = run / "checkpoints" / "broken.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        resume_ablation(str(bad))


def test_nonfinite_updates_are_skipped_and_counted(dirs, monkeypatch):
    import ddmd_lab.training.module as module

    real, calls = module.generator_update, {"n": 0}

    def flaky(*args, **kwargs):  # generator steps 3 and 4 see a NaN update
        update, logs = real(*args, **kwargs)
        calls["n"] += 1
        return (update * float("nan"), logs) if calls["n"] in (3, 4) else (update, logs)

    monkeypatch.setattr(module, "generator_update", flaky)
    run = run_ablation(load_config("toy2d", "ca_only", parse_overrides(_overrides(dirs, 30))))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_steps"] == 2 and summary["generator_steps"] == 8  # 10 generator steps, 2 skipped
    state = torch.load(run / "checkpoints" / "final.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())


def test_too_many_nonfinite_in_a_row_stops_and_keeps_last_good_checkpoint(dirs, monkeypatch):
    import ddmd_lab.training.module as module

    real, calls = module.generator_update, {"n": 0}

    def broken_after_10(*args, **kwargs):
        update, logs = real(*args, **kwargs)
        calls["n"] += 1
        return (update * float("nan"), logs) if calls["n"] > 10 else (update, logs)

    monkeypatch.setattr(module, "generator_update", broken_after_10)
    cfg = load_config("toy2d", "ca_only", parse_overrides(_overrides(dirs, 200) + ["ttur=1", "max_nonfinite_in_row=5", "checkpoint_every=5"]))
    with pytest.raises(NonFiniteError, match="5 steps in a row"):
        run_ablation(cfg)
    run = max((Path(cfg.run.runs_dir) / "toy2d" / "ca_only").iterdir(), key=lambda p: p.stat().st_mtime)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["ddmd_counters"]["step_count"] == 10
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
