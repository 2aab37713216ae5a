"""Image scale on a CPU: Fashion-MNIST (or MNIST-5k), a small class-conditional
diffusers UNet teacher trained by the harness, classes as prompts.

Cached artefacts live under ``cache_dir``: the teacher (a diffusers folder
plus teacher.json with its CFG sweep), the classifier, and Inception
reference statistics.  The scale name selects the dataset (``fashion`` or
``mnist``).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ddmd_lab.backbones.class_unet import ClassUNet, build_unet
from ddmd_lab.config import RunConfig, scale_settings
from ddmd_lab.core.rollout import teacher_cfg_sample
from ddmd_lab.data.images import ImageSet, load_image_set
from ddmd_lab.data.steps import step_loader
from ddmd_lab.errors import UserError
from ddmd_lab.eval.classifier import ClassifierMetrics, load_classifier, train_classifier
from ddmd_lab.eval.colour import colour_stats, mean_stats, relative
from ddmd_lab.eval.fid import InceptionFeatures, cached_reference_stats, fid_from_stats, stats
from ddmd_lab.eval.grid import save_grid
from ddmd_lab.eval.spectra import high_frequency_excess, raps, spectral_centroid
from ddmd_lab.eval.stats import output_stats
from ddmd_lab.eval.term_spectra import observer_excess, term_spectra
from ddmd_lab.scales.base import EVAL_SEED, evaluation_generator
from ddmd_lab.util.io import atomic_save_npz, atomic_write_text, publish_dir

TEACHER_DEFAULTS = {"size": "small", "patch": 2, "steps": 2500, "batch_size": 128, "lr": 1e-3, "p_uncond": 0.1, "seed": 0,
                    "eval_samples": 500, "ode_steps": 20, "alphas": [1.0, 1.5, 2.0, 3.0]}
DATA_DEFAULTS = {
    "root": None,                  # folder with the IDX files (fashion); None = Debian's location
    "real_eval_images": 2000,      # test images for the classifier FD and the reference spectrum
    "fid_reference_images": 2000,  # test images behind the cached Inception statistics (Inception: ~7.5 images/s measured on 2 CPU cores)
    "classifier_epochs": 2,
}


def teacher_settings(cfg: RunConfig) -> dict:
    return scale_settings(cfg.teacher, TEACHER_DEFAULTS, "teacher")


def data_settings(cfg: RunConfig) -> dict:
    return scale_settings(cfg.data, DATA_DEFAULTS, "data")


@functools.lru_cache(maxsize=4)
def cached_image_set(name: str, root: str | None, split: str) -> ImageSet:
    """A dataset split, read once per process (the fine-tune reads a scale's data by name, too)."""
    return load_image_set(name, root, split)


def image_set(cfg: RunConfig, split: str = "train") -> ImageSet:
    return cached_image_set(cfg.run.scale, data_settings(cfg)["root"], split)


def teacher_dir(cfg: RunConfig) -> Path:
    spec = {k: v for k, v in teacher_settings(cfg).items() if k not in ("eval_samples", "ode_steps", "alphas")}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cfg.run.cache_dir) / "teachers" / cfg.run.scale / key


def classifier_dir(cfg: RunConfig) -> Path:
    return Path(cfg.run.cache_dir) / "classifiers" / f"{cfg.run.scale}-{data_settings(cfg)['classifier_epochs']}ep"


def classifier_cached(cfg: RunConfig) -> bool:
    return (classifier_dir(cfg) / "classifier.pt").is_file()


def train_scale_classifier(cfg: RunConfig, fit) -> Path:
    train, test = image_set(cfg, "train"), image_set(cfg, "test")
    return train_classifier(fit.classifier, train.images, train.labels, test.images, test.labels, classifier_dir(cfg),
                            train.num_classes, epochs=data_settings(cfg)["classifier_epochs"], progress=cfg.run.progress_bar)


def classifier(cfg: RunConfig):
    """The scale's cached classifier (``prepare`` trains it)."""
    if not classifier_cached(cfg):
        raise UserError(f"no classifier at {classifier_dir(cfg)}; train it with `make classifier SCALE={cfg.run.scale}` "
                        "(a run trains it on first use).")
    return load_classifier(classifier_dir(cfg), image_set(cfg, "train").num_classes)


