"""Data parallelism rank by rank: each rank draws its own noise, a non-finite update on one
rank is skipped by all, an interrupted two-rank run resumes exactly, and a training step
reads from the device only when it is logged.

The two-rank runs go through the CLI like tests/test_ddp.py (two gloo CPU processes).  Their
probes live here, not in ddmd_lab: run as ``python -m tests.test_ranks ablation ...`` this file
patches the module, then runs the CLI; Lightning starts rank 1 by re-running that same
command, so both ranks carry the probe.  Driven by environment variables:
  PROBE_DIR      each rank appends what it drew and its counters, per step, to rank<r>.jsonl
  PROBE_NAN      "r:s": rank r's generator update of step s is NaN (on that rank only)
  PROBE_KILL_AT  s: rank 0 SIGKILLs the whole process group when step s begins
"""
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ARM = "decoupled_hybrid"  # CA above t, DM uniform, GAN: every kind of draw
SETS = ["steps=8", "ttur=2", "batch_size=16", "eval_every=4", "eval_samples=64", "checkpoint_every=2",
        "log_every=2", "strategy=ddp", "devices=2", "accelerator=cpu", "progress_bar=false", "wandb=disabled",
        "teacher={steps: 30, data_size: 4096, hidden: 32}", "ema_decay=0.9"]
NAN_ON = "1:2"  # rank 1 only, step 2 (a generator step with ttur=2)
HANG = 240  # seconds; a healthy two-rank run here takes ~20-40 s
_launches = [0]


