"""Data parallelism as ddmd_lab/parallel/ builds it: two gloo CPU ranks through the CLI.

The scale is the tiny mnist one with a random tiny UNet teacher (ClassUNet "tiny": eight
ResnetBlock2D per network, the blocks FSDP wraps) and a random classifier saved into the cache,
so nothing is trained before the runs.  Arm decoupled_hybrid_gan: CA + DM + the GAN head on the
fake model's mid block, i.e. a generator backward that passes through the fake model.  Four
steps, ttur 2: generator updates at steps 0 and 2, a critic update every step.  Both runs keep the
generator's weight average (ema_decay 0.5), so evaluations, checkpoints and resume carry it.

``fsdp`` is torch's FSDP2 (parallel/fsdp2.py): parameters are DTensors holding 1/world of each tensor, and
checkpoints are folders of shards (checkpoints/*.dcp), made into one file by ``consolidate``.

Launches (module fixture, ~25-40 s each): ``ddp`` and ``fsdp`` on the same seed, then an fsdp run
killed as step 3 begins (its last checkpoint is step 2's) and resumed.  Like tests/test_ranks.py,
each run is ``python -m tests.test_sharding ablation ...``: this file's probes are patched in and
Lightning's launcher re-runs the same command for rank 1.  Per rank the probe writes
``rank<r>.jsonl``: every torch.distributed.all_reduce and every DDP gradient bucket (a counting
comm hook on any DistributedDataParallel built) with the update it happened in, the bytes of the
stepped optimiser's parameters per update, the FSDP units and the part of each model a rank holds,
the evaluations, and the bytes each rank's process wrote and read (the kernel's /proc/self/io
counters) while it saved or loaded a sharded checkpoint.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from .tiny_images import TINY

ROOT = Path(__file__).resolve().parents[1]
ARM = "decoupled_hybrid_gan"
SETS = TINY + ["steps=4", "ttur=2", "batch_size=4", "student_steps=2", "eval_every=2", "eval_samples=20",
               "fid_samples=0", "checkpoint_every=2", "log_every=1", "devices=2", "accelerator=cpu", "ema_decay=0.5"]
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


def _cache(root: Path, extra: list | None = None) -> None:
    """The same random teacher and classifier in ``root``'s cache for every run."""
    from ddmd_lab.backbones.class_unet import ClassUNet, build_unet
    from ddmd_lab.config import load_config, parse_overrides
    from ddmd_lab.eval.classifier import SmallClassifier
    from ddmd_lab.scales import images

    cfg = load_config("mnist", ARM, parse_overrides(SETS + (extra or []) + [f"cache_dir={root / 'cache'}"]))
    torch.manual_seed(0)
    ClassUNet(build_unet("tiny", 10), 10).save(images.teacher_dir(cfg))
    images.classifier_dir(cfg).mkdir(parents=True)
    torch.save(SmallClassifier(10).state_dict(), images.classifier_dir(cfg) / "classifier.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for strategy in ("ddp", "fsdp"):
        root = tmp_path_factory.mktemp(strategy)
        _cache(root)
        # both runs draw the same k on every rank (rank 0's), as fsdp must: the same training
        _launch(strategy, root, root / "probe", env_extra={"PROBE_LOCKSTEP": "1"})
        out[strategy] = {"root": root, "probe": root / "probe", "run": _run_dir(root)}
    return out


def _final(run: Path) -> dict:
    """The run's final checkpoint as one file: a ddp run's own, an fsdp run's consolidated from its shards
    (on this process alone, as `make consolidate` does)."""
    from ddmd_lab.training.sharded_checkpoint import consolidate

    if (run / "checkpoints" / "final.dcp").is_dir():
        assert consolidate(run) == run / "checkpoints" / "final.ckpt"
    return torch.load(run / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=True)


def _final_state(run: Path) -> dict:
    return _final(run)["state_dict"]


def _dcp_tensors(folder: Path) -> dict:
    """Every tensor a sharded checkpoint holds (weights, both AdamW states, the weight average), whole."""
    import torch.distributed.checkpoint as dcp

    stored = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    out = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in stored.items() if hasattr(m, "size")}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(out, storage_reader=dcp.FileSystemReader(str(folder)), no_dist=True)
    return out


