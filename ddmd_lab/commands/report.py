"""``make tables / report / dashboard / finetune-report``: what run folders show.

report/ only reads run folders; what it needs from a scale (its reference rows, the teacher's files) or
from a network (the teacher's reaction to guidance) is computed here and handed in."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ddmd_lab.commands.floors import floors_path
from ddmd_lab.commands.inspect import teacher_ca_spectra_path
from ddmd_lab.config import parse_overrides
from ddmd_lab.errors import UserError
from ddmd_lab.report.dashboard import make_dashboard
from ddmd_lab.report.finetune_sweep import Finetune, Sweep, finished_finetunes
from ddmd_lab.report.runs import require_runs
from ddmd_lab.report.scale_facts import ScaleFacts
from ddmd_lab.report.tables import paper_tables, render_tables
from ddmd_lab.report.teacher_guidance import TeacherGuidance, read_teacher_guidance, teacher_guidance_key
from ddmd_lab.scales.base import TEXT_TO_IMAGE, get_scale


def scale_reference(runs) -> dict[str, dict]:
    """The scale's reference rows (teacher many-step, exact samples), measured like a student."""
    if not runs:
        return {}
    cfg = next(iter(runs.values())).cfg
    scale = get_scale(cfg.run.scale)
    return scale.reference_rows(cfg) if hasattr(scale, "reference_rows") else {}


def teacher_ca_spectra(runs) -> Path | None:
    """Where `make spectra SCALE=<scale>` writes the teacher's CA spectra on real data (None: no teacher folder)."""
    cfg = next(iter(runs.values())).cfg
    return teacher_ca_spectra_path(cfg) if hasattr(get_scale(cfg.run.scale), "teacher_dir") else None


def scale_facts(runs_dir: str | Path, scale: str, reports_dir: str | Path = "reports") -> ScaleFacts:
    """What the report of ``scale``'s runs needs from the scale itself (a UserError where no run finished)."""
    runs = require_runs(runs_dir, scale)
    floors = floors_path(scale, reports_dir)
    return ScaleFacts(reference=scale_reference(runs), text_to_image=scale in TEXT_TO_IMAGE,
                      teacher_ca_spectra=teacher_ca_spectra(runs),
                      noise_floors=json.loads(floors.read_text()) if floors.is_file() else None)


def teacher_guidance(ft: Finetune, reports_dir: str | Path) -> TeacherGuidance:
    """The teacher's reaction to sampling guidance on fine-tune ``ft``'s noise and labels: the published
    report's measurement while it still applies (teacher_guidance_key), else measured now."""
    key = teacher_guidance_key(ft)
    metrics = read_teacher_guidance(Path(reports_dir) / "finetune", key)
    if metrics is None:
        # deferred: the teacher's and the student's networks (Lightning, the scale's modules)
        from ddmd_lab.finetune.teacher_reference import teacher_reference

        metrics = teacher_reference(ft.spec, key["guidances"])
    return TeacherGuidance(key, metrics)


def cmd_tables(args) -> None:
    print(render_tables(paper_tables(args.runs_dir, args.scale, scale_facts(args.runs_dir, args.scale)), args.format))


def cmd_report(args) -> None:
    from ddmd_lab.report.report import write_report  # deferred: matplotlib (the report's figures)

    folder = write_report(args.runs_dir, args.scale, scale_facts(args.runs_dir, args.scale, args.reports_dir), args.reports_dir)
    print(f"report written: {folder / 'README.md'}")


def cmd_dashboard(args) -> None:
    online = os.environ.get("WANDB_MODE", "offline") == "online"
    if online and not args.entity:
        raise UserError("an online dashboard needs a W&B entity: `make dashboard WANDB_ENTITY=<user or team>`.")
    print(make_dashboard(args.entity, args.project, args.out, online))


def cmd_finetune_report(args) -> None:
    from ddmd_lab.report.finetune import write_finetune_report  # deferred: matplotlib (the report's figures)

    given = parse_overrides(args.center)
    unknown = sorted(set(given) - {"rank", "lr", "train_guidance"})
    if unknown:
        raise UserError(f"--center takes rank, lr and train_guidance (e.g. --center lr=1e-3), not {unknown}.")
    center = {"rank": 8, "lr": 1e-4, "train_guidance": 0.0, **given}
    center = {"rank": int(center["rank"]), "lr": float(center["lr"]), "train_guidance": float(center["train_guidance"])}
    sweep = Sweep(finished_finetunes(args.runs_dir, args.scale), center)
    # image scales: the teacher on the first fine-tune's noise and labels, beside the students
    teacher = teacher_guidance(sweep.fts[0], args.reports_dir) if args.scale in ("fashion", "mnist") else None
    folder = write_finetune_report(sweep, args.runs_dir, args.scale, args.reports_dir, teacher)
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
