"""The teacher's reaction to sampling guidance, the reference make finetune-report sets the students
beside: the scale's teacher on a fine-tune's own old-class noise and labels, at each sampling guidance
(its many-step CFG ODE), scored as the fine-tune scores the student (finetune/evaluate.py).

It loads networks, so the command measures it (commands/report.py) and hands the numbers to
report/finetune.py, which keeps them in reports/finetune/teacher_guidance.json.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ddmd_lab.finetune.config import FinetuneConfig
from ddmd_lab.finetune.data import parse_data
from ddmd_lab.finetune.evaluate import ImageFinetuneEvaluator
from ddmd_lab.finetune.student import load_student
from ddmd_lab.scales.images import teacher_settings
from ddmd_lab.training.networks import load_networks


def teacher_reference(spec: dict, guidances: list[float]) -> dict[float, dict]:
    """{guidance: the teacher's metrics} on the noise and labels of the fine-tune whose finetune.yaml is ``spec``."""
    settings = {k: v for k, v in spec["finetune"].items() if k in ("eval_samples", "eval_new", "lora", "seed")}
    cfg_ft = FinetuneConfig.from_overrides({**settings, "device": "cpu"})
    torch.manual_seed(cfg_ft.seed)
    student = load_student(Path(spec["run"]), cfg_ft, "cpu")
    ev = ImageFinetuneEvaluator(student, parse_data(spec["data"], student.cfg.run.scale, student.cfg.data.get("root")), cfg_ft)
    teacher, _ = load_networks(student.cfg)
    steps = teacher_settings(student.cfg)["ode_steps"]
    return {float(g): ev.measure_teacher(teacher, g, steps) for g in guidances}
