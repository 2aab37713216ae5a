"""``make spectra``: CA / DM spectra per tau and the observer measure, for a
finished image run (or, without a run, CA spectra of the teacher on real data)."""
from __future__ import annotations

import json
from pathlib import Path

from ddmd_lab.commands.common import DEFAULT_ARM, add_run_options, config_from_args
from ddmd_lab.errors import UserError
from ddmd_lab.eval.spectra import raps
from ddmd_lab.eval.term_spectra import term_spectra
from ddmd_lab.scales.base import get_scale
from ddmd_lab.util.io import atomic_save_npz


def run_spectra(run_dir: Path, samples: int = 500) -> dict:
    """(Re)measure a finished run's CA / DM spectra per tau and its observer measure
    (every image run already does this at its end; this reruns it, e.g. with more samples)."""
    from ddmd_lab.training.restore import load_run  # deferred: Lightning

    module = load_run(Path(run_dir))
    if module.cfg.run.scale == "toy2d":
        raise UserError("spectra need images; run them on an image scale (fashion or mnist).")
    return get_scale(module.cfg.run.scale).make_evaluator(module.cfg, Path(run_dir)).term_spectra(module, samples)


def teacher_ca_spectra_path(cfg) -> Path:
    """Where the teacher's CA spectra on real data are kept (make spectra writes them, make report reads them)."""
    return get_scale(cfg.run.scale).teacher_dir(cfg) / f"ca_spectra_alpha_{cfg.objective.alpha:g}.npz"


def teacher_spectra(cfg, samples: int = 500) -> dict:
    """CA spectra of the teacher alone, on real test images (no fake model: no DM)."""
    from ddmd_lab.training.networks import prepare  # deferred: Lightning

    scale = get_scale(cfg.run.scale)
    prepare(cfg)
    teacher = scale.load_teacher(cfg).eval()
    real = scale.real_eval_images(cfg)[:samples]
    labels = scale.image_set(cfg, "test").labels[:samples]
    spec = term_spectra(teacher, None, real, labels, cfg.objective.alpha)
    path = teacher_ca_spectra_path(cfg)
    atomic_save_npz(path, **spec, real=raps(real))
    return {"ca_centroid": spec["ca_centroid"], "bins": spec["bins"].tolist(), "saved_in": str(path.parent)}


def cmd_spectra(args) -> None:
    if args.run:
        print(json.dumps(run_spectra(args.run), indent=2))
    else:
        print(json.dumps(teacher_spectra(config_from_args(args, DEFAULT_ARM)), indent=2))


def cmd_diagnose(args) -> None:
    from ddmd_lab.commands.diagnose import diagnose_run, summary_lines  # deferred: training.restore, Lightning

    if not args.run:
        raise UserError("no run to diagnose: make diagnose RUN=runs/<scale>/<arm>/<run-id> [SAMPLES=2048].")
    path, replaced = diagnose_run(args.run, args.samples, args.seed, args.device)
    print("\n".join(summary_lines(path)))
    print(f"diagnostics written: {path}" + (" (replaced the previous diagnostics.json)" if replaced else ""))


def register(sub) -> None:
    p = sub.add_parser("spectra", help="CA/DM spectra per tau (+ observer measure) of a run, or CA spectra of a teacher")
    p.add_argument("--run", help="a finished image run folder; without it, the scale's teacher on real images")
    add_run_options(p)
    p.set_defaults(func=cmd_spectra)

    p = sub.add_parser("diagnose", help="CA vs DM per tau bin (cosines, |CA|/|DM|, normalisers, tau histograms, "
                       "shares of the update) of a finished run's final generator and fake: <run>/diagnostics.json")
    p.add_argument("--run", help="a run folder with a checkpoint")
    p.add_argument("--samples", type=int, default=2048, help="generator samples to measure (default 2048)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.set_defaults(func=cmd_diagnose)
