"""Run folders as records: which runs a scale holds, and the ones tables, plots, notebooks and the
report read (the newest run of the group that stands for each arm, or the folders named).

A record (run_record.RunRecord) reads what its run wrote; nothing here computes a metric.
"""
from __future__ import annotations

from pathlib import Path

from ddmd_lab.config import read_config
from ddmd_lab.errors import UserError
from ddmd_lab.report.run_record import RunRecord
from ddmd_lab.report.seeded import primary, seed_groups


def finished_runs(runs_dir: str | Path, scale: str) -> list[RunRecord]:
    """Every run under runs/<scale>/ with a summary.json, oldest first (run ids sort by time)."""
    return [RunRecord(s.parent, read_config(s.parent / "config.yaml"))
            for s in sorted(Path(runs_dir, scale).glob("*/*/summary.json"), key=lambda p: p.parent.name)]


def latest_runs(runs_dir: str | Path, scale: str) -> dict[tuple[str, int], RunRecord]:
    """The newest finished run of each (arm, student steps), from the group of runs that stands for
    that arm (seeded.primary: most seeds, then the sweep's common settings), so a variant of an arm
    (another normaliser, learning rate or length) never shadows the arm itself."""
    latest = {k: g.newest() for k, g in primary(seed_groups(finished_runs(runs_dir, scale))).items()}
    return dict(sorted(latest.items(), key=lambda kv: (-kv[0][1], kv[0][0])))


def require_runs(runs_dir: str | Path, scale: str) -> dict[tuple[str, int], RunRecord]:
    runs = latest_runs(runs_dir, scale)
    if not runs:
        raise UserError(f"no finished runs under {Path(runs_dir, scale)}; start some with "
                        f"`make sweep SCALE={scale}` (or `make ablation ARM=<arm> SCALE={scale}`).")
    return runs


def load_runs(runs_dir: str | Path, scale: str, folders: list | None = None) -> dict[tuple[str, int], RunRecord]:
    """The runs a notebook or report reads: the named folders, else the newest of each (arm, steps)."""
    if not folders:
        return require_runs(runs_dir, scale)
    records = []
    for f in map(Path, folders):
        if not (f / "config.yaml").is_file():
            raise UserError(f"{f} is not a run folder (no config.yaml); name folders under runs/<scale>/<arm>/.")
        records.append(RunRecord(f, read_config(f / "config.yaml")))
    return {(r.arm, r.student_steps): r for r in records}
