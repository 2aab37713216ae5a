"""``make spectra``: CA / DM spectra per tau and the observer measure, for a
finished image run (or, without a run, CA spectra of the teacher on real data)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import read_config
from .errors import UserError
from .eval.spectra import raps
from .eval.term_spectra import observer_excess, term_spectra
from .io import atomic_save_npz, atomic_write_text
from .module import DistillModule
from .scales import get_scale


def load_run(run_dir: Path, checkpoint: str = "final.ckpt") -> DistillModule:
    cfg = read_config(run_dir / "config.yaml")
    path = run_dir / "checkpoints" / checkpoint
    if not path.is_file():
        raise UserError(f"{path} does not exist; the run has not finished (resume it with RESUME={run_dir}).")
    module = DistillModule(get_scale(cfg.scale).load_teacher(cfg), cfg)
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["state_dict"])
    return module.eval()


def run_spectra(run_dir: Path, samples: int = 500) -> dict:
    module = load_run(Path(run_dir))
    cfg = module.cfg
    if cfg.scale == "toy2d":
        raise UserError("spectra need images; run them on an image scale (fashion or mnist).")
    scale = get_scale(cfg.scale)
    ev = scale.Evaluator(cfg)
    noise, labels = ev.noise[:samples], ev.labels[:samples]
    x = module.sample(noise, labels)
    spec = term_spectra(module.teacher, module.fake, x, labels, cfg.alpha)
    atomic_save_npz(Path(run_dir) / "term_spectra.npz", **spec)
    result = {"ca_centroid": spec["ca_centroid"], "dm_centroid": spec["dm_centroid"],
              "bins": spec["bins"].tolist()}
    if module.fake is not None:
        result["observer"] = observer_excess(module.teacher, module.fake, x, labels, ev.real_spectrum)
    atomic_write_text(Path(run_dir) / "term_spectra.json", json.dumps(result, indent=2))
    return result


def teacher_spectra(cfg, samples: int = 500) -> dict:
    """CA spectra of the teacher alone, on real test images (no fake model: no DM)."""
    scale = get_scale(cfg.scale)
    teacher = scale.load_teacher(cfg).eval()
    real = scale.real_eval_images(cfg)[:samples]
    labels = scale.image_set(cfg, "test").labels[:samples]
    spec = term_spectra(teacher, None, real, labels, cfg.alpha)
    folder = scale.teacher_dir(cfg)
    atomic_save_npz(folder / f"ca_spectra_alpha_{cfg.alpha:g}.npz", **spec, real=raps(real))
    return {"ca_centroid": spec["ca_centroid"], "bins": spec["bins"].tolist(), "saved_in": str(folder)}
