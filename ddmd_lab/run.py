"""Running one arm: a run folder, a Trainer, the DistillModule, the callbacks."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from .config import RunConfig, save_config
from .eval.callback import EvalCallback
from .io import new_run_dir
from .module import DistillModule
from .scales import get_scale


def make_loggers(cfg: RunConfig, run_dir: Path) -> list:
    loggers: list = [CSVLogger(run_dir, name="logs", version="")]
    if cfg.wandb != "disabled":
        # Offline unless the user asked for online: nothing may wait on the network.
        if cfg.wandb == "offline":
            os.environ["WANDB_MODE"] = "offline"
        from pytorch_lightning.loggers import WandbLogger

        loggers.append(WandbLogger(project="ddmd_lab", name=run_dir.name, save_dir=str(run_dir),
                                   offline=cfg.wandb == "offline", config=cfg.to_dict(),
                                   group=f"{cfg.scale}/{cfg.arm.name}"))
    return loggers


# The frozen teacher is in eval mode on purpose; Lightning warns about it.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


def run_ablation(cfg: RunConfig) -> Path:
    scale = get_scale(cfg.scale)
    teacher = scale.load_teacher(cfg)
    run_dir = new_run_dir(Path(cfg.runs_dir), cfg.scale, cfg.arm.name, cfg.seed)
    save_config(cfg, run_dir / "config.yaml")
    pl.seed_everything(cfg.seed, verbose=False)
    module = DistillModule(teacher, cfg)
    checkpoints = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        logger=make_loggers(cfg, run_dir),
        callbacks=[EvalCallback(scale.make_evaluator(cfg), run_dir, cfg.eval_every), checkpoints],
        log_every_n_steps=10,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, scale.condition_loader(cfg))
    trainer.save_checkpoint(run_dir / "checkpoints" / "final.ckpt")
    return run_dir


def print_summary(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"\nrun folder: {run_dir}")
    for k, v in summary.items():
        print(f"  {k:>20}: {v:.4g}" if isinstance(v, float) else f"  {k:>20}: {v}")
    print("tables: make tables   (W&B offline logs: wandb sync " f"{run_dir}/wandb/offline-run-*)")
