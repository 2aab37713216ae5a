"""toy2d: a class-conditional 2-D Gaussian mixture with exact denoisers.

Because E[x0 | x_t, c] is known in closed form, the exact CFG-guided target
(the guided ODE's samples) and the unguided conditional are both available,
so every arm's output can be measured against both.  The teacher a run distils
is the MLP trained here (``teacher.kind=trained``) or that closed form itself
(``teacher.kind=exact``: no teacher error); the generator and the fake model are
the trained MLP's copies either way.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ddmd_lab.backbones.toy import ExactToyDenoiser, ToyFlowMLP
from ddmd_lab.config import RunConfig
from ddmd_lab.core.rollout import teacher_cfg_sample
from ddmd_lab.data.steps import step_loader
from ddmd_lab.data.toy2d import ToyMixture
from ddmd_lab.errors import UserError
from ddmd_lab.eval.distances import classwise_energy_distance
from ddmd_lab.scales.base import EVAL_SEED, evaluation_generator
from ddmd_lab.util.io import atomic_write_text, publish_dir, safe_torch_load

TEACHER_DEFAULTS = {"kind": "trained", "hidden": 256, "depth": 3, "steps": 3000, "batch_size": 1024, "lr": 2e-3,
                    "p_uncond": 0.1, "seed": 0, "data_size": 200_000}
TEACHER_KINDS = {"trained": "the MLP flow model trained here", "exact": "the mixture's closed-form denoiser"}
DATA_DEFAULTS = {"num_classes": 4, "comps_per_class": 2, "radius": 1.5, "std": 0.35}


def mixture(cfg: RunConfig) -> ToyMixture:
    return ToyMixture(**{**DATA_DEFAULTS, **cfg.data})


def teacher_settings(cfg: RunConfig) -> dict:
    unknown = set(cfg.teacher) - set(TEACHER_DEFAULTS)
    if unknown:
        raise UserError(f"teacher: unknown key(s) {sorted(unknown)}; known: {sorted(TEACHER_DEFAULTS)}.")
    t = {**TEACHER_DEFAULTS, **cfg.teacher}
    if t["kind"] not in TEACHER_KINDS:
        allowed = "; ".join(f"{k!r} ({what})" for k, what in TEACHER_KINDS.items())
        raise UserError(f"teacher.kind={t['kind']!r} is not a toy2d teacher; allowed: {allowed}.")
    return t


def mlp_settings(cfg: RunConfig) -> dict:
    """What the MLP teacher is trained from: every teacher setting but ``kind``, which says only whether
    runs distil it or the exact denoiser.  Left out of the cache key, so both kinds share one trained
    MLP and the caches of runs from before ``kind`` existed stay valid."""
    return {k: v for k, v in teacher_settings(cfg).items() if k != "kind"}


def teacher_dir(cfg: RunConfig) -> Path:
    spec = {"teacher": mlp_settings(cfg), "data": {**DATA_DEFAULTS, **cfg.data}}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cfg.run.cache_dir) / "teachers" / "toy2d" / key


def build_backbone(cfg: RunConfig) -> ToyFlowMLP:
    t = mlp_settings(cfg)
    return ToyFlowMLP(num_classes=mixture(cfg).num_classes, hidden=t["hidden"], depth=t["depth"])


def train_teacher(cfg: RunConfig, fit) -> Path:
    """Train the MLP teacher (flow matching, label dropout; ``fit``: training.fitting.Fitters) and cache it
    with its metrics."""
    t, mix = mlp_settings(cfg), mixture(cfg)
    folder = teacher_dir(cfg)
    gen = torch.Generator().manual_seed(t["seed"])
    labels = torch.randint(mix.num_classes, (t["data_size"],), generator=gen)
    x0 = mix.sample(labels, gen)
    backbone = fit.teacher(lambda: build_backbone(cfg), (x0, labels), t, "toy2d teacher", "cpu", cfg.run.progress_bar)
    staging = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
    staging.mkdir(parents=True)
    torch.save(backbone.state_dict(), staging / "teacher.pt")
    metrics = teacher_metrics(cfg, backbone)
    (staging / "teacher.json").write_text(json.dumps({"settings": t, "metrics": metrics}, indent=2))
    return publish_dir(staging, folder)  # whole or not at all; a retrained teacher keeps the old one beside it


def prepare(cfg: RunConfig, fit) -> None:
    """Train and cache what this config's runs need and the cache lacks: the MLP (the exact teacher's runs
    start their generator from it too)."""
    if not teacher_cached(cfg):
        train_teacher(cfg, fit)


def teacher_cached(cfg: RunConfig) -> bool:
    return (teacher_dir(cfg) / "teacher.pt").is_file()


def write_teacher_report(cfg: RunConfig) -> Path:
    """teacher.json for a cached teacher whose report is missing."""
    path = teacher_dir(cfg) / "teacher.json"
    metrics = teacher_metrics(cfg, load_trained(cfg))
    atomic_write_text(path, json.dumps({"settings": mlp_settings(cfg), "metrics": metrics}, indent=2))
    return path


def load_teacher(cfg: RunConfig) -> ToyFlowMLP | ExactToyDenoiser:
    """The frozen teacher runs distil: the trained MLP, or the mixture's exact denoiser."""
    return ExactToyDenoiser(mixture(cfg)) if teacher_settings(cfg)["kind"] == "exact" else load_trained(cfg)


