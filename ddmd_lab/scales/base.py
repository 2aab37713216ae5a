"""The Scale contract: what a run distils (teacher, conditions, evaluation) at one size.

A scale module provides
  ``load_teacher(cfg)``        the frozen teacher (from its cache or checkpoint folder),
  ``condition_loader(cfg)``    one batch of conditions (and real data) per training step,
  ``make_evaluator(cfg)``      the metrics of a student on fixed noise and conditions (EVAL_SEED),
and, where they apply,
  ``load_init(cfg)``           what the generator and the fake start from when not the teacher's copies,
  ``prepare(cfg, fit)``        train and cache what the scale's runs need (a teacher, a classifier); the
                               training layer hands in ``fit`` (training.fitting.Fitters), so no scale
                               knows Lightning.
Nothing else in a run knows which scale it is.
"""
from __future__ import annotations

import importlib

import torch

from ddmd_lab.core.streams import stream_seed
from ddmd_lab.errors import UserError

EVAL_SEED = 1234  # every scale's evaluation noise, labels and prompts: the same for every run


def evaluation_generator(seed: int = EVAL_SEED) -> torch.Generator:
    """The re-noising noise between a student's steps at evaluation, fresh for each evaluation: the
    evaluator owns all its noise, so the same weights give the same metrics whatever ran before.
    (Another ``seed``: the same evaluation on other noise, to measure the evaluation's own noise.)"""
    return torch.Generator().manual_seed(stream_seed(seed, 0, "evaluation", 0))

SCALES = {"toy2d": "ddmd_lab.scales.toy2d", "fashion": "ddmd_lab.scales.images", "mnist": "ddmd_lab.scales.images",
          "zimage": "ddmd_lab.scales.text2image", "lumina2": "ddmd_lab.scales.text2image", "sdxl": "ddmd_lab.scales.text2image"}

TEXT_TO_IMAGE = tuple(name for name, module in SCALES.items() if module == "ddmd_lab.scales.text2image")


def get_scale(name: str):
    if name not in SCALES:
        raise UserError(f"unknown scale {name!r}; known scales: {', '.join(sorted(SCALES))}.")
    return importlib.import_module(SCALES[name])
