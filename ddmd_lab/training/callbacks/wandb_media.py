"""What W&B gets beyond scalars: sample grids at each evaluation, and at the end
the run's figures (spectra) and the final metrics (as a table and as ``final_<key>``
summary values the dashboard's bar charts read).  A no-op without a WandbLogger.
"""
from __future__ import annotations

from pathlib import Path


def _wandb_loggers(loggers) -> list:
    from pytorch_lightning.loggers import WandbLogger  # deferred: it imports wandb (seconds); only W&B runs need it

    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def log_step_media(loggers, run_dir: Path, step: int) -> None:
    grid = Path(run_dir) / "samples" / f"step_{step:07d}.png"
    for lg in _wandb_loggers(loggers):
        if grid.is_file():
            lg.log_image(key="media/samples", images=[str(grid)], step=step, caption=[f"step {step}"])


def log_final(loggers, run_dir: Path, figures: dict[str, str], summary: dict) -> None:
    """``figures``: W&B key -> PNG file name in the run folder (plots.run_figures)."""
    scalars = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
    step = int(summary.get("step", 0))
    for lg in _wandb_loggers(loggers):
        for key, name in figures.items():
            lg.log_image(key=f"media/{key}", images=[str(Path(run_dir) / name)], step=step)
        lg.log_table(key="final", columns=list(scalars), data=[list(scalars.values())], step=step)
        lg.experiment.summary.update({f"final_{k}": v for k, v in scalars.items()})
