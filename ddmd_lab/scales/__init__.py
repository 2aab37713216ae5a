"""Scales: what a run distils (teacher, conditions, evaluation) at one size.

A scale module provides ``load_teacher(cfg)``, ``condition_loader(cfg)`` and
``make_evaluator(cfg)``; nothing else in a run knows which scale it is.
"""
from __future__ import annotations

import importlib

from ..errors import UserError

SCALES = {"toy2d": "ddmd_lab.scales.toy2d", "fashion": "ddmd_lab.scales.images", "mnist": "ddmd_lab.scales.images",
          "zimage": "ddmd_lab.scales.text2image", "lumina2": "ddmd_lab.scales.text2image", "sdxl": "ddmd_lab.scales.text2image"}


TEXT_TO_IMAGE = tuple(name for name, module in SCALES.items() if module == "ddmd_lab.scales.text2image")


def get_scale(name: str):
    if name not in SCALES:
        raise UserError(f"unknown scale {name!r}; known scales: {', '.join(sorted(SCALES))}.")
    return importlib.import_module(SCALES[name])
