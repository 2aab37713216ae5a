"""A tiny image scale (mnist-5k, a 40-step teacher): small and fast end-to-end runs."""
from ddmd_lab.config import load_config, parse_overrides

TINY = ["teacher={size: tiny, steps: 40, batch_size: 32, eval_samples: 40, alphas: [1.0, 2.0], ode_steps: 4}",
        "data={real_eval_images: 200, fid_reference_images: 100, classifier_epochs: 1}",
        "steps=6", "ttur=3", "batch_size=8", "eval_every=3", "eval_samples=40", "fid_samples=40",
        "checkpoint_every=3", "log_every=1", "progress_bar=false", "wandb=disabled"]


def image_cfg(dirs: list[str], arm: str, *extra: str):
    return load_config("mnist", arm, parse_overrides(TINY + dirs + list(extra)))
