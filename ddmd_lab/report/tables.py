"""Markdown tables from run folders (never from anything a run did not write)."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import read_config

SKIP = {"step", "nonfinite_samples", "critic_steps"}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns and k not in SKIP]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def latest_rows(runs_dir: str | Path, scale: str) -> tuple[list[dict], Path | None]:
    """The newest finished run of each (arm, student steps) under runs/<scale>/."""
    latest: dict[tuple[str, int], tuple[Path, object]] = {}
    for summary in sorted(Path(runs_dir, scale).glob("*/*/summary.json")):  # run ids sort by time
        run = summary.parent
        cfg = read_config(run / "config.yaml")
        latest[(run.parent.name, cfg.student_steps)] = (run, cfg)
    rows = []
    for (arm, _), (run, cfg) in sorted(latest.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        summary = json.loads((run / "summary.json").read_text())
        rows.append({"arm": arm, "student_steps": cfg.student_steps, "alpha": cfg.alpha, **summary, "run": run.name})
    any_run = next(iter(latest.values()))[0] if latest else None
    return rows, any_run


def ablation_table(runs_dir: str | Path, scale: str) -> str:
    rows, any_run = latest_rows(runs_dir, scale)
    if not rows:
        return f"no finished runs under {Path(runs_dir, scale)}; start one with `make ablation ARM=<arm> SCALE={scale}`."
    from ..scales import get_scale

    scale_mod = get_scale(scale)
    if hasattr(scale_mod, "reference_rows"):
        cfg = read_config(any_run / "config.yaml")
        rows += [{"arm": name, **m} for name, m in scale_mod.reference_rows(cfg).items()]
    return markdown_table(rows)
