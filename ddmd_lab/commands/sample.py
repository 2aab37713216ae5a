"""``make sample``: images from prompts with a run's student or a scale's teacher."""
from __future__ import annotations

import time
from pathlib import Path

from ddmd_lab.commands.common import add_sampling_options, sampler_from_args
from ddmd_lab.data.prompts import read_prompts
from ddmd_lab.errors import UserError


def cmd_sample(args) -> None:
    from ddmd_lab.training.generate import write_samples  # deferred: Lightning, transformers

    prompts = list(args.prompt)
    if args.prompts:
        prompts += read_prompts(args.prompts)
    if not prompts:
        raise UserError('no prompts: PROMPT="a cat on a sofa" (repeatable with --prompt) or PROMPTS=<file, one per line>.')
    sampler = sampler_from_args(args)
    where = Path(args.run) / "samples_cli" if args.run else Path(sampler.cfg.run.runs_dir) / sampler.cfg.run.scale / "teacher_samples"
    out = Path(args.out) if args.out else where / f"{time.strftime('%Y%m%d-%H%M%S')}-s{args.seed or 0}"
    if out.exists():
        raise UserError(f"{out} already exists; samples never overwrite a folder -- pass another OUT.")
    print(f"samples written: {write_samples(sampler, prompts, out, args.per_prompt, args.seed or 0)}")


def register(sub) -> None:
    p = sub.add_parser("sample", help="images from prompts with a run's student or a scale's teacher")
    add_sampling_options(p)
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", help="a file of prompts (one per line) or a COCO captions json")
    p.add_argument("--per-prompt", type=int, default=1)
    p.add_argument("--out", help="a new folder (default: <run>/samples_cli/<time>)")
    p.set_defaults(func=cmd_sample)
