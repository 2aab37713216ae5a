"""``make floors RUN=<run>``: the noise floors a scale's report prints beside its verdicts.

- the metric's floor: real images (toy2d: exact target samples) measured like a student at the
  evaluation's sample count, i.e. what a perfect student would score;
- the evaluation's noise: one set of weights (the run's student) evaluated on 5 evaluation seeds
  (other start and re-noising noise), the spread a single evaluation adds;
- the training's noise is the seeds' own spread, which the report computes from the runs.

Written to reports/noise_floors/<scale>.json, outside the report's folder (which each report
replaces), and read by make report.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from ddmd_lab.errors import UserError
from ddmd_lab.scales.base import EVAL_SEED, get_scale
from ddmd_lab.util.io import atomic_write_text

EVALUATION_SEEDS = 5


def floors_path(scale: str, reports_dir: str | Path = "reports") -> Path:
    return Path(reports_dir) / "noise_floors" / f"{scale}.json"


def measure_floors(run_dir: Path, seeds: int = EVALUATION_SEEDS) -> dict:
    from ddmd_lab.training.restore import load_run  # deferred: Lightning and the scale's networks

    module = load_run(Path(run_dir))
    cfg = module.cfg
    scale = get_scale(cfg.run.scale)
    readings = [scale.make_evaluator(cfg, None, EVAL_SEED + 1000 * (i + 1))(module) for i in range(seeds)]
    evaluation = {}
    for key in readings[0]:
        values = [float(r[key]) for r in readings]
        evaluation[key] = {"values": values, "sd": statistics.stdev(values) if len(values) > 1 else float("nan")}
    return {"scale": cfg.run.scale, "run": str(run_dir), "eval_samples": cfg.evaluation.eval_samples,
            "evaluation_seeds": seeds, "metric_floor": scale.metric_floor(cfg), "evaluation": evaluation}


def cmd_floors(args) -> None:
    if not args.run or not Path(args.run).is_dir():
        raise UserError(f"RUN={args.run!r} is not a run folder; name a finished run, e.g. RUN=runs/fashion/coupled/<id>.")
    floors = measure_floors(Path(args.run), args.seeds)
    path = floors_path(floors["scale"], args.reports_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(floors, indent=2))
    print(f"wrote {path}")
    for key, floor in floors["metric_floor"].items():
        ev = floors["evaluation"].get(key)
        if ev is not None:
            print(f"{key}: floor {floor:.4g}; evaluation sd {ev['sd']:.3g} over {floors['evaluation_seeds']} seeds")


def register(sub) -> None:
    p = sub.add_parser("floors", help="a scale's noise floors (metric floor, evaluation noise) from one finished run")
    p.add_argument("--run", required=True)
    p.add_argument("--seeds", type=int, default=EVALUATION_SEEDS)
    p.add_argument("--reports-dir", default="reports")
    p.set_defaults(func=cmd_floors)