def real_eval_images(cfg: RunConfig) -> torch.Tensor:
    test = image_set(cfg, "test")
    return test.images[: data_settings(cfg)["real_eval_images"]]


def inception_reference(cfg: RunConfig, features: InceptionFeatures):
    """Inception statistics of the test split (all of it), cached per dataset and resolution."""
    real = image_set(cfg, "test").images[: data_settings(cfg)["fid_reference_images"]]
    path = Path(cfg.run.cache_dir) / "fid_stats" / f"{cfg.run.scale}-test-{real.shape[-1]}px-{len(real)}.npz"
    return cached_reference_stats(path, lambda: features.of_images(real))


def train_teacher(cfg: RunConfig, fit) -> Path:
    """Train the UNet teacher (``fit``: training.fitting.Fitters) and cache it with its CFG sweep."""
    t, data = teacher_settings(cfg), image_set(cfg, "train")
    folder = teacher_dir(cfg)
    backbone = fit.teacher(lambda: ClassUNet(build_unet(t["size"], data.num_classes, data.images.shape[1],
                                                        data.images.shape[-1], t["patch"]), data.num_classes, t["patch"]),
                           (data.images, data.labels), t, f"{cfg.run.scale} teacher", cfg.parallel.accelerator, cfg.run.progress_bar)
    staging = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
    backbone.save(staging)
    publish_dir(staging, folder)  # whole or not at all; a retrained teacher keeps the old one beside it
    if not classifier_cached(cfg):  # the teacher's report measures adherence with it
        train_scale_classifier(cfg, fit)
    write_teacher_report(cfg)
    return folder


def prepare(cfg: RunConfig, fit) -> None:
    """Train and cache what this config's runs need and the cache lacks: the teacher, then the classifier."""
    if not teacher_cached(cfg):
        train_teacher(cfg, fit)
    if not classifier_cached(cfg):
        train_scale_classifier(cfg, fit)


def teacher_cached(cfg: RunConfig) -> bool:
    return (teacher_dir(cfg) / "ddmd_adapter.json").is_file()


def write_teacher_report(cfg: RunConfig) -> Path:
    """teacher.json: the settings and the CFG sweep of the cached teacher."""
    folder = teacher_dir(cfg)
    report = teacher_report(cfg, load_teacher(cfg).eval(), folder)
    atomic_write_text(folder / "teacher.json", json.dumps({"settings": teacher_settings(cfg), "cfg_sweep": report,
                                                           "fid_samples": teacher_settings(cfg)["eval_samples"]}, indent=2))
    return folder / "teacher.json"


@torch.no_grad()
def teacher_report(cfg: RunConfig, teacher: ClassUNet, folder: Path) -> dict:
    """The teacher's many-step CFG samples at each alpha: FID, adherence, stats, a grid."""
    t = teacher_settings(cfg)
    n, k = t["eval_samples"], teacher.num_classes
    gen = torch.Generator().manual_seed(EVAL_SEED)
    noise = torch.randn(n, *teacher.sample_shape, generator=gen)
    labels = torch.arange(n) % k
    cls = ClassifierMetrics(classifier(cfg), real_eval_images(cfg))
    inception = InceptionFeatures()
    reference = inception_reference(cfg, inception)
    out = {}
    for alpha in t["alphas"]:
        samples = torch.cat([teacher_cfg_sample(teacher, noise[i:i + 250], labels[i:i + 250], alpha, t["ode_steps"])
                             for i in range(0, n, 250)])
        fid = fid_from_stats(stats(inception.of_images(samples)), reference)
        out[f"alpha_{alpha:g}"] = {"fid": fid, **cls(samples, labels), **output_stats(samples)}
        save_grid(_grid_order(samples, labels, k), folder / f"samples_alpha_{alpha:g}.png", nrow=8)
    return out


def _grid_order(samples: torch.Tensor, labels: torch.Tensor, k: int, per_class: int = 8) -> torch.Tensor:
    return torch.cat([samples[labels == c][:per_class] for c in range(k)])


