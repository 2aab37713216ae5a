"""Data parallelism as ddmd_lab/sharding.py builds it: two gloo CPU ranks through the CLI.

The scale is the tiny mnist one with a random tiny UNet teacher (ClassUNet "tiny": eight
ResnetBlock2D per network, the blocks FSDP wraps) and a random classifier saved into the cache,
so nothing is trained before the runs.  Arm decoupled_hybrid_gan: CA + DM + the GAN head on the
fake model's mid block, i.e. a generator backward that passes through the fake model.  Four
steps, ttur 2: generator updates at steps 0 and 2, a critic update every step.

Launches (module fixture, ~25-40 s each): ``ddp`` and ``fsdp`` on the same seed, then an fsdp run
killed as step 3 begins (its last checkpoint is step 2's) and resumed.  Like tests/test_ranks.py,
each run is ``python -m tests.test_sharding ablation ...``: this file's probes are patched in and
Lightning's launcher re-runs the same command for rank 1.  Per rank the probe writes
``rank<r>.jsonl``: every torch.distributed.all_reduce and every DDP gradient bucket (a counting
comm hook on any DistributedDataParallel built) with the update it happened in, the bytes of the
stepped optimiser's parameters per update, the FSDP units, the evaluations.
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

from .tiny_images import TINY

ROOT = Path(__file__).resolve().parents[1]
ARM = "decoupled_hybrid_gan"
SETS = TINY + ["steps=4", "ttur=2", "batch_size=4", "student_steps=2", "eval_every=2", "eval_samples=20",
               "fid_samples=0", "checkpoint_every=2", "log_every=1", "devices=2", "accelerator=cpu"]
HANG = 300  # seconds; a healthy two-rank run here takes ~30 s
_launches = [0]


def _launch(strategy: str, root: Path, probe: Path, extra: list | None = None, env_extra: dict | None = None,
            resume: Path | None = None, expect_kill: bool = False) -> subprocess.CompletedProcess:
    if resume is not None:
        args = ["ablation", "--arm", ARM, "--scale", "mnist", "--resume", str(resume)]
    else:
        args = ["ablation", "--arm", ARM, "--scale", "mnist"]
        for kv in SETS + [f"strategy={strategy}", f"runs_dir={root / 'runs'}", f"cache_dir={root / 'cache'}"] + (extra or []):
            args += ["--set", kv]
    probe.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("DDMD_RUN_DIR", "PROBE_KILL_AT", "PROBE_LOCKSTEP")}
    _launches[0] += 1
    env.update(OMP_NUM_THREADS="1", PROBE_DIR=str(probe), **(env_extra or {}),
               MASTER_PORT=str(33000 + (os.getpid() % 1000) * 4 + _launches[0] % 4))
    proc = subprocess.Popen([sys.executable, "-m", "tests.test_sharding", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # both ranks
        out, err = proc.communicate()
        pytest.fail(f"the two-rank {strategy} run hung for {HANG} s (mismatched collectives?)\n{err[-3000:]}")
    assert proc.returncode == (-signal.SIGKILL if expect_kill else 0), err[-4000:]
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _records(probe: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (probe / f"rank{rank}.jsonl").read_text().splitlines()]


def _run_dir(root: Path, exclude=()) -> Path:
    runs = [p for p in (root / "runs" / "mnist" / ARM).iterdir() if p not in exclude]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from ddmd_lab.backbones.class_unet import ClassUNet, build_unet
    from ddmd_lab.config import load_config, parse_overrides
    from ddmd_lab.eval.classifier import SmallClassifier
    from ddmd_lab.scales import images

    out = {}
    for strategy in ("ddp", "fsdp"):
        root = tmp_path_factory.mktemp(strategy)
        cfg = load_config("mnist", ARM, parse_overrides(SETS + [f"cache_dir={root / 'cache'}"]))
        torch.manual_seed(0)  # the same random teacher and classifier for both runs
        ClassUNet(build_unet("tiny", 10), 10).save(images.teacher_dir(cfg))
        images.classifier_dir(cfg).mkdir(parents=True)
        torch.save(SmallClassifier(10).state_dict(), images.classifier_dir(cfg) / "classifier.pt")
        # both runs draw the same k on every rank (rank 0's), as fsdp must: the same training
        _launch(strategy, root, root / "probe", env_extra={"PROBE_LOCKSTEP": "1"})
        out[strategy] = {"root": root, "probe": root / "probe", "run": _run_dir(root)}
    return out


def _final_state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def test_fsdp_wraps_each_block_and_ends_with_the_weights_of_ddp(runs):
    """Fails on the code before sharding.py: Lightning refuses strategy='fsdp' on a CPU accelerator
    (and on GPUs its FSDPStrategy() without auto_wrap_policy made one unit of the whole module)."""
    from ddmd_lab.backbones.class_unet import ClassUNet

    for rank in (0, 1):
        units = [r["fsdp_units"] for r in _records(runs["fsdp"]["probe"], rank) if "fsdp_units" in r]
        # teacher, generator and fake each a root, each of their 8 ResnetBlock2D a unit of its own
        assert units == [{"teacher": 9, "generator": 9, "fake": 9}], units
    ddp, fsdp = _final_state(runs["ddp"]["run"]), _final_state(runs["fsdp"]["run"])
    assert ddp.keys() == fsdp.keys() and not any(k.startswith("teacher.") for k in fsdp)  # full, lean state dicts
    assert {k.split(".")[0] for k in fsdp} == {"generator", "fake", "disc"}
    worst = max((ddp[k].double() - fsdp[k].double()).abs().max().item() for k in ddp)
    teacher = ClassUNet.load(next((runs["ddp"]["root"] / "cache" / "teachers" / "mnist").iterdir())).state_dict()
    moved = max((ddp[f"generator.{k}"] - v).abs().max().item() for k, v in teacher.items())
    print(f"\nfsdp vs ddp after 4 steps: largest weight difference {worst:.3g} over {len(ddp)} tensors "
          f"(the generator moved up to {moved:.3g} from the teacher)")
    assert worst < 1e-5 and moved > 1e-5
    a, b = (json.loads((runs[s]["run"] / "summary.json").read_text()) for s in ("ddp", "fsdp"))
    assert a["ranks_identical"] is True and b["ranks_identical"] is True  # fsdp: the replicated GAN head
    assert (a["generator_steps"], a["critic_steps"]) == (b["generator_steps"], b["critic_steps"]) == (2, 4)


def test_ddp_all_reduces_only_the_stepped_models_gradients(runs):
    """Fails on the code before sharding.py: its DistributedDataParallel(find_unused_parameters=True)
    around the whole module reduced generator, fake and head in every backward (the probe's comm
    hook counts its buckets): the generator's update moved 2x its bytes (+ the head)."""
    for rank in (0, 1):
        rows = _records(runs["ddp"]["probe"], rank)
        expected = {(r["step"], r["update"]): r["expected"] for r in rows if "expected" in r}
        assert len(expected) == 6  # generator at steps 0 and 2, the critic at 0..3
        moved: dict = {}
        flags: dict = {}
        for r in rows:
            if "bytes" in r and r.get("update"):
                key = (r["step"], r["update"])
                target = flags if r["dtype"] == "torch.int32" else moved
                target[key] = target.get(key, 0) + r["bytes"]
        print(f"\nrank {rank}: bytes all-reduced per update {moved}, stepped gradients {expected}")
        assert moved == expected, (moved, expected)
        assert flags == {key: 4 for key in expected}  # the agreed finiteness flag of each update


