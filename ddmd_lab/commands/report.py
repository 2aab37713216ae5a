"""``make tables / report / dashboard / finetune-report``: what run folders show."""
from __future__ import annotations

from ddmd_lab.commands.common import DEFAULT_ARM, add_run_options, add_sampling_options, config_from_args, sampler_from_args
from ddmd_lab.errors import UserError



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


def register(sub) -> None:
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

    p = sub.add_parser("finetune-report", help="reports/finetune/README.md: the fine-tunes of a scale grouped by setting, "
                       "the advice's five claims judged over seeds (paired)")
    p.add_argument("--scale", default="fashion")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--reports-dir", default="reports")
    p.add_argument("--center", action="append", default=[], metavar="KEY=VALUE",
                   help="the sweep's center setting (rank=8, lr=1e-4, train_guidance=0 unless named): each claim "
                   "varies one factor from it")
    p.set_defaults(func=cmd_finetune_report)