def test_fsdp_shards_each_block_and_ends_with_the_weights_of_ddp(runs):
    """Fails on the code before FSDP2: the legacy FSDP1 units held flat parameters, not DTensors (and before
    sharding.py Lightning refused strategy='fsdp' on a CPU accelerator)."""
    from ddmd_lab.backbones.class_unet import ClassUNet

    for rank in (0, 1):
        units = [r["fsdp_units"] for r in _records(runs["fsdp"]["probe"], rank) if "fsdp_units" in r]
        # teacher, generator and fake each a root, each of their 8 ResnetBlock2D a unit of its own
        assert units == [{"teacher": 9, "generator": 9, "fake": 9}], units
        # sharding did something: every parameter of every block is a DTensor, and this rank holds about half
        # of each model's block weights (split along dim 0; the two ranks' parts add up to the whole)
        held = [r["held"] for r in _records(runs["fsdp"]["probe"], rank) if "held" in r]
        assert len(held) == 1 and all(h["dtensors"] == h["params"] > 0 for h in held[0].values()), held
        assert all(0.4 < h["local"] / h["full"] < 0.6 for h in held[0].values()), held
    parts = [[r["held"] for r in _records(runs["fsdp"]["probe"], rank) if "held" in r][0] for rank in (0, 1)]
    assert all(parts[0][m]["local"] + parts[1][m]["local"] == parts[0][m]["full"] for m in parts[0])
    ddp_ckpt, fsdp_ckpt = _final(runs["ddp"]["run"]), _final(runs["fsdp"]["run"])
    ddp, fsdp = ddp_ckpt["state_dict"], fsdp_ckpt["state_dict"]
    assert ddp.keys() == fsdp.keys() and not any(k.startswith("teacher.") for k in fsdp)  # full, lean state dicts
    assert {k.split(".")[0] for k in fsdp} == {"generator", "fake", "disc"}
    worst = max((ddp[k].double() - fsdp[k].double()).abs().max().item() for k in ddp)
    # the student (the generator's weight average) is the same too, and is not the raw generator
    student_ddp, student_fsdp = ddp_ckpt["ddmd_student"], fsdp_ckpt["ddmd_student"]
    assert student_ddp.keys() == student_fsdp.keys() and student_fsdp
    assert max((student_ddp[k] - student_fsdp[k]).abs().max().item() for k in student_ddp) < 1e-5
    assert max((student_fsdp[k] - fsdp[k]).abs().max().item() for k in student_fsdp) > 1e-6
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
    evaluated, and its forward would wait forever for the other ranks' shards.  The rows compared with
    ddp's are the weight average's (the student) and the raw generator's: the average swapped into the
    shards is what every rank's forward gathered."""
    run = runs["fsdp"]["run"]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 2, 4] and all(r["class_adherence"] for r in rows)
    assert any(k.startswith("raw_") for k in rows[0])  # the student is the average; the raw generator beside it
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


