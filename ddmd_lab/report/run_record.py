"""One run folder read as a record: its config and the files it wrote (summary.json, metrics.csv,
spectra.npz, term_spectra.npz/json, and the results.json of make eval-coco / eval-hps in coco10k/ and
hpsv21/).  Nothing here computes a metric; everything comes from those files."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ddmd_lab.config import RunConfig


@dataclass(frozen=True)
class RunRecord:
    path: Path
    cfg: RunConfig

    @property
    def arm(self) -> str:
        return self.cfg.arm.name

    @property
    def student_steps(self) -> int:
        return self.cfg.student.student_steps

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
