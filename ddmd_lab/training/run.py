"""Running one arm: a run folder, a Trainer, the DistillModule, the callbacks.

One run folder per job: Lightning's launcher hands rank 0's to the ranks it starts (DDMD_RUN_DIR); under
srun / torchrun every rank names the same one from the job's id (job_run_dir).  The strategies take
the config's pg_timeout (parallel/strategies.py)."""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities import rank_zero_only

from ddmd_lab.config import RunConfig, read_config, save_config
from ddmd_lab.errors import NonFiniteError, UserError
from ddmd_lab.parallel.dcp_state import read_meta
from ddmd_lab.parallel.ranks import external_job
from ddmd_lab.parallel.strategies import make_strategy
from ddmd_lab.planning.memory_plan import write_run_plan
from ddmd_lab.report.plots import run_figures
from ddmd_lab.report.run_record import RunRecord
from ddmd_lab.scales.base import TEXT_TO_IMAGE, get_scale
from ddmd_lab.scales.text2image import load_model
from ddmd_lab.training.callbacks.diagnostics import DiagnosticsCallback
from ddmd_lab.training.callbacks.evaluation import EvalCallback
from ddmd_lab.training.callbacks.progress import StepProgressBar
from ddmd_lab.training.checkpointing import AtomicCheckpoint, resolve_resume
from ddmd_lab.training.module import DistillModule
from ddmd_lab.training.networks import load_networks
from ddmd_lab.training.sharded_checkpoint import CONSOLIDATED
from ddmd_lab.util.io import atomic_write_text, new_run_dir, safe_torch_load


def make_loggers(cfg: RunConfig, run_dir: Path) -> list:
    loggers: list = [CSVLogger(run_dir, name="logs")]  # logs/version_<k>: a resume never overwrites
    if cfg.run.wandb != "disabled":
        # Offline unless the user asked for online: nothing may wait on the network.
        if cfg.run.wandb == "offline":
            os.environ["WANDB_MODE"] = "offline"
        import wandb  # deferred: wandb takes seconds to import; only a W&B logger needs it
        from pytorch_lightning.loggers import WandbLogger  # deferred: it imports wandb (seconds); only W&B runs need it

        # W&B's banners off: offline, the run's summary says how to sync (silent); online, its link stays (quiet)
        settings = wandb.Settings(silent=True) if cfg.run.wandb == "offline" else wandb.Settings(quiet=True)
        logger = WandbLogger(project="ddmd_lab", name=run_dir.name, save_dir=str(run_dir),
                             offline=cfg.run.wandb == "offline", config=cfg.to_dict(),
                             group=f"{cfg.run.scale}/{cfg.arm.name}", settings=settings)
        # Lightning passes wandb.init an `anonymous` it no longer reads, and W&B warns about it at every run
        # (wandb/wandb#10909 names Lightning's logger): leave it out
        getattr(logger, "_wandb_init", {}).pop("anonymous", None)
        loggers.append(logger)
    return loggers


# The frozen teacher is in eval mode on purpose; Lightning warns about it.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
# Resuming mid-epoch is exact here (data.steps.ResumeSampler); Lightning cannot know that.
warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")


# Lightning's ddp launcher starts ranks 1.. by re-running this command; they inherit the
# environment, so the folder rank 0 made is handed over here.  Under srun / torchrun, where
# no rank starts another, every rank names the same folder from the job (job_run_dir); set
# this to choose it yourself.
RUN_DIR_ENV = "DDMD_RUN_DIR"


def job_run_dir(cfg: RunConfig) -> tuple[Path, int] | None:
    """(the run folder every rank of an externally launched job names alike, this process's global rank):
    runs/<scale>/<arm>/<job>-s<seed>, from the job's id (parallel/ranks.external_job); None elsewhere."""
    job = external_job()
    if job is None:
        return None
    return Path(cfg.run.runs_dir) / cfg.run.scale / cfg.arm.name / f"{job[0]}-s{cfg.run.seed}", job[1]


def run_ablation(cfg: RunConfig, callbacks: tuple = ()) -> Path:
    """A new run in a new folder (made only once the teacher and data load).  ``callbacks``: extra
    Lightning callbacks, first in the list (make bench's phase timer)."""
    check_run_inputs(cfg)
    announce(cfg, "run")
    teacher, init = load_networks(cfg)
    handed_over, job = os.environ.get(RUN_DIR_ENV), job_run_dir(cfg)
    if handed_over or job:
        run_dir = Path(handed_over) if handed_over else job[0]
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = new_run_dir(Path(cfg.run.runs_dir), cfg.run.scale, cfg.arm.name, cfg.run.seed)
    if not (run_dir / "config.yaml").exists() and (job is None or job[1] == 0):  # one writer per job
        save_config(cfg, run_dir / "config.yaml")
    plan_run(cfg, run_dir)
    if handed_over or job or not _distributed(cfg):
        return _fit(cfg, run_dir, teacher, init, callbacks=callbacks)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # for the ranks the launcher starts during fit
    try:
        return _fit(cfg, run_dir, teacher, init, callbacks=callbacks)
    finally:  # the next run of a sweep in this process gets a folder of its own
        del os.environ[RUN_DIR_ENV]


