"""``make plan / embed``: a text-to-image recipe's memory per GPU; its prompts' text conditions once."""
from __future__ import annotations

from pathlib import Path

from ddmd_lab.commands.common import DEFAULT_ARM, add_run_options, config_from_args
from ddmd_lab.errors import UserError
from ddmd_lab.scales.base import TEXT_TO_IMAGE


def cmd_plan(args) -> None:
    # deferred: Lightning and transformers (the parallel strategies, the real architectures)
    from ddmd_lab.planning.memory_plan import PLAN_FILE, format_table, memory_plan, write_plan

    cfg = config_from_args(args, args.arm or DEFAULT_ARM)
    if cfg.run.scale not in TEXT_TO_IMAGE:
        raise UserError(f"a memory plan is for the GPU scales: make plan SCALE={'|'.join(TEXT_TO_IMAGE)}.")
    plan = memory_plan(cfg, gpu_gib=args.gpu_gib, fsdp_teacher=args.fsdp_teacher, adamw=args.adamw)
    print(format_table(plan))
    path = Path(cfg.run.runs_dir) / cfg.run.scale / PLAN_FILE
    replaced = write_plan(plan, path)
    print(f"\nmemory plan written: {path}" + (" (replaced the previous one: a plan is derived from the config "
                                                 "and rebuilt by make plan)" if replaced else ""))


def cmd_embed(args) -> None:
    cfg = config_from_args(args, DEFAULT_ARM)
    if cfg.run.scale not in TEXT_TO_IMAGE:
        raise UserError(f"prompt embeddings are for the text-to-image scales: make embed SCALE={'|'.join(TEXT_TO_IMAGE)}.")
    from ddmd_lab.scales.text2image import embed  # deferred: the text-to-image backbones (diffusers)

    embed(cfg)
    print("train on them with SET=\"data.precompute=true\" (same teacher and data settings): no text encoder is loaded")


def register(sub) -> None:
    p = sub.add_parser("plan", help="per-GPU memory of a text-to-image recipe, from its real architecture on the "
                       "meta device (no GPU, no weights); written to <runs_dir>/<scale>/memory_plan.json")
    p.add_argument("--arm", default=None, help=f"arm name (default {DEFAULT_ARM})")
    add_run_options(p)
    p.add_argument("--gpu-gib", type=float, default=None, help="memory of one GPU in GiB (default 80; an H200: 140)")
    p.add_argument("--fsdp-teacher", choices=("shard", "replicate"), default=None,
                   help="under strategy=fsdp: the frozen teacher sharded like the trained weights, or replicated "
                   "(default: the config's fsdp_teacher, as the run does)")
    p.add_argument("--adamw", choices=("foreach", "fused"), default=None,
                   help="the AdamW implementation to plan for (default foreach, what the run builds on CUDA: its "
                   "step holds one model-sized temporary; fused holds none)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("embed", help="text conditions of data.prompts (and the eval prompts) computed once into "
                       "memory-mapped bfloat16 shards under <cache_dir>/embeddings, read by data.precompute=true runs")
    add_run_options(p)
    p.set_defaults(func=cmd_embed)