def _launch(args: list, env_extra: dict, expect_kill: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DDMD_RUN_DIR", "PROBE_NAN", "PROBE_KILL_AT")}
    _launches[0] += 1
    env.update(OMP_NUM_THREADS="1", MASTER_PORT=str(31000 + (os.getpid() % 1000) * 4 + _launches[0] % 4), **env_extra)
    proc = subprocess.Popen([sys.executable, "-m", "tests.test_ranks", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # both ranks: rank 1 is in rank 0's process group
        out, err = proc.communicate()
        pytest.fail(f"the two-rank run hung for {HANG} s (ranks waiting in mismatched collectives?)\n{err[-3000:]}")
    if expect_kill:
        assert proc.returncode == -signal.SIGKILL, err[-3000:]
    else:
        assert proc.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _ablation(dirs: list, probe_dir: Path, **env) -> tuple[list, dict]:
    args = ["ablation", "--arm", ARM]
    for kv in SETS + dirs:
        args += ["--set", kv]
    probe_dir.mkdir(parents=True, exist_ok=True)
    return args, {"PROBE_DIR": str(probe_dir), **env}


def _records(probe_dir: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (probe_dir / f"rank{rank}.jsonl").read_text().splitlines()]


def _by_step(rows: list[dict], key: str) -> dict:
    """{step: [what was recorded under key during that step, in order]}"""
    out: dict = {}
    for r in rows:
        if key in r:
            out.setdefault(r["step"], []).append(r[key])
    return out


@pytest.fixture(scope="module")
def two_rank(tmp_path_factory):
    """One uninterrupted two-rank run of 8 steps, rank 1's update NaN at step 2."""
    root = tmp_path_factory.mktemp("ranks")
    dirs = [f"runs_dir={root / 'runs'}", f"cache_dir={root / 'cache'}"]
    args, env = _ablation(dirs, root / "probe_ref", PROBE_NAN=NAN_ON)
    proc = _launch(args, env)
    runs = list((root / "runs" / "toy2d" / ARM).iterdir())
    assert len(runs) == 1 and proc.stdout.count("run folder:") == 1
    return {"root": root, "dirs": dirs, "run": runs[0], "probe": root / "probe_ref"}


def test_each_rank_draws_its_own_noise_and_a_nan_on_one_rank_is_skipped_by_all(two_rank):
    probe, run = two_rank["probe"], two_rank["run"]
    r0, r1 = _records(probe, 0), _records(probe, 1)
    # (a) the same model on both ranks (ranks_identical below), but each rank's own draws:
    # the student's input (its noise, and k), tau_CA / tau_DM with their noise, the critic's tau'
    for key in ("x_t", "tau_ca", "tau_dm", "noise", "tau_critic"):
        a, b = _by_step(r0, key), _by_step(r1, key)
        assert a and a.keys() == b.keys(), key
        assert all(len(a[s]) == len(b[s]) and all(x != y for x, y in zip(a[s], b[s])) for s in a), (key, a, b)
    # (b) the NaN on rank 1 alone: both ranks skipped that update, kept the same counters at
    # every step, and ended with the same weights (the run did not hang: _launch's timeout)
    c0, c1 = _by_step(r0, "counters"), _by_step(r1, "counters")
    assert c0 == c1 and len(c0) == 8
    assert [c0[s][0]["skipped_steps"] for s in range(8)] == [0, 0, 1, 1, 1, 1, 1, 1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["ranks_identical"] is True
    assert summary["skipped_steps"] == 1 and summary["generator_steps"] == 3 and summary["critic_steps"] == 8
    # every rank's RNG state is in the checkpoint, loadable without pickled code
    ckpt = torch.load(run / "checkpoints" / "final.ckpt", weights_only=True)
    states = ckpt["ddmd_rng"]
    assert isinstance(states, list) and len(states) == 2
    assert not torch.equal(states[0]["torch"], states[1]["torch"])
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_two_rank_run_killed_after_a_checkpoint_resumes_exactly(two_rank):
    from tests.test_resume import _assert_same_run

    root, dirs, reference = two_rank["root"], two_rank["dirs"], two_rank["run"]
    args, env = _ablation(dirs, root / "probe_killed", PROBE_NAN=NAN_ON, PROBE_KILL_AT="5")
    _launch(args, env, expect_kill=True)  # killed as step 5 begins: last.ckpt is step 4's
    runs = [p for p in (root / "runs" / "toy2d" / ARM).iterdir() if p != reference]
    assert len(runs) == 1
    run = runs[0]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["ddmd_counters"]["step_count"] == 4 and len(last["ddmd_rng"]) == 2
    resumed = root / "probe_resumed"
    resumed.mkdir()
    _launch(["ablation", "--arm", ARM, "--resume", str(run)], {"PROBE_DIR": str(resumed)})
    _assert_same_run(reference, run)  # weights, counters, optimiser moments, metrics.csv, summary
    for rank in (0, 1):  # each rank went on drawing exactly what it drew uninterrupted
        ref, res = _records(two_rank["probe"], rank), _records(resumed, rank)
        for key in ("x_t", "tau_ca", "tau_dm", "noise", "tau_critic", "counters"):
            after = {s: v for s, v in _by_step(ref, key).items() if s >= 4}
            assert after and _by_step(res, key) == after, (rank, key)


def test_resume_with_another_number_of_ranks_is_refused():
    from ddmd_lab.core.arms import REGISTRY
    from ddmd_lab.backbones.toy import ToyFlowMLP
    from ddmd_lab.config import RunConfig
    from ddmd_lab.errors import UserError
    from ddmd_lab.parallel.ranks import rng_state
    from ddmd_lab.training.module import DistillModule

    module = DistillModule(ToyFlowMLP(num_classes=3, hidden=8, depth=1), RunConfig.of(arm=REGISTRY["coupled"], wandb="disabled"))
    with pytest.raises(UserError, match="2 ranks.*this run has 1"):
        module.on_load_checkpoint({"ddmd_counters": {}, "ddmd_rng": [rng_state(), rng_state()]})
    module.on_load_checkpoint({"ddmd_counters": {}, "ddmd_rng": rng_state()})  # written before per-rank states
    assert module._pending_rng is not None


def test_a_step_reads_the_device_once_per_update_unless_it_is_logged(monkeypatch, tmp_path):
    """Host reads made by ddmd_lab code in each training step (single process, toy model).

    Counted (ddmd_lab.util.host_reads): Tensor.item / tolist / __bool__ / __float__ / __int__ called
    from a ddmd_lab file (torch's AdamW reads its own CPU step counter; Lightning reads the
    logged values, on logging steps only).  A 4-step student: backward simulation reads nothing.
    """
    from ddmd_lab.util.host_reads import counting_host_reads
    from ddmd_lab.training.module import DistillModule

    step = [None]
    real_step = DistillModule.training_step

    def training_step(self, batch, batch_idx):
        step[0] = self.step_count
        try:
            return real_step(self, batch, batch_idx)
        finally:
            step[0] = None

    monkeypatch.setattr(DistillModule, "training_step", training_step)
    with counting_host_reads(lambda: step[0]) as counts:
        module, logger = _toy_fit(tmp_path, log_every=3, student_steps=4)
    assert module.generator_step_count == 4 and module.critic_step_count == 8
    # per step: the draw of k (a CPU scalar: no device sync) and one finiteness flag per update,
    # agreed by all ranks (generator + critic on even steps, the critic alone on odd ones);
    # logging steps (the 3rd and 6th) add none: Lightning reads the logged tensors
    assert counts == {0: 3, 1: 2, 2: 3, 3: 2, 4: 3, 5: 2, 6: 3, 7: 2}
    rows = list(csv.DictReader((Path(logger.log_dir) / "metrics.csv").open()))
    logged = {int(r["step"]): r for r in rows if r.get("loss_critic")}
    # the module's logged "step" (steps done) is the logger's step: Lightning logged exactly the
    # steps the module prepared logs for
    assert sorted(logged) == [3, 6]
    assert logged[3]["loss_generator"] and logged[3]["gen/update_norm"] and logged[3]["grad_norm_fake"]


def _toy_fit(tmp_path, **settings):
    """A decoupled_hybrid DistillModule on a toy MLP fitted 8 steps (ttur 2) with a CSV logger: (module, logger)."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    from ddmd_lab.core.arms import REGISTRY
    from ddmd_lab.backbones.toy import ToyFlowMLP
    from ddmd_lab.config import RunConfig
    from ddmd_lab.training.module import DistillModule

    pl.seed_everything(0, verbose=False)
    cfg = RunConfig.of(arm=REGISTRY["decoupled_hybrid"], steps=8, ttur=2, batch_size=8, wandb="disabled", **settings)
    module = DistillModule(ToyFlowMLP(num_classes=3, hidden=16, depth=2), cfg)
    loader = DataLoader(TensorDataset(torch.randint(3, (64,)), torch.randn(64, 2)), batch_size=8)
    logger = CSVLogger(tmp_path, name="logs")
    pl.Trainer(max_epochs=1, accelerator="cpu", logger=logger, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, log_every_n_steps=cfg.evaluation.log_every).fit(module, loader)
    return module, logger


def test_generator_logs_reach_the_log_when_logged_steps_are_never_generator_steps(tmp_path):
    """ttur 2 and log_every 2: generator steps are the even indices, logged steps the odd ones (as the
    defaults ttur 5 / log_every 10 never meet): the last generator step's logs go out with the next logged step."""
    _, logger = _toy_fit(tmp_path, log_every=2)
    rows = [r for r in csv.DictReader((Path(logger.log_dir) / "metrics.csv").open()) if r.get("loss_critic")]
    assert len(rows) == 4 and all(r.get("loss_generator") and r.get("grad_norm_generator") for r in rows)


def _probe_main() -> int:
    """The CLI with the probes of this file's two-rank tests patched in (see the docstring)."""
    import ddmd_lab.training.module as module
    import ddmd_lab.method.update as update
    from ddmd_lab.commands.cli import main

    out = Path(os.environ["PROBE_DIR"])
    nan_rank, nan_step = (int(v) for v in os.environ.get("PROBE_NAN", "-1:-1").split(":"))
    kill_at = int(os.environ.get("PROBE_KILL_AT", "-1"))
    now = {"rank": 0, "step": -1}

    def record(**row):
        with (out / f"rank{now['rank']}.jsonl").open("a") as f:
            f.write(json.dumps({"step": now["step"], **row}) + "\n")

    cls = module.DistillModule
    training_step, student_input, renoised = cls.training_step, cls._student_input, cls._renoised

    def probe_training_step(self, batch, batch_idx):
        now.update(rank=self.global_rank, step=self.step_count)
        if self.global_rank == 0 and self.step_count == kill_at:
            os.killpg(0, signal.SIGKILL)
        result = training_step(self, batch, batch_idx)
        record(counters={k: getattr(self, k) for k in self.COUNTERS})
        return result

    def probe_student_input(self, cond, batch):
        x_t, t = student_input(self, cond, batch)
        record(x_t=x_t[:2].tolist(), t=t[0].item())
        return x_t, t

    def probe_renoised(self, x0, t_like, purpose):
        x_tau, tau = renoised(self, x0, t_like, purpose)
        record(tau_critic=tau[:2].tolist())
        return x_tau, tau

    real_draw, real_update = update.draw, module.generator_update

    def probe_draw(*args, **kwargs):
        d = real_draw(*args, **kwargs)
        record(tau_ca=d.tau_ca[:2].tolist(), tau_dm=d.tau_dm[:2].tolist(), noise=d.noise_ca[:1].tolist())
        return d

    def probe_update(*args, **kwargs):
        upd, logs = real_update(*args, **kwargs)
        if (now["rank"], now["step"]) == (nan_rank, nan_step):
            upd = upd * float("nan")
        return upd, logs

    cls.training_step, cls._student_input, cls._renoised = probe_training_step, probe_student_input, probe_renoised
    update.draw, module.generator_update = probe_draw, probe_update
    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(_probe_main())