def _distributed(cfg: RunConfig) -> bool:
    p = cfg.parallel
    return p.strategy != "auto" or p.num_nodes > 1 or not (p.devices in (1, "1") or p.devices == [0])


def plan_run(cfg: RunConfig, run_dir: Path) -> None:
    """memory_plan.json of a text-to-image run: the plan of the teacher just loaded (load_model keeps it)."""
    if cfg.run.scale in TEXT_TO_IMAGE:
        write_run_plan(cfg, run_dir, load_model(cfg, training=True))


def resume_ablation(target: str, scale: str | None = None, arm: str | None = None) -> Path:
    """Continue an interrupted run in its own folder, from its last checkpoint."""
    run_dir, ckpt = resolve_resume(target)
    cfg = read_config(run_dir / "config.yaml")
    if (scale and scale != cfg.run.scale) or (arm and arm != cfg.arm.name):
        raise UserError(f"RESUME={target} is a run of arm {cfg.arm.name!r} at scale {cfg.run.scale!r}, not "
                        f"{arm or cfg.arm.name!r} at {scale or cfg.run.scale!r}; drop ARM/SCALE or pass the run's own.")
    fix = "resume from another checkpoint of the run (one ddmd_lab wrote), or start a new run"
    # a folder of shards (strategy=fsdp): its meta.pt holds the counters; the shards are read by every rank later
    checkpoint = read_meta(ckpt) if ckpt.is_dir() else safe_torch_load(ckpt, fix, "checkpoint", mmap=True)
    try:
        step = checkpoint["ddmd_counters"]["step_count"]
    except (KeyError, TypeError):
        raise UserError(f"checkpoint {ckpt} holds no ddmd_lab step counter, so it is not a checkpoint of a "
                        f"distillation run; {fix}.") from None
    if CONSOLIDATED in checkpoint:
        raise UserError(f"{ckpt} was consolidated from {checkpoint[CONSOLIDATED]} for sampling and holds no optimiser "
                        f"states; resume from the run folder (RESUME={run_dir}), which reads the sharded checkpoint.")
    del checkpoint
    check_run_inputs(cfg)
    announce(cfg, f"resuming {run_dir} at step {step}:")
    for rows in ("metrics.csv", "diagnostics.csv"):
        _drop_rows_after(run_dir / rows, step)
    for partial in (run_dir / "checkpoints").glob(".*.tmp"):  # half-written by the killed process
        shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
    return _fit(cfg, run_dir, *load_networks(cfg), ckpt_path=ckpt, start_step=step)


@rank_zero_only
def announce(cfg: RunConfig, what: str) -> None:
    """One line before the work starts: what is being run."""
    print(f"{what} {cfg.arm.name} at scale {cfg.run.scale}: {cfg.schedule.steps} steps ({cfg.schedule.generator_steps} generator steps, "
          f"ttur {cfg.schedule.ttur}), alpha {cfg.objective.alpha:g}, batch {cfg.schedule.batch_size}, seed {cfg.run.seed}", flush=True)


def check_run_inputs(cfg: RunConfig) -> None:
    """The scale's inputs besides the weights (its ``check_inputs``, where it has one), checked before
    any model loads: a bad prompts file or folder fails in seconds, not after minutes of loading."""
    check = getattr(get_scale(cfg.run.scale), "check_inputs", None)
    if check is not None:
        check(cfg)
    if cfg.objective.alpha < 1 and cfg.arm.uses_ca:
        warnings.warn(f"alpha={cfg.objective.alpha:g} is below 1, and arm {cfg.arm.name!r} uses the CA term: its (alpha - 1) "
                      "factor turns negative, so CA pushes samples away from the conditional (anti-guidance); use "
                      "alpha >= 1, or an arm without CA (dm_only) for alpha = 1.", UserWarning, stacklevel=2)


