"""Run folders as records: what tables, plots, notebooks and the report read.

Nothing here computes a metric; everything comes from files a run wrote
(config.yaml, summary.json, metrics.csv, spectra.npz, term_spectra.npz/json, and the results.json of
make eval-coco / eval-hps in coco10k/ and hpsv21/).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ddmd_lab.config import RunConfig, read_config
from ddmd_lab.errors import UserError


@dataclass(frozen=True)
class RunRecord:
    path: Path
    cfg: RunConfig

    @property
    def arm(self) -> str:
        return self.cfg.arm.name

    @property
    def student_steps(self) -> int:
        return self.cfg.student_steps

    @cached_property
    def summary(self) -> dict:
        path = self.path / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    @cached_property
    def curves(self) -> dict[str, np.ndarray]:
        """metrics.csv as columns (one entry per evaluation point)."""
        path = self.path / "metrics.csv"
        if not path.is_file():
            return {}
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        return {k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows]) for k in rows[0]} if rows else {}

    def _results(self, folder: str) -> dict:
        path = self.path / folder / "results.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    @cached_property
    def coco(self) -> dict:
        """make eval-coco's results of this run (<run>/coco10k/results.json), {} before it ran."""
        return self._results("coco10k")

    @cached_property
    def hps(self) -> dict:
        """make eval-hps's results of this run (<run>/hpsv21/results.json), {} before it ran."""
        return self._results("hpsv21")

    def npz(self, name: str) -> dict[str, np.ndarray] | None:
        path = self.path / name
        if not path.is_file():
            return None
        with np.load(path) as data:
            return {k: data[k] for k in data.files}

    @property
    def output_spectra(self):
        return self.npz("spectra.npz")

    @property
    def term_spectra(self):
        return self.npz("term_spectra.npz")

    @property
    def observer(self) -> dict | None:
        path = self.path / "term_spectra.json"
        return json.loads(path.read_text()).get("observer") if path.is_file() else None

    def grids(self) -> list[Path]:
        return sorted((self.path / "samples").glob("step_*.png"))


def finished_runs(runs_dir: str | Path, scale: str) -> list[RunRecord]:
    """Every run under runs/<scale>/ with a summary.json, oldest first (run ids sort by time)."""
    return [RunRecord(s.parent, read_config(s.parent / "config.yaml"))
            for s in sorted(Path(runs_dir, scale).glob("*/*/summary.json"), key=lambda p: p.parent.name)]


def latest_runs(runs_dir: str | Path, scale: str) -> dict[tuple[str, int], RunRecord]:
    """The newest finished run of each (arm, student steps), from the group of runs that stands for
    that arm (seeded.primary: most seeds, then the sweep's common settings), so a variant of an arm
    (another normaliser, learning rate or length) never shadows the arm itself."""
    from ddmd_lab.report.seeded import primary, seed_groups

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
