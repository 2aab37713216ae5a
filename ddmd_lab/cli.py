"""Command line: ``python -m ddmd_lab <command>`` (the Makefile's targets call these)."""
from __future__ import annotations

import argparse
import sys

from .errors import NonFiniteError, UserError


DEFAULT_ARM = "decoupled_hybrid"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", default=None, help="scale (default toy2d)")
    p.add_argument("--steps", type=int, help="training steps (critic steps); generator steps = ceil(steps/ttur)")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, value read as YAML (repeatable), e.g. --set alpha=4 --set arm.normaliser=per_term")


def _config(args, arm: str):
    from .config import load_config, parse_overrides

    overrides = parse_overrides(args.overrides)
    for key in ("steps", "seed"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return load_config(args.scale or "toy2d", arm, overrides)


def cmd_teacher(args) -> None:
    from .scales import get_scale

    cfg = _config(args, "decoupled_hybrid")
    scale = get_scale(cfg.scale)
    folder = scale.teacher_dir(cfg)
    if scale.teacher_cached(cfg) and not args.retrain:
        print(f"teacher cached at {folder} (use --retrain to train again)")
    else:
        folder = scale.train_teacher(cfg)
        print(f"teacher trained and saved to {folder}")
    report = folder / "teacher.json"
    if not report.is_file():  # the process that trained it stopped before its report
        scale.write_teacher_report(cfg)
    print(report.read_text())


def cmd_classifier(args) -> None:
    from .scales import get_scale

    cfg = _config(args, DEFAULT_ARM)
    scale = get_scale(cfg.scale)
    if not hasattr(scale, "classifier_dir"):
        raise UserError(f"scale {cfg.scale!r} has no classifier; use an image scale (fashion or mnist).")
    scale.classifier(cfg)
    print((scale.classifier_dir(cfg) / "classifier.json").read_text())


def cmd_ablation(args) -> None:
    from .run import print_summary, resume_ablation, run_ablation

    if not args.resume:
        print_summary(run_ablation(_config(args, args.arm or DEFAULT_ARM)))
        return
    if args.overrides or args.steps is not None or args.seed is not None:
        raise UserError("RESUME continues a run exactly as configured; drop STEPS, SEED and SET, or start a new run.")
    target = args.resume
    if target == "auto":
        from .checkpointing import latest_unfinished_run
        from .config import RunConfig

        target = str(latest_unfinished_run(RunConfig.runs_dir, args.scale or "toy2d", args.arm or DEFAULT_ARM))
    print_summary(resume_ablation(target, args.scale, args.arm))


def cmd_sweep(args) -> None:
    from .arms import known_arm_names
    from .run import print_summary, run_ablation

    arms = args.arms.split(",") if args.arms else known_arm_names()
    configs = [_config(args, a) for a in arms]  # validate every arm before the first run starts
    for cfg in configs:
        print(f"\n=== {cfg.arm.name} ===")
        print_summary(run_ablation(cfg))


def cmd_tables(args) -> None:
    from .report.tables import paper_tables, render_tables

    print(render_tables(paper_tables(args.runs_dir, args.scale), args.format))


def cmd_report(args) -> None:
    from .report.report import write_report

    folder = write_report(args.runs_dir, args.scale, args.reports_dir)
    print(f"report written: {folder / 'README.md'}")


def cmd_dashboard(args) -> None:
    import os

    from .report.dashboard import make_dashboard

    online = os.environ.get("WANDB_MODE", "offline") == "online"
    if online and not args.entity:
        raise UserError("an online dashboard needs a W&B entity: `make dashboard WANDB_ENTITY=<user or team>`.")
    print(make_dashboard(args.entity, args.project, args.out, online))


def cmd_spectra(args) -> None:
    import json

    from .inspect_run import run_spectra, teacher_spectra

    if args.run:
        print(json.dumps(run_spectra(args.run), indent=2))
    else:
        print(json.dumps(teacher_spectra(_config(args, DEFAULT_ARM)), indent=2))


def cmd_bench(args) -> None:
    from .bench import main as bench_main

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
