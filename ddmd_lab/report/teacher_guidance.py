"""The teacher's reaction to sampling guidance as make finetune-report keeps it: its metrics at each
guidance (measured by finetune/teacher_reference.py; the command hands them in), kept beside the page in
``reports/finetune/teacher_guidance.json`` with the key of what they depend on, and reused while that
key still holds (the teacher is measured once)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ddmd_lab.report.finetune_sweep import Finetune
from ddmd_lab.util.io import atomic_write_text

TEACHER_GUIDANCE_FILE = "teacher_guidance.json"


@dataclass(frozen=True)
class TeacherGuidance:
    """The teacher's reaction to sampling guidance: {guidance: the fine-tune's metrics of the teacher's samples}
    (finetune/teacher_reference.py), and ``key``, what that measurement depends on."""
    key: dict
    metrics: dict[float, dict]


def teacher_guidance_key(ft: Finetune) -> dict:
    """What the teacher's measurement depends on: a fine-tune's student run, data, evaluation samples and the
    sampling guidances of its grids (every fine-tune of a sweep samples the same ones)."""
    return {"teacher_run": ft.spec["run"], "data": ft.spec["data"], "eval_samples": ft.spec["finetune"]["eval_samples"],
            "guidances": sorted({float(r["sample_guidance"]) for r in ft.grids})}


def read_teacher_guidance(folder: Path, key: dict) -> dict[float, dict] | None:
    """The metrics kept in ``folder/teacher_guidance.json``, if they were measured for ``key``."""
    path = Path(folder) / TEACHER_GUIDANCE_FILE
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return {float(g): m for g, m in cached["metrics"].items()}
    return None


def keep_teacher_guidance(teacher: TeacherGuidance, folder: Path) -> None:
    """``folder/teacher_guidance.json``, written where it does not already hold this measurement."""
    if read_teacher_guidance(folder, teacher.key) is None:
        atomic_write_text(folder / TEACHER_GUIDANCE_FILE, json.dumps(
            {"key": teacher.key, "metrics": {str(g): m for g, m in teacher.metrics.items()}}, indent=2))
