"""A finished (or interrupted) run folder back in memory: its config, its checkpoint, its module or
its student.  The one place that knows where a run keeps them (sampling, export, spectra,
diagnostics and fine-tuning all start here)."""
from __future__ import annotations

from pathlib import Path

import torch

from ddmd_lab.config import RunConfig, read_config
from ddmd_lab.errors import UserError
from ddmd_lab.scales.base import TEXT_TO_IMAGE
from ddmd_lab.scales.text2image import load_model
from ddmd_lab.training.checkpointing import student_state
from ddmd_lab.training.module import DistillModule
from ddmd_lab.training.networks import load_networks
from ddmd_lab.training.sharded_checkpoint import whole_folder
from ddmd_lab.util.io import safe_torch_load

RUN_HINT = "runs/<scale>/<arm>/<run-id>"


def run_config(run_dir: Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml); pass RUN={RUN_HINT}.")
    return read_config(run_dir / "config.yaml")


def run_checkpoint(run_dir: Path, missing: str | None = None) -> Path:
    """The run's final checkpoint, else its last one; ``missing`` says what to do when it has neither."""
    run_dir = Path(run_dir)
    for name in ("final.ckpt", "last.ckpt"):
        if (run_dir / "checkpoints" / name).is_file():
            return run_dir / "checkpoints" / name
    if whole_folder(run_dir / "checkpoints", "final") or whole_folder(run_dir / "checkpoints", "last"):
        raise UserError(f"{run_dir} holds sharded checkpoints (strategy=fsdp), read by one rank each; write its single-file "
                        f"student first with make consolidate RUN={run_dir}.")
    raise UserError(missing or f"{run_dir} has no checkpoints/final.ckpt or last.ckpt; pass a run folder that saved a "
                    f"checkpoint ({RUN_HINT}).")


def load_run(run_dir: Path, checkpoint: str = "final.ckpt") -> DistillModule:
    """The run's DistillModule (teacher, generator, fake) with the weights of ``checkpoint``."""
    cfg = read_config(run_dir / "config.yaml")
    path = run_dir / "checkpoints" / checkpoint
    if not path.is_file() and whole_folder(path.parent, path.stem):
        raise UserError(f"{path} is kept as shards (strategy=fsdp); write it as one file first with make consolidate "
                        f"RUN={run_dir}.")
    if not path.is_file():
        raise UserError(f"{path} does not exist; the run has not finished (resume it with RESUME={run_dir}).")
    state = safe_torch_load(path, "use a checkpoint ddmd_lab wrote (the run's own checkpoints/final.ckpt)",
                            "checkpoint", mmap=True)  # first: a refused checkpoint loads no teacher
    teacher, init = load_networks(cfg)
    module = DistillModule(teacher, cfg, init)
    module.load_weights(state)
    return module.eval()


def require_text_scale(cfg: RunConfig) -> None:
    if cfg.run.scale not in TEXT_TO_IMAGE:
        raise UserError(f"sampling from prompts needs a text-to-image scale ({', '.join(TEXT_TO_IMAGE)}), not {cfg.run.scale!r}; "
                        "image-scale runs keep their sample grids in <run>/samples/.")


def load_pipeline_student(cfg: RunConfig, ckpt: Path):
    """(the pipeline, the student) from a text-to-image run's checkpoint, holding one copy of the weights:
    full fine-tuning loads the generator's weights into the loaded network itself; LoRA rebuilds the
    adapters on the loaded teacher (checkpoints hold no frozen base) and loads them."""
    # read first: a refused checkpoint stops before the pipeline loads
    checkpoint = safe_torch_load(ckpt, "sample from a checkpoint ddmd_lab wrote (the run's own checkpoints/final.ckpt)",
                                 "checkpoint", mmap=True)
    model = load_model(cfg, fresh=True)
    if int(cfg.optimisation.lora.get("rank", 0)) > 0:
        module = DistillModule(model.backbone, cfg)
        module.load_weights(checkpoint)  # refuses a checkpoint of another teacher
        return model, module.generator
    weights = {k[len("generator."):]: v for k, v in student_state(checkpoint).items() if k.startswith("generator.")}
    model.backbone.load_state_dict(weights)
    return model, model.backbone


def default_device(device: str | None = None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")
