"""The networks a run starts from: the scale's frozen teacher and what its generator and fake model start
from, with whatever the scale caches (teacher, classifier) trained first where it is missing."""
from __future__ import annotations

from pathlib import Path

from ddmd_lab.config import RunConfig
from ddmd_lab.errors import UserError
from ddmd_lab.scales.base import get_scale
from ddmd_lab.training.fitting import Fitters


def prepare(cfg: RunConfig) -> None:
    """Train and cache what the scale's runs need and its cache lacks (a no-op where nothing is trained)."""
    scale = get_scale(cfg.run.scale)
    if hasattr(scale, "prepare"):
        scale.prepare(cfg, Fitters)


def load_networks(cfg: RunConfig):
    """(the frozen teacher, what the generator and the fake model start from), for DistillModule; the second
    is None where they start as copies of the teacher (every scale but toy2d's exact teacher)."""
    prepare(cfg)
    scale = get_scale(cfg.run.scale)
    load_init = getattr(scale, "load_init", None)
    return scale.load_teacher(cfg), load_init(cfg) if load_init is not None else None


def retrain_teacher(cfg: RunConfig) -> Path:
    """Train the scale's teacher again (``make teacher --retrain``); the old cache stays beside the new one."""
    scale = get_scale(cfg.run.scale)
    if not hasattr(scale, "train_teacher"):
        raise UserError(f"scale {cfg.run.scale!r} distils a pretrained teacher (teacher.source); there is none to train.")
    return scale.train_teacher(cfg, Fitters)


def ensure_classifier(cfg: RunConfig) -> Path:
    """The image scale's classifier, trained where it is not cached."""
    scale = get_scale(cfg.run.scale)
    if not hasattr(scale, "classifier_dir"):
        raise UserError(f"scale {cfg.run.scale!r} has no classifier; use an image scale (fashion or mnist).")
    if not scale.classifier_cached(cfg):
        scale.train_scale_classifier(cfg, Fitters)
    return scale.classifier_dir(cfg)
