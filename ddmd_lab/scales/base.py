"""Scales: what a run distils (teacher, conditions, evaluation) at one size.

A scale module provides ``load_teacher(cfg)``, ``condition_loader(cfg)`` and
``make_evaluator(cfg)``, and, where the trained networks do not start as copies of
the frozen teacher, ``load_init(cfg)``; nothing else in a run knows which scale it is.
"""
from __future__ import annotations

import importlib

from ddmd_lab.errors import UserError

SCALES = {"toy2d": "ddmd_lab.scales.toy2d", "fashion": "ddmd_lab.scales.images", "mnist": "ddmd_lab.scales.images",
          "zimage": "ddmd_lab.scales.text2image", "lumina2": "ddmd_lab.scales.text2image", "sdxl": "ddmd_lab.scales.text2image"}


TEXT_TO_IMAGE = tuple(name for name, module in SCALES.items() if module == "ddmd_lab.scales.text2image")


def get_scale(name: str):
    if name not in SCALES:
        raise UserError(f"unknown scale {name!r}; known scales: {', '.join(sorted(SCALES))}.")
    return importlib.import_module(SCALES[name])


def load_networks(cfg):
    """(the frozen teacher, what the generator and the fake model start from), for DistillModule;
    the second is None where they start as copies of the teacher (every scale but toy2d's exact teacher)."""
    scale = get_scale(cfg.scale)
    load_init = getattr(scale, "load_init", None)
    return scale.load_teacher(cfg), load_init(cfg) if load_init is not None else None