def test_fsdp_evaluates_on_every_rank_and_rank_0_writes(runs):
    """Fails on the code before sharding.py at the launch (see above); on GPUs there, rank 0 alone
    evaluated, and its forward would wait forever for the other ranks' shards."""
    run = runs["fsdp"]["run"]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 2, 4] and all(r["class_adherence"] for r in rows)
    assert sorted(p.name for p in (run / "samples").iterdir()) == [f"step_000000{s}.png" for s in (0, 2, 4)]
    for rank in (0, 1):  # both ranks ran each evaluation's forwards (the student's samples: sample_sum)
        evals = [r for r in _records(runs["fsdp"]["probe"], rank) if "evaluated" in r]
        assert [e["evaluated"] for e in evals] == [0, 2, 4] and all(e["sample_sum"] for e in evals), (rank, evals)
    ddp_rows = list(csv.DictReader((runs["ddp"]["run"] / "metrics.csv").open()))
    assert len(ddp_rows) == len(rows)
    for x, y in zip(rows, ddp_rows):  # rank 0's rows: the same student, evaluated as under ddp
        assert x.keys() == y.keys() and all(abs(float(x[k]) - float(y[k])) < 1e-5 for k in x), (x, y)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["step"] == 4 and "observer_fake_x0_hf_excess" in summary  # final() too


