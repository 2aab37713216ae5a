"""Command line: ``python -m ddmd_lab <command>`` (the Makefile's targets call these)."""
from __future__ import annotations

import argparse
import sys

from ddmd_lab.errors import NonFiniteError, UserError


DEFAULT_ARM = "decoupled_hybrid"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", default=None, help="scale (default toy2d)")
    p.add_argument("--steps", type=int, help="training steps (critic steps); generator steps = ceil(steps/ttur)")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, value read as YAML (repeatable), e.g. --set alpha=4 --set arm.normaliser=per_term")


def _config(args, arm: str):
    from ddmd_lab.config import load_config, parse_overrides

    overrides = parse_overrides(args.overrides)
    for key in ("steps", "seed"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return load_config(args.scale or "toy2d", arm, overrides)


def cmd_teacher(args) -> None:
    from ddmd_lab.scales.base import get_scale

    cfg = _config(args, "decoupled_hybrid")
    scale = get_scale(cfg.scale)
    folder = scale.teacher_dir(cfg)
    if scale.teacher_cached(cfg) and not args.retrain:
        print(f"teacher cached at {folder} (use --retrain to train again)")
    else:
        from ddmd_lab.training.networks import train_teacher  # deferred: Lightning

        folder = train_teacher(cfg)
        print(f"teacher trained and saved to {folder}")
    report = folder / "teacher.json"
    if not report.is_file():  # the process that trained it stopped before its report
        scale.write_teacher_report(cfg)
    print(report.read_text())


def cmd_classifier(args) -> None:
    from ddmd_lab.scales.base import get_scale

    cfg = _config(args, DEFAULT_ARM)
    from ddmd_lab.training.networks import train_classifier  # deferred: Lightning

    print((train_classifier(cfg) / "classifier.json").read_text())


def cmd_ablation(args) -> None:
    from ddmd_lab.training.run import print_summary, resume_ablation, run_ablation

    if not args.resume:
        print_summary(run_ablation(_config(args, args.arm or DEFAULT_ARM)))
        return
    if args.overrides or args.steps is not None or args.seed is not None:
        raise UserError("RESUME continues a run exactly as configured; drop STEPS, SEED and SET, or start a new run.")
    target = args.resume
    if target == "auto":
        from ddmd_lab.training.checkpointing import latest_unfinished_run
        from ddmd_lab.config import RunConfig

        target = str(latest_unfinished_run(RunConfig.runs_dir, args.scale or "toy2d", args.arm or DEFAULT_ARM))
    print_summary(resume_ablation(target, args.scale, args.arm))


def cmd_sweep(args) -> None:
    from ddmd_lab.core.arms import known_arm_names
    from ddmd_lab.training.run import print_summary, run_ablation

    from dataclasses import replace

    arms = args.arms.split(",") if args.arms else known_arm_names()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else []
    except ValueError:
        raise UserError(f"SEEDS={args.seeds!r} is not a comma-separated list of integers, e.g. SEEDS=0,1,2.") from None
    configs = [_config(args, a) for a in arms]  # validate every arm before the first run starts
    # seed-major: every arm of seed 0 first, so a sweep stopped early still holds paired comparisons
    runs = [replace(cfg, seed=s) for s in seeds for cfg in configs] if seeds else configs
    for cfg in runs:
        print(f"\n=== {cfg.arm.name} (seed {cfg.seed}) ===")
        print_summary(run_ablation(cfg))


def cmd_tables(args) -> None:
    from ddmd_lab.report.tables import paper_tables, render_tables

    print(render_tables(paper_tables(args.runs_dir, args.scale), args.format))


def cmd_report(args) -> None:
    from ddmd_lab.report.report import write_report

    folder = write_report(args.runs_dir, args.scale, args.reports_dir)
    print(f"report written: {folder / 'README.md'}")


def cmd_dashboard(args) -> None:
    import os

    from ddmd_lab.report.dashboard import make_dashboard

    online = os.environ.get("WANDB_MODE", "offline") == "online"
    if online and not args.entity:
        raise UserError("an online dashboard needs a W&B entity: `make dashboard WANDB_ENTITY=<user or team>`.")
    print(make_dashboard(args.entity, args.project, args.out, online))


def cmd_spectra(args) -> None:
    import json

    from ddmd_lab.commands.inspect import run_spectra, teacher_spectra

    if args.run:
        print(json.dumps(run_spectra(args.run), indent=2))
    else:
        print(json.dumps(teacher_spectra(_config(args, DEFAULT_ARM)), indent=2))


def cmd_diagnose(args) -> None:
    from ddmd_lab.commands.diagnose import diagnose_run, summary_lines

    if not args.run:
        raise UserError("no run to diagnose: make diagnose RUN=runs/<scale>/<arm>/<run-id> [SAMPLES=2048].")
    path, replaced = diagnose_run(args.run, args.samples, args.seed, args.device)
    print("\n".join(summary_lines(path)))
    print(f"diagnostics written: {path}" + (" (replaced the previous diagnostics.json)" if replaced else ""))


def _sampler(args):
    from ddmd_lab.training.generate import student_sampler, teacher_sampler

    if args.run:
        if args.scale or args.overrides:
            raise UserError("RUN brings its own scale and settings; drop SCALE / SET, or sample the teacher without RUN.")
        return student_sampler(args.run, args.sample_steps, args.guidance, args.device)
    return teacher_sampler(_config(args, DEFAULT_ARM), args.sample_steps, args.guidance, args.device)


def cmd_sample(args) -> None:
    import time
    from pathlib import Path

    from ddmd_lab.training.generate import write_samples

    prompts = list(args.prompt)
    if args.prompts:
        from ddmd_lab.data.prompts import read_prompts

        prompts += read_prompts(args.prompts)
    if not prompts:
        raise UserError('no prompts: PROMPT="a cat on a sofa" (repeatable with --prompt) or PROMPTS=<file, one per line>.')
    sampler = _sampler(args)
    where = Path(args.run) / "samples_cli" if args.run else Path(sampler.cfg.runs_dir) / sampler.cfg.scale / "teacher_samples"
    out = Path(args.out) if args.out else where / f"{time.strftime('%Y%m%d-%H%M%S')}-s{args.seed or 0}"
    if out.exists():
        raise UserError(f"{out} already exists; samples never overwrite a folder -- pass another OUT.")
    print(f"samples written: {write_samples(sampler, prompts, out, args.per_prompt, args.seed or 0)}")


def cmd_eval_coco(args) -> None:
    from ddmd_lab.commands.evaluate import eval_coco

    eval_coco(args)


def cmd_eval_hps(args) -> None:
    from ddmd_lab.commands.evaluate import eval_hps

    eval_hps(args)


def cmd_eval_dpg(args) -> None:
    from ddmd_lab.commands.evaluate import eval_dpg

    eval_dpg(args)


def cmd_export(args) -> None:
    from ddmd_lab.commands.export import export_student

    if not args.run:
        raise UserError("no run to export: RUN=runs/<scale>/<arm>/<run-id> [OUT=<new folder>].")
    out = export_student(args.run, args.out)
    print(f"diffusers pipeline written: {out} (how to call it: {out / 'README.md'})")


def cmd_plan(args) -> None:
    from pathlib import Path

    from ddmd_lab.planning.memory_plan import PLAN_FILE, format_table, memory_plan, write_plan
    from ddmd_lab.scales.base import TEXT_TO_IMAGE

    cfg = _config(args, args.arm or DEFAULT_ARM)
    if cfg.scale not in TEXT_TO_IMAGE:
        raise UserError(f"a memory plan is for the GPU scales: make plan SCALE={'|'.join(TEXT_TO_IMAGE)}.")
    plan = memory_plan(cfg, gpu_gib=args.gpu_gib, fsdp_teacher=args.fsdp_teacher)
    print(format_table(plan))
    path = Path(cfg.runs_dir) / cfg.scale / PLAN_FILE
    replaced = write_plan(plan, path)
    print(f"\nmemory plan written: {path}" + (" (replaced the previous one: a plan is derived from the config "
                                                 "and rebuilt by make plan)" if replaced else ""))


def cmd_embed(args) -> None:
    from ddmd_lab.scales.base import TEXT_TO_IMAGE

    cfg = _config(args, DEFAULT_ARM)
    if cfg.scale not in TEXT_TO_IMAGE:
        raise UserError(f"prompt embeddings are for the text-to-image scales: make embed SCALE={'|'.join(TEXT_TO_IMAGE)}.")
    from ddmd_lab.scales.text2image import embed

    embed(cfg)
    print("train on them with SET=\"data.precompute=true\" (same teacher and data settings): no text encoder is loaded")


def cmd_finetune(args) -> None:
    from ddmd_lab.config import parse_overrides
    from ddmd_lab.finetune.train import finetune

    finetune(args.run, args.data, parse_overrides(args.overrides))


def cmd_finetune_report(args) -> None:
    from ddmd_lab.config import parse_overrides
    from ddmd_lab.report.finetune import write_finetune_report

    given = parse_overrides(args.center)
    unknown = sorted(set(given) - {"rank", "lr", "train_guidance"})
    if unknown:
        raise UserError(f"--center takes rank, lr and train_guidance (e.g. --center lr=1e-3), not {unknown}.")
    center = {"rank": 8, "lr": 1e-4, "train_guidance": 0.0, **given}
    center = {"rank": int(center["rank"]), "lr": float(center["lr"]), "train_guidance": float(center["train_guidance"])}
    folder = write_finetune_report(args.runs_dir, args.scale, center, args.reports_dir)
    print(f"report written: {folder / 'README.md'}")


def cmd_bench(args) -> None:
    from ddmd_lab.commands.bench import main as bench_main

    bench_main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ddmd_lab", description=__doc__)
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("teacher", help="train (or show the cached) teacher of a scale")
    _common(p)
    p.add_argument("--retrain", action="store_true")
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("classifier", help="train (or show the cached) classifier of an image scale")
    _common(p)
    p.set_defaults(func=cmd_classifier)

    p = sub.add_parser("ablation", help="distil with one arm into a new run folder")
    p.add_argument("--arm", default=None, help=f"arm name (default {DEFAULT_ARM})")
    _common(p)
    p.add_argument("--resume", help="a run folder or .ckpt to continue, or 'auto' for the newest interrupted run of the arm")
    p.set_defaults(func=cmd_ablation)

    p = sub.add_parser("sweep", help="run every known arm, registry and experiments/arms/ variants (or --arms a,b,c)")
    p.add_argument("--arms", default="")
    p.add_argument("--seeds", default="", help="comma-separated seeds, each arm run once per seed (paired across arms)")
    _common(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("tables", help="the paper's tables from the latest run of each arm (markdown or LaTeX)")
    p.add_argument("--scale", default="toy2d")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--format", choices=("markdown", "latex"), default="markdown")
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("report", help="reports/<scale>/README.md: tables and figures of the latest runs")
    p.add_argument("--scale", default="toy2d")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--reports-dir", default="reports")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("dashboard", help="the W&B workspace: saved online with --entity, else written as JSON")
    p.add_argument("--entity", default=None)
    p.add_argument("--project", default="ddmd_lab")
    p.add_argument("--out", default="reports/wandb_workspace.json")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("spectra", help="CA/DM spectra per tau (+ observer measure) of a run, or CA spectra of a teacher")
    p.add_argument("--run", help="a finished image run folder; without it, the scale's teacher on real images")
    _common(p)
    p.set_defaults(func=cmd_spectra)

    p = sub.add_parser("diagnose", help="CA vs DM per tau bin (cosines, |CA|/|DM|, normalisers, tau histograms, "
                       "shares of the update) of a finished run's final generator and fake: <run>/diagnostics.json")
    p.add_argument("--run", help="a run folder with a checkpoint")
    p.add_argument("--samples", type=int, default=2048, help="generator samples to measure (default 2048)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.set_defaults(func=cmd_diagnose)

    def sampling(p: argparse.ArgumentParser) -> None:
        p.add_argument("--run", help="a run folder: sample its student (default: the scale's teacher)")
        _common(p)
        p.add_argument("--sample-steps", type=int, help="network evaluations (student default: its own; teacher: the pipeline's)")
        p.add_argument("--guidance", type=float, help="CFG in the family's pipeline convention: zimage g (alpha = g + 1, "
                       "0 = none), lumina2/sdxl alpha (<= 1 = none); students default to none")
        p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")

    p = sub.add_parser("sample", help="images from prompts with a run's student or a scale's teacher")
    sampling(p)
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", help="a file of prompts (one per line) or a COCO captions json")
    p.add_argument("--per-prompt", type=int, default=1)
    p.add_argument("--out", help="a new folder (default: <run>/samples_cli/<time>)")
    p.set_defaults(func=cmd_sample)

    def compared(p: argparse.ArgumentParser, teacher_default: int) -> None:
        p.add_argument("--hps-model", default="ViT-H-14", help="open_clip model of HPSv2.1 (or a model-config JSON)")
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--teacher-images", type=int, default=teacher_default,
                       help="prompts (evenly spread) whose image is also drawn by the run's teacher from the same noise "
                       "(many-step CFG at the run's alpha, cached under cache_dir/teacher_images): colour vs teacher; 0 = none")
        p.add_argument("--teacher-steps", type=int, default=None, help="the teacher's steps (default: its pipeline's)")
        p.add_argument("--diversity", type=int, default=16, help="prompts drawn with several seeds for diversity (0 = none)")
        p.add_argument("--diversity-seeds", type=int, default=4, help="seeds per diversity prompt")

    p = sub.add_parser("eval-coco", help="COCO-10k as the paper's Table 2: FID, patch-FID, CLIP score (DMD2's protocol), "
                       "HPSv2.1, colour vs the teacher, diversity")
    sampling(p)
    p.add_argument("--coco", help="DMD2's coco10k folder (subset/, all_prompts.pkl) or COCO-2014 (annotations/, val2014/)")
    p.add_argument("--protocol", choices=("dmd2", "val2014-seeded"), default=None,
                   help="default: dmd2 where DMD2's files are, val2014-seeded for COCO's own layout")
    p.add_argument("--prompts", default=None, help="dmd2: another prompt file than <coco>/all_prompts.pkl (.pkl or .txt)")
    p.add_argument("--images", default=None, help="score these images (one per prompt, sorted by name) instead of sampling")
    p.add_argument("--out", default=None, help="results folder (default: the run, or beside --images)")
    p.add_argument("--n", type=int, default=10_000, help="prompts (dmd2: the first n; val2014-seeded: the subset size)")
    p.add_argument("--subset-seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=512, help="evaluation resolution (DMD2: 512)")
    p.add_argument("--clip-model", default="ViT-g-14", help="open_clip model name or model-config JSON")
    p.add_argument("--clip-weights", default=None, help="local open_clip checkpoint (default: $CLIP_WEIGHTS)")
    p.add_argument("--no-clip", action="store_true", help="FID only")
    p.add_argument("--hps-weights", default=None, help="HPS_v2.1_compressed.pt (default: $HPS_WEIGHTS; none: no HPSv2.1)")
    compared(p, 500)
    p.set_defaults(func=cmd_eval_coco)

    p = sub.add_parser("eval-hps", help="HPSv2.1 on the HPSv2 benchmark prompts, per style and mean (the paper's Table 1), "
                       "colour vs the teacher, diversity")
    sampling(p)
    p.add_argument("--prompts", help="HPDv2's benchmark/ folder (anime.json, concept-art.json, paintings.json, photo.json) "
                   "or one JSON file of style -> prompts")
    p.add_argument("--per-style", type=int, default=None, help="only the first N prompts of each style (default: all 800)")
    p.add_argument("--hps-weights", default=None, help="HPS_v2.1_compressed.pt (default: $HPS_WEIGHTS)")
    p.add_argument("--clip-model", default="ViT-g-14")
    p.add_argument("--clip-weights", default=None, help="also CLIP score and CLIP diversity with this open_clip file")
    p.add_argument("--out", default=None, help="results folder (default: the run)")
    compared(p, 400)
    p.set_defaults(func=cmd_eval_hps)

    p = sub.add_parser("eval-dpg", help="DPG-Bench (the paper's Table 1): not available offline, says why")
    p.set_defaults(func=cmd_eval_dpg)

    p = sub.add_parser("export", help="a run's student as a diffusers pipeline folder with its scheduler and a model card")
    p.add_argument("--run", help="a text-to-image run folder")
    p.add_argument("--out", default=None, help="a new folder (default: <run>/export)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("plan", help="per-GPU memory of a text-to-image recipe, from its real architecture on the "
                       "meta device (no GPU, no weights); written to <runs_dir>/<scale>/memory_plan.json")
    p.add_argument("--arm", default=None, help=f"arm name (default {DEFAULT_ARM})")
    _common(p)
    p.add_argument("--gpu-gib", type=float, default=None, help="memory of one GPU in GiB (default 80; an H200: 140)")
    p.add_argument("--fsdp-teacher", choices=("shard", "replicate"), default=None,
                   help="under strategy=fsdp: the frozen teacher sharded like the trained weights, or replicated "
                   "(default: the config's fsdp_teacher, as the run does)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("embed", help="text conditions of data.prompts (and the eval prompts) computed once into "
                       "memory-mapped bfloat16 shards under <cache_dir>/embeddings, read by data.precompute=true runs")
    _common(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("finetune", help="a LoRA on a finished run's distilled student, trained on a new concept at the "
                       "student's own times: <runs_dir>/<scale>/finetune/<run-id>/")
    p.add_argument("--run", default="", help="a distillation run folder with a checkpoint")
    p.add_argument("--data", default="", help="image scales: <dataset>:<class> (e.g. mnist:7); zimage / lumina2: a folder "
                   "of images with captions (<name>.txt beside each, or metadata.jsonl)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fine-tune setting (repeatable), e.g. --set lora.rank=8 --set lr=1e-4 --set train_guidance=1.5 "
                   "--set steps=200 (ddmd_lab/finetune/config.py)")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("finetune-report", help="reports/finetune/README.md: the fine-tunes of a scale grouped by setting, "
                       "the advice's five claims judged over seeds (paired)")
    p.add_argument("--scale", default="fashion")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--reports-dir", default="reports")
    p.add_argument("--center", action="append", default=[], metavar="KEY=VALUE",
                   help="the sweep's center setting (rank=8, lr=1e-4, train_guidance=0 unless named): each claim "
                   "varies one factor from it")
    p.set_defaults(func=cmd_finetune_report)

    p = sub.add_parser("bench", help="step time against the network-evaluation floor, per arm")
    _common(p)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--arms", default="", help="only these registry arms (comma-separated)")
    p.set_defaults(func=cmd_bench)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (UserError, NonFiniteError) as exc:
        if args.traceback:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UserError) else 3
    return 0