def load_init(cfg: RunConfig) -> ToyFlowMLP | None:
    """What the generator and the fake model start from: the trained MLP, which is already the teacher
    (None) unless the teacher is the exact denoiser, whose closed form has no weights to copy."""
    return load_trained(cfg) if teacher_settings(cfg)["kind"] == "exact" else None


def load_trained(cfg: RunConfig) -> ToyFlowMLP:
    """The cached MLP teacher for this config (``prepare`` trains it)."""
    path = teacher_dir(cfg) / "teacher.pt"
    if not path.is_file():
        raise UserError(f"no trained toy2d teacher at {path.parent}; train it with `make teacher SCALE=toy2d` "
                        "(a run trains it on first use).")
    backbone = build_backbone(cfg)
    fix = f"delete {path.parent} or run `make teacher SCALE=toy2d SET=...` again with --retrain"
    weights = safe_torch_load(path, fix, "teacher weights file")
    try:
        backbone.load_state_dict(weights)
    except Exception as exc:  # wrong architecture, not a state dict
        raise UserError(f"the teacher weights at {path} cannot be loaded ({exc.__class__.__name__}); {fix}.") from None
    return backbone


@torch.no_grad()
def teacher_metrics(cfg: RunConfig, teacher: ToyFlowMLP, ode_steps: int = 100) -> dict:
    """How close the teacher's many-step CFG ODE is to the exact one, at alpha 1 and cfg.objective.alpha."""
    ev = ToyEvaluator(cfg)
    out = {}
    for alpha in sorted({1.0, cfg.objective.alpha}):
        samples = teacher_cfg_sample(teacher.eval(), ev.noise, ev.labels, alpha, ode_steps)
        m = ev.metrics(samples)
        out[f"alpha_{alpha:g}"] = m
    return out


def condition_loader(cfg: RunConfig, start_step: int = 0):
    """Batches of training steps start_step .. steps-1, one per step."""
    mix, b = mixture(cfg), cfg.schedule.batch_size

    def make_batch(g: torch.Generator):  # requested labels, and real samples for data-driven regularisers
        return torch.randint(mix.num_classes, (b,), generator=g), mix.sample(torch.randint(mix.num_classes, (b,), generator=g), g)

    return step_loader(make_batch, cfg.run.seed, start_step, cfg.schedule.steps)


class ToyEvaluator:
    """Metrics of a student on fixed noise and labels, against exact references."""

    def __init__(self, cfg: RunConfig, seed: int = EVAL_SEED):
        self.mix, self.seed = mixture(cfg), seed
        n = cfg.evaluation.eval_samples
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % self.mix.num_classes
        self.noise = torch.randn(n, 2, generator=gen)
        ref_noise = torch.randn(n, 2, generator=gen)
        self.cfg_target = self.mix.cfg_ode_sample(ref_noise, self.labels, cfg.objective.alpha, steps=200)
        self.conditional = self.mix.sample(self.labels, gen)

    def metrics(self, x: torch.Tensor) -> dict:
        x = x.detach().float().cpu()
        finite = torch.isfinite(x).all(dim=1)
        xf, lf = x[finite], self.labels[finite]
        if len(xf) == 0:
            return {"out_mean": float("nan"), "out_std": float("nan"), "nonfinite_samples": float(len(x))}
        precision = (self.mix.class_log_likelihood(xf).argmax(1) == lf).float().mean()
        return {
            "out_mean": x.mean().item(),
            "out_std": x.std().item(),
            "dist_cfg_target": classwise_energy_distance(xf, self.cfg_target, lf, self.labels),
            "dist_conditional": classwise_energy_distance(xf, self.conditional, lf, self.labels),
            "class_precision": precision.item(),
            "outside_support": self.mix.outside_support(xf).float().mean().item(),
            "nonfinite_samples": float((~finite).sum()),
        }

    def __call__(self, module) -> dict:
        return self.metrics(module.sample(self.noise.to(module.device), self.labels.to(module.device),
                                          evaluation_generator(self.seed)))

    measure = __call__  # nothing written: the raw generator's metrics are the same call


def make_evaluator(cfg: RunConfig, run_dir: Path | None = None, seed: int = EVAL_SEED) -> ToyEvaluator:
    return ToyEvaluator(cfg, seed)


def metric_floor(cfg: RunConfig) -> dict:
    """The metrics of fresh exact CFG-ODE samples (the target itself) at the evaluation's sample count:
    what a perfect student would score."""
    return next(iter(reference_rows(cfg).values()))


def reference_rows(cfg: RunConfig) -> dict[str, dict]:
    """Rows for tables: fresh exact samples measured like a student, so their
    distances are the finite-sample floor of each distance column."""
    ev = ToyEvaluator(cfg)
    gen = torch.Generator().manual_seed(EVAL_SEED + 1)
    fresh_target = ev.mix.cfg_ode_sample(torch.randn(len(ev.labels), 2, generator=gen), ev.labels, cfg.objective.alpha, steps=200)
    fresh_conditional = ev.mix.sample(ev.labels, gen)
    return {f"exact CFG-ODE, alpha={cfg.objective.alpha:g} (fresh samples)": ev.metrics(fresh_target),
            "exact conditional, alpha=1 (fresh samples)": ev.metrics(fresh_conditional)}