def _drop_rows_after(path: Path, step: int) -> None:
    """Rows written after the checkpoint will be recomputed; the full file is kept aside."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = lines[:1] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) <= step]
    if len(keep) < len(lines):
        n = len(list(path.parent.glob(f"{path.name}.before-resume-*")))
        shutil.copyfile(path, path.with_name(f"{path.name}.before-resume-{n + 1}"))
        atomic_write_text(path, "".join(keep))


def _fit(cfg: RunConfig, run_dir: Path, teacher, init=None, ckpt_path: Path | None = None, start_step: int = 0,
         callbacks: tuple = ()) -> Path:
    scale = get_scale(cfg.run.scale)
    allow_tf32()
    pl.seed_everything(cfg.run.seed, verbose=False)
    module = DistillModule(teacher, cfg, init)
    checkpoints = AtomicCheckpoint(run_dir / "checkpoints", cfg.run.checkpoint_every)
    announce_cpu_processes(cfg)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator=cfg.parallel.accelerator,
        devices=cfg.parallel.devices,
        strategy=make_strategy(cfg.parallel),
        precision=cfg.parallel.precision,
        num_nodes=cfg.parallel.num_nodes,
        use_distributed_sampler=False,  # every rank reads its own batch of each step (data/steps.py)
        logger=make_loggers(cfg, run_dir),
        # order matters: the checkpoint after a step already holds that step's evaluation
        callbacks=[*callbacks, *([DiagnosticsCallback(run_dir)] if cfg.evaluation.diagnostics_every else []),  # its rows before the checkpoint
                   EvalCallback(scale.make_evaluator(cfg, run_dir), run_dir, cfg.evaluation.eval_every, figures=run_folder_figures),
                   checkpoints, *([StepProgressBar("distillation")] if cfg.run.progress_bar else [])],
        log_every_n_steps=cfg.evaluation.log_every,
        enable_progress_bar=cfg.run.progress_bar,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    try:
        # weights_only: Lightning reads the checkpoint (already read safely above) without running pickled code
        trainer.fit(module, scale.condition_loader(cfg, start_step), ckpt_path=ckpt_path, weights_only=True)
        checkpoints.save(trainer, "final.ckpt")
    except NonFiniteError as exc:  # the folder and its checkpoints stay; say how to go on
        raise NonFiniteError(f"{str(exc).rstrip('.')}: {after_nonfinite(cfg, run_dir)}.") from exc
    finally:
        _finish_wandb(trainer.loggers)
    return run_dir


def after_nonfinite(cfg: RunConfig, run_dir: Path) -> str:
    """How to go on after a NonFiniteError: a new run with the cause changed, or this run resumed from its last
    checkpoint once its config.yaml changed (a resume restores the optimisers, learning rates included)."""
    new = f'start anew with make ablation SCALE={cfg.run.scale} ARM={cfg.arm.name} SET="alpha=..."'
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        return (f"{new} (the run stopped before its first checkpoint, checkpoint_every={cfg.run.checkpoint_every}; "
                f"its folder {run_dir} stays)")
    return (f"{new}, or set alpha / normaliser_eps / grad_clip in {run_dir / 'config.yaml'} and continue from its last "
            f"checkpoint with make ablation RESUME={run_dir} (a resume keeps the checkpoint's learning rates)")


@rank_zero_only
def announce_cpu_processes(cfg: RunConfig) -> None:
    """One line where a CPU run asks for more processes than the machine has cores: what will run (Lightning
    gives each process cores // processes threads unless OMP_NUM_THREADS says otherwise)."""
    devices, cores = cfg.parallel.devices, os.cpu_count() or 1
    n = int(devices) if isinstance(devices, int) or (isinstance(devices, str) and devices.strip().isdigit()) else None
    if cfg.parallel.accelerator == "cpu" and n is not None and n > cores:
        threads = os.environ.get("OMP_NUM_THREADS") or max(1, cores // n)
        print(f"devices={n} on {cores} CPU cores: {n} processes will run, {threads} thread(s) each, sharing the cores",
              flush=True)


def run_folder_figures(run_dir: Path, cfg: RunConfig) -> dict[str, str]:
    """The report's figures of a finished run (the evaluation callback hands over its folder)."""
    return run_figures(RunRecord(run_dir, cfg))


def allow_tf32() -> None:
    """TF32 for float32 matmuls and convolutions on GPUs (Ampere+): what autocast leaves in float32 (norms, the
    x0 conversions' inputs, the float32 master weights' optimiser math) runs on tensor cores.  The
    objective's float64 and float32 conversions are elementwise and unaffected."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _finish_wandb(loggers) -> None:
    """Close this run's W&B run: Lightning leaves it open, and the next run of a sweep
    in the same process would otherwise log into it."""
    from pytorch_lightning.loggers import WandbLogger  # deferred: it imports wandb (seconds); only W&B runs need it

    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb  # deferred: wandb takes seconds to import; only a W&B logger needs it

        wandb.finish()


@rank_zero_only
def print_summary(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"\nrun folder: {run_dir}")
    for k, v in summary.items():
        print(f"  {k:>20}: {v:.4g}" if isinstance(v, float) else f"  {k:>20}: {v}")
    scale = run_dir.parent.parent.name
    print("see it:")
    print(f"  tables + report   make tables SCALE={scale}; make report SCALE={scale}  (reports/{scale}/README.md)")
    print(f"  notebooks         make notebooks SCALE={scale}  (or open analysis/variance.ipynb, analysis/spectra.ipynb)")
    if scale in TEXT_TO_IMAGE:
        print(f"  samples           make sample RUN={run_dir} PROMPT=\"a cat on a sofa\"")
        print(f"  COCO-10k          make eval-coco RUN={run_dir} COCO=/data/coco CLIP_WEIGHTS=<open_clip file>")
    if (run_dir / "term_spectra.npz").is_file():
        print(f"  spectra           {run_dir / 'term_spectra.png'} (re-measure: make spectra RUN={run_dir})")
    if list(run_dir.glob("wandb/offline-run-*")):
        print(f"  W&B               wandb sync {run_dir}/wandb/offline-run-*; make dashboard WANDB_ENTITY=<you>")