def test_an_fsdp_run_killed_after_a_checkpoint_resumes_exactly_from_its_shards(runs):
    """Fails on the code before FSDP2: its checkpoints were one file gathered on rank 0 (no .dcp folder)."""
    from ddmd_lab.parallel.dcp_state import read_meta

    root, reference = runs["fsdp"]["root"], runs["fsdp"]["run"]
    _launch("fsdp", root, root / "probe_killed", env_extra={"PROBE_KILL_AT": "3"}, expect_kill=True)
    run = _run_dir(root, exclude=(reference,))
    last = run / "checkpoints" / "last.dcp"
    assert not (run / "checkpoints" / "last.ckpt").exists() and read_meta(last)["ddmd_counters"]["step_count"] == 2
    # one DCP file per rank, each written by its rank; no teacher in it
    assert sorted(p.name for p in last.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not any(".teacher." in k for k in _dcp_tensors(last))
    _launch("fsdp", root, root / "probe_resumed", resume=run)
    a, b = _dcp_tensors(reference / "checkpoints" / "final.dcp"), _dcp_tensors(run / "checkpoints" / "final.dcp")
    # weights, both AdamW states (moments and steps) and the weight average, bit for bit
    assert {k.split(".")[0] for k in a} == {"state_dict", "optimizer_0", "optimizer_1", "ddmd_ema"}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert (run / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()
    loads = [r["io"] for rank in (0, 1) for r in _records(root / "probe_resumed", rank) if r.get("io", {}).get("what") == "load"]
    assert len(loads) == 2  # each rank read the checkpoint once, itself


def _io_counters() -> dict:
    """The kernel's count of the bytes this process passed to read / write calls (files and sockets)."""
    rows = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {"read": int(rows["rchar"]), "written": int(rows["wchar"])}


def test_a_ranks_host_io_at_save_and_load_is_bounded_by_its_shard(runs):
    """What each rank's process wrote at a save and read at the resume, as the kernel counted it
    (/proc/self/io around the strategy's save and load in each rank): a save writes its own file and not
    the other rank's shards; a load reads about half of what one process reads for the whole checkpoint
    (measured here the same way, with DCP's reader: the tiny model's many small tensors make DCP's
    per-tensor overhead large, so both sides go through the same reader).  No rank's host held the whole.
    Fails on the code before FSDP2: rank 0 gathered and wrote everything, and on resume every rank read
    the whole file."""
    root = runs["fsdp"]["root"]
    folder = runs["fsdp"]["run"] / "checkpoints" / "final.dcp"
    tensors = _dcp_tensors(folder)
    before = _io_counters()
    _dcp_tensors(folder)
    whole_read = _io_counters()["read"] - before["read"]
    files = {p.name: p.stat().st_size for p in folder.glob("__*_0.distcp")}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"\n{len(tensors)} tensors, {total / 1e6:.2f} MB; one process reads {whole_read / 1e6:.2f} MB for all; "
          f"the ranks' files {files}")
    # each rank wrote a file of its own, about half of the two
    assert sorted(files) == ["__0_0.distcp", "__1_0.distcp"] and all(f < 0.6 * sum(files.values()) for f in files.values())
    for rank in (0, 1):
        own, other = files[f"__{rank}_0.distcp"], files[f"__{1 - rank}_0.distcp"]
        saves = [r["io"]["written"] for r in _records(root / "probe", rank) if r.get("io", {}).get("what") == "save"]
        loads = [r["io"]["read"] for r in _records(root / "probe_resumed", rank) if r.get("io", {}).get("what") == "load"]
        assert len(saves) == 3 and len(loads) == 1, (saves, loads)  # last at steps 2 and 4, final; one resume
        print(f"rank {rank}: wrote up to {max(saves) / 1e6:.2f} MB per save (its file {own / 1e6:.2f} MB), read "
              f"{loads[0] / 1e6:.2f} MB at the resume ({loads[0] / whole_read:.0%} of the whole's)")
        # a save: its own file, DCP's plan through the process group, rank 0 the metadata -- not the other's shards
        assert own <= max(saves) < own + 0.5 * other, (rank, saves, own, other)
        # a load: about half of what reading the whole takes; reading everything would be ~100%
        assert 0.35 * whole_read < loads[0] < 0.7 * whole_read, (rank, loads, whole_read)


def test_fsdp_in_bf16_mixed_with_a_replicated_teacher(tmp_path):
    """MixedPrecisionPolicy's bf16 gathers under CPU autocast, and fsdp_teacher=replicate: the teacher is
    no FSDP root and holds no DTensor, the trained models are sharded, and the run ends with a sharded
    final checkpoint that consolidates."""
    extra = ["precision=bf16-mixed", "fsdp_teacher=replicate", "steps=2", "checkpoint_every=0", "eval_every=100"]
    _cache(tmp_path, extra)
    _launch("fsdp", tmp_path, tmp_path / "probe", extra=extra, env_extra={"PROBE_LOCKSTEP": "1"})
    for rank in (0, 1):
        rows = _records(tmp_path / "probe", rank)
        assert [r["fsdp_units"] for r in rows if "fsdp_units" in r] == [{"teacher": 0, "generator": 9, "fake": 9}]
        held = [r["held"] for r in rows if "held" in r][0]
        assert held["teacher"]["params"] == 0 and all(0.4 < held[m]["local"] / held[m]["full"] < 0.6 for m in ("generator", "fake"))
    run = _run_dir(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 2 and summary["skipped_steps"] == 0 and summary["ranks_identical"] is True
    final = _final(run)
    assert final["state_dict"] and not (run / "checkpoints" / "last.dcp").exists()
    # what sampling / export read from a run folder: the consolidated file's student, the weight average
    from ddmd_lab.training.restore import load_run

    module = load_run(run)
    weights = module.state_dict()
    assert final["ddmd_student"] and all(torch.equal(weights[k], v) for k, v in final["ddmd_student"].items())


def test_fsdp_refuses_what_it_cannot_run_naming_the_fix():
    from ddmd_lab.backbones.toy import ToyFlowMLP
    from ddmd_lab.config import RunConfig
    from ddmd_lab.errors import UserError
    from ddmd_lab.parallel.fsdp2 import block_classes
    from ddmd_lab.parallel.strategies import PerOptimizerDDP, ShardedFSDP2, make_strategy

    with pytest.raises(UserError, match="with LoRA shards the one base.*set fsdp_teacher=shard"):
        RunConfig.of(strategy="fsdp", lora={"rank": 4}, fsdp_teacher="replicate")
    with pytest.raises(UserError, match="fsdp_teacher must be shard or replicate"):
        RunConfig.of(strategy="fsdp", fsdp_teacher="offload")
    with pytest.raises(UserError, match="strategy=fsdp takes precision.*use precision=bf16-mixed"):
        RunConfig.of(strategy="fsdp", precision="16-mixed")
    with pytest.raises(UserError, match="ToyFlowMLP has none.*use strategy=ddp"):
        block_classes(ToyFlowMLP())
    fsdp = make_strategy(RunConfig.of(strategy="fsdp", fsdp_teacher="replicate", pg_timeout=60).parallel)
    assert isinstance(fsdp, ShardedFSDP2) and fsdp._timeout.total_seconds() == 60 and fsdp.fsdp_teacher == "replicate"
    ddp = make_strategy(RunConfig.of(strategy="auto", devices=2).parallel)
    assert isinstance(ddp, PerOptimizerDDP) and ddp._timeout.total_seconds() == 1800
    assert make_strategy(RunConfig().parallel) == "auto"
    assert RunConfig.of(strategy="fsdp", ema_decay=0.99).optimisation.ema_decay == 0.99  # no longer refused
    assert RunConfig.of(strategy="fsdp", lora={"rank": 4}).optimisation.lora_rank == 4  # tests/test_fsdp_lora.py
    # bf16-mixed: bf16 gathers, float32 reduction, inputs untouched; 32-true casts nothing
    from pytorch_lightning.plugins.precision import MixedPrecision, Precision

    fsdp.precision_plugin = MixedPrecision("bf16-mixed", "cpu")
    policy = fsdp.mixed_precision_policy()
    assert (policy.param_dtype, policy.reduce_dtype, policy.cast_forward_inputs) == (torch.bfloat16, torch.float32, False)
    fsdp.precision_plugin = Precision()
    assert fsdp.mixed_precision_policy().param_dtype is None


def test_consolidate_names_the_fix_without_a_sharded_checkpoint(tmp_path):
    from ddmd_lab.commands.cli import main

    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(Exception, match="no sharded checkpoint.*strategy=fsdp run"):
        main(["--traceback", "consolidate", "--run", str(tmp_path)])
    assert main(["consolidate", "--run", str(tmp_path)]) == 2  # one line on stderr, not a traceback
    # a run that holds only shards: sampling / export say to consolidate; a resume finds the folder
    from ddmd_lab.errors import UserError
    from ddmd_lab.training.checkpointing import resolve_resume
    from ddmd_lab.training.restore import run_checkpoint

    (tmp_path / "checkpoints" / "last.dcp").mkdir()
    (tmp_path / "checkpoints" / "last.dcp" / "meta.pt").write_bytes(b"")
    (tmp_path / "config.yaml").write_text("scale: toy2d\n")
    with pytest.raises(UserError, match="sharded checkpoints.*make consolidate RUN="):
        run_checkpoint(tmp_path)
    assert resolve_resume(str(tmp_path)) == (tmp_path, tmp_path / "checkpoints" / "last.dcp")
    # killed between moving the old folder aside and putting the new one in place: the old one is found
    (tmp_path / "checkpoints" / "last.dcp").rename(tmp_path / "checkpoints" / ".last.dcp.old")
    assert resolve_resume(str(tmp_path))[1] == tmp_path / "checkpoints" / ".last.dcp.old"


# ---- the probe (runs inside each rank) -----------------------------------------------------------

def _probe_main() -> int:
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor
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
        units = {name: sum(isinstance(m, FSDPModule) for m in getattr(self, name).modules())
                 for name in ("teacher", "generator", "fake")}
        if any(units.values()):
            record(fsdp_units=units)
            held = {}
            for name in ("teacher", "generator", "fake"):  # what this rank holds of the blocks' weights
                root = getattr(self, name)
                params = [p for m in root.modules() if isinstance(m, FSDPModule) and m is not root for p in m.parameters()]
                held[name] = {"params": len(params), "dtensors": sum(isinstance(p, DTensor) for p in params),
                              "local": sum(p.to_local().numel() for p in params if isinstance(p, DTensor)),
                              "full": sum(p.numel() for p in params)}
            record(held=held)
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
    from ddmd_lab.parallel.fsdp2 import ShardedFSDP2

    def measured(what, real):
        def wrapper(self, *args, **kwargs):
            before = _io_counters()
            try:
                return real(self, *args, **kwargs)
            finally:
                after = _io_counters()
                record(io={"what": what, **{k: after[k] - before[k] for k in after}})
        return wrapper

    ShardedFSDP2.save_checkpoint = measured("save", ShardedFSDP2.save_checkpoint)
    ShardedFSDP2.load_checkpoint = measured("load", ShardedFSDP2.load_checkpoint)
    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(_probe_main())