def test_an_fsdp_run_killed_after_a_checkpoint_resumes_exactly(runs):
    """Fails on the code before sharding.py at the first launch (see above)."""
    root, reference = runs["fsdp"]["root"], runs["fsdp"]["run"]
    _launch("fsdp", root, root / "probe_killed", env_extra={"PROBE_KILL_AT": "3"}, expect_kill=True)
    run = _run_dir(root, exclude=(reference,))
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["ddmd_counters"]["step_count"] == 2 and not any(k.startswith("teacher.") for k in last["state_dict"])
    _launch("fsdp", root, root / "probe_resumed", resume=run)
    a, b = _final_state(reference), _final_state(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref = torch.load(reference / "checkpoints" / "final.ckpt", weights_only=True)["optimizer_states"]
    res = torch.load(run / "checkpoints" / "final.ckpt", weights_only=True)["optimizer_states"]
    for o1, o2 in zip(ref, res):
        for k in o1["state"]:
            assert all(torch.equal(torch.as_tensor(o1["state"][k][n]), torch.as_tensor(o2["state"][k][n]))
                       for n in o1["state"][k])
    assert (run / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()


def test_fsdp_refuses_lora_and_blockless_backbones_naming_ddp():
    from ddmd_lab.backbones.toy import ToyFlowMLP
    from ddmd_lab.config import RunConfig
    from ddmd_lab.errors import UserError
    from ddmd_lab.parallel.strategies import PerBlockFSDP, PerOptimizerDDP, block_classes, make_strategy

    with pytest.raises(UserError, match="does not take LoRA.*use strategy=ddp"):
        RunConfig.of(strategy="fsdp", lora={"rank": 4})
    with pytest.raises(UserError, match="fsdp_teacher must be shard or replicate"):
        RunConfig.of(strategy="fsdp", fsdp_teacher="offload")
    with pytest.raises(UserError, match="ToyFlowMLP has none.*use strategy=ddp"):
        block_classes(ToyFlowMLP())
    assert isinstance(make_strategy(RunConfig.of(strategy="fsdp", fsdp_teacher="replicate").parallel), PerBlockFSDP)
    assert isinstance(make_strategy(RunConfig.of(strategy="auto", devices=2).parallel), PerOptimizerDDP)
    assert make_strategy(RunConfig().parallel) == "auto"


# ---- the probe (runs inside each rank) -----------------------------------------------------------

def _probe_main() -> int:
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.nn.parallel import DistributedDataParallel

    import ddmd_lab.training.callbacks.evaluation as callback
    import ddmd_lab.training.module as module
    from ddmd_lab.commands.cli import main

    out = Path(os.environ["PROBE_DIR"])
    kill_at = int(os.environ.get("PROBE_KILL_AT", "-1"))
    now = {"rank": int(os.environ.get("LOCAL_RANK", 0)), "step": -1, "update": None}  # one node

    def record(**row):
        with (out / f"rank{now['rank']}.jsonl").open("a") as f:
            f.write(json.dumps({"step": now["step"], **row}) + "\n")

    real_all_reduce = dist.all_reduce

    def all_reduce(tensor, *args, **kwargs):
        record(update=now["update"], bytes=tensor.numel() * tensor.element_size(), dtype=str(tensor.dtype))
        return real_all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = all_reduce
    real_ddp_init = DistributedDataParallel.__init__

    def ddp_init(self, *args, **kwargs):  # the wrapper's own buckets do not go through dist.all_reduce
        real_ddp_init(self, *args, **kwargs)

        def counting(state, bucket):
            buffer = bucket.buffer()
            record(update=now["update"], bytes=buffer.numel() * buffer.element_size(), dtype=str(buffer.dtype))
            return allreduce_hook(state, bucket)
        self.register_comm_hook(None, counting)

    DistributedDataParallel.__init__ = ddp_init
    if os.environ.get("PROBE_LOCKSTEP"):  # ddp draws the backward simulation's k as fsdp must: rank 0's
        try:
            from ddmd_lab.parallel.strategies import PerOptimizerDDP
        except ImportError:  # the code before sharding.py: each rank draws its own k
            pass
        else:
            PerOptimizerDDP.forwards_in_lockstep = True
    cls = module.DistillModule
    training_step, update, on_train_start = cls.training_step, cls._update, cls.on_train_start

    def probe_training_step(self, batch, batch_idx):
        now.update(rank=self.global_rank, step=self.step_count)
        if self.global_rank == 0 and self.step_count == kill_at:
            os.killpg(0, signal.SIGKILL)
        return training_step(self, batch, batch_idx)

    def probe_update(self, loss, opt, params, logs, name, finite=None):
        record(update=name, expected=sum(p.numel() * p.element_size() for p in params))
        now["update"] = name
        try:
            return update(self, loss, opt, params, logs, name, finite)
        finally:
            now["update"] = None

    def probe_on_train_start(self):
        now.update(rank=self.global_rank, step=self.step_count)
        units = {name: sum(isinstance(m, FullyShardedDataParallel) for m in getattr(self, name).modules())
                 for name in ("teacher", "generator", "fake")}
        if any(units.values()):
            record(fsdp_units=units)
        return on_train_start(self)

    cls.training_step, cls._update, cls.on_train_start = probe_training_step, probe_update, probe_on_train_start
    real_sample = cls.sample

    def probe_sample(self, noise, cond, generator=None):
        x = real_sample(self, noise, cond, generator)
        now["sample_sum"] = now.get("sample_sum", 0.0) + float(x.double().sum())
        return x

    cls.sample = probe_sample
    real_record = callback.EvalCallback._record

    def probe_record(self, module_):
        now.update(rank=module_.global_rank, sample_sum=0.0)
        row = real_record(self, module_)
        record(evaluated=module_.step_count, sample_sum=round(now["sample_sum"], 6))
        return row

    callback.EvalCallback._record = probe_record
    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(_probe_main())