def load_teacher(cfg: RunConfig) -> ClassUNet:
    if not teacher_cached(cfg):
        raise UserError(f"no trained {cfg.run.scale} teacher at {teacher_dir(cfg)}; train it with `make teacher "
                        f"SCALE={cfg.run.scale}` (a run trains it on first use).")
    return ClassUNet.load(teacher_dir(cfg))


def condition_loader(cfg: RunConfig, start_step: int = 0):
    """Per step: requested labels, and real images (for regularisers that need data)."""
    data = image_set(cfg, "train")
    k, b, n = data.num_classes, cfg.schedule.batch_size, len(data.images)

    def make_batch(g: torch.Generator):
        idx = torch.randint(n, (b,), generator=g)
        return torch.randint(k, (b,), generator=g), data.images[idx]

    return step_loader(make_batch, cfg.run.seed, start_step, cfg.schedule.steps)


class ImageEvaluator:
    """Cheap metrics every eval point; Inception FID once at the end."""

    def __init__(self, cfg: RunConfig, run_dir: Path | None = None, seed: int = EVAL_SEED):
        self.cfg, self.run_dir, self.seed = cfg, run_dir, seed
        data = image_set(cfg, "train")
        self.num_classes = data.num_classes
        gen = torch.Generator().manual_seed(seed)
        n = cfg.evaluation.eval_samples
        self.noise = torch.randn(n, *data.images.shape[1:], generator=gen)
        self.labels = torch.arange(n) % self.num_classes
        real = real_eval_images(cfg)
        self.classifier = ClassifierMetrics(classifier(cfg), real)
        self.real_spectrum = raps(real)
        # the colour reference these scales have for free: real test images (the teacher's row, measured like a
        # student by reference_rows, carries the same metrics)
        self.real_colour = mean_stats(colour_stats(real))
        self.spectra: list[np.ndarray] = []
        self.spectra_steps: list[int] = []
        if run_dir is not None and (run_dir / "spectra.npz").is_file():  # a resumed run keeps its curve
            with np.load(run_dir / "spectra.npz") as old:
                self.spectra, self.spectra_steps = list(old["generated"]), [int(s) for s in old["steps"]]

    def metrics(self, samples: torch.Tensor) -> dict:
        spectrum = raps(samples.clamp(-1, 1))
        colour = mean_stats(colour_stats(samples))  # grey images: clipped share and RMS contrast
        return {**output_stats(samples), **self.classifier(samples, self.labels),
                "hf_excess": high_frequency_excess(spectrum, self.real_spectrum),
                "spectral_centroid": spectral_centroid(spectrum), **colour,
                **relative(colour, self.real_colour, "vs_real")}, spectrum

    def _sample(self, module, noise, labels, batch: int = 250) -> torch.Tensor:
        g = evaluation_generator(self.seed)
        return torch.cat([module.sample(noise[i:i + batch].to(module.device), labels[i:i + batch].to(module.device), g).cpu()
                          for i in range(0, len(noise), batch)])

    def measure(self, module) -> dict:
        """The metrics alone (no grid, no spectrum written): the raw generator's, beside its average's."""
        return self.metrics(self._sample(module, self.noise, self.labels))[0]

    def __call__(self, module) -> dict:
        samples = self._sample(module, self.noise, self.labels)
        metrics, spectrum = self.metrics(samples)
        if self.run_dir is not None:
            step = module.step_count
            keep = [i for i, s in enumerate(self.spectra_steps) if s < step]  # recomputed after a resume
            self.spectra, self.spectra_steps = [self.spectra[i] for i in keep], [self.spectra_steps[i] for i in keep]
            save_grid(_grid_order(samples, self.labels, self.num_classes), self.run_dir / "samples" / f"step_{step:07d}.png", 8)
            self.spectra.append(spectrum.numpy())
            self.spectra_steps.append(step)
            self._write_spectra()
        return metrics

    def _write_spectra(self) -> None:
        atomic_save_npz(self.run_dir / "spectra.npz", steps=np.array(self.spectra_steps),
                        generated=np.stack(self.spectra), real=self.real_spectrum.numpy())

    def final_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed noise and labels of the end-of-run FID (``fid_samples`` of them)."""
        n = self.cfg.evaluation.fid_samples
        gen = torch.Generator().manual_seed(EVAL_SEED + 1)
        return torch.randn(n, *self.noise.shape[1:], generator=gen), torch.arange(n) % self.num_classes

    def fid(self, samples: torch.Tensor) -> float:
        inception = InceptionFeatures(progress=self.cfg.run.progress_bar)
        return fid_from_stats(stats(inception.of_images(samples)), inception_reference(self.cfg, inception))

    def final(self, module) -> dict:
        """Inception FID (clean-fid protocol) of ``fid_samples`` student samples against the test split;
        the CA / DM spectra per tau and the observer measure of the finished student."""
        out = {}
        if self.run_dir is not None:
            observer = self.term_spectra(module).get("observer", {})
            out.update({f"observer_{k}": v for k, v in observer.items() if k != "tau"})
        if self.cfg.evaluation.fid_samples > 0:
            noise, labels = self.final_inputs()
            with torch.random.fork_rng():
                samples = self._sample(module, noise, labels)
            out.update(fid=self.fid(samples), fid_samples=self.cfg.evaluation.fid_samples)
        return out

    def term_spectra(self, module, samples: int = 500) -> dict:
        """term_spectra.npz / .json in the run folder: CA and DM spectra per tau bin of the
        student's samples, and (with a fake model) the observer's high-frequency excess."""
        noise, labels = self.noise[:samples], self.labels[:samples]
        with torch.random.fork_rng():
            x = self._sample(module, noise, labels)
            spec = term_spectra(module.teacher, module.fake, x, labels, self.cfg.objective.alpha)
            result = {"ca_centroid": spec["ca_centroid"], "dm_centroid": spec["dm_centroid"], "bins": spec["bins"].tolist()}
            if module.fake is not None:
                result["observer"] = observer_excess(module.teacher, module.fake, x, labels, self.real_spectrum)
        atomic_save_npz(self.run_dir / "term_spectra.npz", **spec, real=self.real_spectrum)
        atomic_write_text(self.run_dir / "term_spectra.json", json.dumps(result, indent=2))
        return result


def reference_rows(cfg: RunConfig) -> dict[str, dict]:
    """The teacher's many-step CFG row, measured exactly like a student (same evaluation noise,
    same FID sample count), cached in the teacher's folder."""
    t = teacher_settings(cfg)
    name = f"teacher, {t['ode_steps']}-step CFG ODE, alpha={cfg.objective.alpha:g}"
    samples = cfg.evaluation
    path = teacher_dir(cfg) / (f"reference_alpha{cfg.objective.alpha:g}_ode{t['ode_steps']}_eval{samples.eval_samples}"
                               f"_fid{samples.fid_samples}.json")
    if not path.is_file():
        ev, teacher = ImageEvaluator(cfg), load_teacher(cfg).eval()

        def sample(noise, labels):
            with torch.no_grad():
                return torch.cat([teacher_cfg_sample(teacher, noise[i:i + 250], labels[i:i + 250], cfg.objective.alpha, t["ode_steps"])
                                  for i in range(0, len(noise), 250)])

        row, spectrum = ev.metrics(sample(ev.noise, ev.labels))
        if cfg.evaluation.fid_samples > 0:
            row.update(fid=ev.fid(sample(*ev.final_inputs())), fid_samples=cfg.evaluation.fid_samples)
        atomic_write_text(path, json.dumps(row, indent=2))
    return {name: json.loads(path.read_text())}


def make_evaluator(cfg: RunConfig, run_dir: Path | None = None, seed: int = EVAL_SEED) -> ImageEvaluator:
    return ImageEvaluator(cfg, run_dir, seed)


def metric_floor(cfg: RunConfig) -> dict:
    """The metrics of real training images (labelled as the evaluation asks, eval_samples of them)
    against the evaluation's real test images: what a perfect student would score."""
    ev, data = ImageEvaluator(cfg), image_set(cfg, "train")
    g = torch.Generator().manual_seed(EVAL_SEED + 2)
    picks = [torch.nonzero(data.labels == c).flatten() for c in range(ev.num_classes)]
    idx = torch.stack([picks[int(c)][torch.randint(len(picks[int(c)]), (), generator=g)] for c in ev.labels])
    return ev.metrics(data.images[idx].float())[0]
