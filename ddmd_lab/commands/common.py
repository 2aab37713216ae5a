"""What several commands share: the scale / steps / seed / --set options and the config they make,
the sampling options and the sampler (a run's student or a scale's teacher) they name."""
from __future__ import annotations

import argparse

from ddmd_lab.config import RunConfig, load_config, parse_overrides
from ddmd_lab.errors import UserError

DEFAULT_ARM = "decoupled_hybrid"


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", default=None, help="scale (default toy2d)")
    p.add_argument("--steps", type=int, help="training steps (critic steps); generator steps = ceil(steps/ttur)")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, value read as YAML (repeatable), e.g. --set alpha=4 --set arm.normaliser=per_term")


def config_from_args(args, arm: str) -> RunConfig:
    overrides = parse_overrides(args.overrides)
    for key in ("steps", "seed"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return load_config(args.scale or "toy2d", arm, overrides)


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="a run folder: sample its student (default: the scale's teacher)")
    add_run_options(p)
    p.add_argument("--sample-steps", type=int, help="network evaluations (student default: its own; teacher: the pipeline's)")
    p.add_argument("--guidance", type=float, help="CFG in the family's pipeline convention: zimage g (alpha = g + 1, "
                   "0 = none), lumina2/sdxl alpha (<= 1 = none); students default to none")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")


def sampler_from_args(args):
    from ddmd_lab.training.generate import student_sampler, teacher_sampler  # deferred: diffusers, Lightning

    if args.run:
        if args.scale or args.overrides:
            raise UserError("RUN brings its own scale and settings; drop SCALE / SET, or sample the teacher without RUN.")
        return student_sampler(args.run, args.sample_steps, args.guidance, args.device)
    return teacher_sampler(config_from_args(args, DEFAULT_ARM), args.sample_steps, args.guidance, args.device)
