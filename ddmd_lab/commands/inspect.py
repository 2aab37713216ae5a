"""``make spectra``: CA / DM spectra per tau and the observer measure, for a
finished image run (or, without a run, CA spectra of the teacher on real data)."""
from __future__ import annotations

from pathlib import Path

from ddmd_lab.errors import UserError
from ddmd_lab.eval.spectra import raps
from ddmd_lab.eval.term_spectra import term_spectra
from ddmd_lab.scales.base import get_scale
from ddmd_lab.training.networks import prepare
from ddmd_lab.training.restore import load_run
from ddmd_lab.util.io import atomic_save_npz


def run_spectra(run_dir: Path, samples: int = 500) -> dict:
    """(Re)measure a finished run's CA / DM spectra per tau and its observer measure
    (every image run already does this at its end; this reruns it, e.g. with more samples)."""
    module = load_run(Path(run_dir))
    if module.cfg.scale == "toy2d":
        raise UserError("spectra need images; run them on an image scale (fashion or mnist).")
    return get_scale(module.cfg.scale).Evaluator(module.cfg, Path(run_dir)).term_spectra(module, samples)


def teacher_spectra(cfg, samples: int = 500) -> dict:
    """CA spectra of the teacher alone, on real test images (no fake model: no DM)."""
    scale = get_scale(cfg.scale)
    prepare(cfg)
    teacher = scale.load_teacher(cfg).eval()
    real = scale.real_eval_images(cfg)[:samples]
    labels = scale.image_set(cfg, "test").labels[:samples]
    spec = term_spectra(teacher, None, real, labels, cfg.alpha)
    folder = scale.teacher_dir(cfg)
    atomic_save_npz(folder / f"ca_spectra_alpha_{cfg.alpha:g}.npz", **spec, real=raps(real))
    return {"ca_centroid": spec["ca_centroid"], "bins": spec["bins"].tolist(), "saved_in": str(folder)}
