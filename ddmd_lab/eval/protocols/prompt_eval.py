"""Generating images for a prompt set, with everything that compares them: keyed noise, image
sources (a run's student, the teacher, a folder of images), the teacher's cached images for the
same prompts and noise, and per-prompt diversity.

Every image has a *key*: ``(i,)`` for prompt i's image, ``(i, s)`` for its s-th extra seed
(diversity).  Its starting noise comes from a generator seeded by ``(seed, *key)``, so an image
does not depend on the batch size or on which other images are drawn: the student and the teacher
start from exactly the same noise for the same key, and a cached teacher image stays valid for any
later evaluation that asks for that key.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ddmd_lab.errors import UserError
from ddmd_lab.eval.colour import colour_stats
from ddmd_lab.eval.colour import describe as describe_colour
from ddmd_lab.eval.colour import mean_stats, relative
from ddmd_lab.eval.protocols.dmd2 import image_files
from ddmd_lab.util.io import atomic_write_text, publish_dir
from ddmd_lab.util.progress import Progress

Key = tuple[int, ...]


def noise_seed(seed: int, key: Key) -> int:
    return int(np.random.SeedSequence([int(seed), *map(int, key)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def keyed_noise(shape: Sequence[int], seed: int, keys: Sequence[Key]) -> Tensor:
    """(len(keys), *shape) float32 standard normal noise, image by image from its key."""
    return torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(noise_seed(seed, k))) for k in keys])


class SamplerSource:
    """A ``generate.Sampler`` (a run's student or a scale's teacher) as an image source."""

    def __init__(self, sampler, seed: int):
        self.sampler, self.seed = sampler, seed

    def __call__(self, prompts: list[str], keys: list[Key]) -> Tensor:
        noise = keyed_noise(self.sampler.model.backbone.sample_shape, self.seed, keys)
        return self.sampler(prompts, noise=noise)


class FolderSource:
    """Images made elsewhere (e.g. DMD2's own release, an exported pipeline): the folder's images in
    sorted order are prompts 0, 1, ...; there is one image per prompt, so no diversity from it."""

    def __init__(self, folder: Path, n: int):
        self.folder = Path(folder).expanduser()
        self.files = image_files(self.folder) if self.folder.is_dir() else []
        if len(self.files) < n:
            raise UserError(f"{self.folder} holds {len(self.files)} images, fewer than the {n} prompts to score; "
                            "name one image per prompt, in prompt order when sorted by file name.")

    uint8 = True  # gives 8-bit pixels as they are (of any size): no conversion, no resampling

    def __call__(self, prompts: list[str], keys: list[Key]) -> list[np.ndarray]:
        if any(len(k) != 1 for k in keys):
            raise UserError("a folder of images has one image per prompt; diversity needs a run (set DIVERSITY=0).")
        return [_read(self.files[k[0]]) for k in keys]


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


def batches(source: Callable, prompts: Sequence[str], keys: Sequence[Key], batch_size: int, seed: int,
            to_uint8: Callable[[Tensor], np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
    """(first index, uint8 images (N, H, W, 3), or a list of them from a ``uint8`` source) per batch.  torch's RNG is seeded with ``seed + first index`` before each
    call (inside ``fork_rng``: the caller's state is untouched): a renoise student's fresh noise is reproducible."""
    # a bar on a terminal, a plain line every few percent in a log file (progress.py)
    with torch.random.fork_rng(), Progress(len(prompts), "sampling", "image") as progress:
        for i in range(0, len(prompts), batch_size):
            torch.manual_seed(seed + i)
            images = source(list(prompts[i:i + batch_size]), list(keys[i:i + batch_size]))
            n = len(prompts[i:i + batch_size])
            progress.update(i + n)
            if getattr(source, "uint8", False):  # pixels made elsewhere: used as they are
                yield i, images
                continue
            if images.ndim != 4 or len(images) != n:
                raise ValueError(f"the image source returned shape {tuple(images.shape)} for {n} prompts; "
                                 "expected (B, 3, H, W) in [-1, 1]")
            yield i, to_uint8(images)


def spread(n: int, count: int) -> list[int]:
    """``count`` indices evenly spread over range(n) (all of them when count >= n)."""
    if count <= 0 or n <= 0:
        return []
    return sorted(set(np.linspace(0, n - 1, min(count, n)).round().astype(int).tolist()))


# ----------------------------------------------------------------------------- the teacher's images

@dataclass
class TeacherImages:
    """The teacher's cached images (uint8, as ``to_uint8`` made them) for some keys, with their colour stats."""

    folder: Path
    keys: list[Key]
    meta: dict

    def file(self, key: Key) -> Path:
        return self.folder / ("_".join(map(str, key)) + ".png")

    def images(self, keys: Sequence[Key]) -> list[np.ndarray]:
        return [_read(self.file(k)) for k in keys]

    def colour(self, keys: Sequence[Key]) -> dict[str, np.ndarray]:
        """Per-image colour stats of the cached images at ``keys`` (read in small groups)."""
        parts = [colour_stats(np.stack(self.images(keys[i:i + 16]))) for i in range(0, len(keys), 16)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def teacher_images(make_sampler: Callable[[], object], identity: dict, prompts: Sequence[str], keys: Sequence[Key],
                   seed: int, to_uint8: Callable[[Tensor], np.ndarray], conversion: str, cache_dir: Path,
                   batch_size: int) -> TeacherImages:
    """The teacher's images for ``keys`` (prompt ``prompts[j]`` for ``keys[j]``), from the cache under
    ``cache_dir/teacher_images`` or sampled now (``make_sampler()`` loads the teacher only then).
    Keyed by the teacher's ``identity`` (what decides its images: the scale computes it, e.g.
    scales/text2image.teacher_identity), the prompts, the keys, the seed and the 8-bit ``conversion``."""
    spec = {"identity": identity, "seed": seed, "conversion": conversion,
            "prompts": hashlib.sha256("\0".join(prompts).encode()).hexdigest(), "keys": [list(k) for k in keys]}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / "teacher_images" / f"{len(keys)}-{digest}"
    meta_file = folder / "meta.json"
    if meta_file.is_file():
        return TeacherImages(folder, list(map(tuple, keys)), json.loads(meta_file.read_text()))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.staging-{os.getpid()}-{secrets.token_hex(3)}")
    staging.mkdir()
    try:
        sampler = make_sampler()
        out = TeacherImages(staging, list(map(tuple, keys)), {})
        source = SamplerSource(sampler, seed)
        for i, u8 in batches(source, prompts, keys, batch_size, seed, to_uint8):
            for key, img in zip(keys[i:i + batch_size], u8):
                Image.fromarray(img).save(out.file(tuple(key)), compress_level=1)
        meta = {"n": len(keys), "seed": seed, "conversion": conversion, "steps": identity.get("steps"),
                "alpha": identity.get("alpha"), "source": identity["teacher"].get("source")}
        atomic_write_text(staging / "meta.json", json.dumps(meta, indent=2))
        del sampler
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if meta_file.is_file():  # another process finished first: keep its images, drop ours
        shutil.rmtree(staging, ignore_errors=True)
    else:
        publish_dir(staging, folder)
    return TeacherImages(folder, list(map(tuple, keys)), json.loads(meta_file.read_text()))


# ----------------------------------------------------------------------------- diversity

def diversity_keys(n_prompts: int, prompts: int, seeds: int) -> tuple[list[int], list[Key]]:
    """(prompt index per image, key per image) of ``seeds`` extra images for ``prompts`` evenly spread prompts."""
    if seeds < 2 or prompts <= 0:
        return [], []
    index = [i for i in spread(n_prompts, prompts) for _ in range(seeds)]
    return index, [(i, s) for i in spread(n_prompts, prompts) for s in range(1, seeds + 1)]


def mean_pairwise(features: np.ndarray | Tensor, seeds: int, metric: str) -> float:
    """Mean over prompts of the mean distance between each pair of a prompt's ``seeds`` images
    (features (P * seeds, D), grouped by prompt).  ``cosine``: 1 - cos of the features; ``l2``: Euclidean."""
    f = torch.as_tensor(np.asarray(features), dtype=torch.float64).reshape(-1, seeds, np.shape(features)[-1])
    if metric == "cosine":
        f = torch.nn.functional.normalize(f, dim=-1)
        d = 1 - f @ f.transpose(1, 2)
    elif metric == "l2":
        d = torch.cdist(f, f)
    else:
        raise ValueError(f"unknown metric {metric!r}")
    iu = torch.triu_indices(seeds, seeds, 1)
    return float(d[:, iu[0], iu[1]].mean())


def diversity_stats(images: Sequence[np.ndarray], seeds: int, view: Callable[[np.ndarray], np.ndarray], features,
                    clip=None) -> dict[str, float]:
    """Per-prompt diversity of ``images`` (grouped by prompt, ``seeds`` each): the mean pairwise L2
    distance of Inception features (of ``view`` of each image, the FID path) and, with a CLIP scorer,
    the mean pairwise cosine distance of its unit-norm image embeddings."""
    if not len(images):
        return {}
    out = {"diversity_inception": mean_pairwise(features.of_uint8([view(x) for x in images]), seeds, "l2")}
    if clip is not None:
        out["diversity_clip"] = mean_pairwise(clip.image_features(np.stack(images)), seeds, "cosine")
    return out


# ----------------------------------------------------------------------------- one evaluation

@dataclass
class Plan:
    """Which images an evaluation draws besides one per prompt: the prompts whose teacher image is
    compared (``teacher_index``), and the extra seeds of the diversity prompts."""

    n: int
    teacher_index: list[int]
    div_index: list[int]
    div_keys: list[Key]
    seeds: int

    @classmethod
    def make(cls, n: int, teacher: int, diversity_prompts: int, seeds: int) -> "Plan":
        div_index, div_keys = diversity_keys(n, diversity_prompts, seeds)
        return cls(n, spread(n, teacher), div_index, div_keys, seeds)

    def teacher_keys(self) -> list[Key]:
        return [(i,) for i in self.teacher_index] + self.div_keys

    def teacher_prompts(self, prompts: Sequence[str]) -> list[str]:
        return [prompts[i] for i in self.teacher_index] + [prompts[i] for i in self.div_index]


def measure(source, prompts: Sequence[str], *, to_uint8, batch_size: int, seed: int, features, views: dict,
            clip=None, hps=None, save: Callable[[int, np.ndarray], None] | None = None) -> dict:
    """One image per prompt (key ``(i,)``), measured batch by batch and dropped (10k 1024-px images do not
    fit in memory): Inception features of each of ``views`` (name -> uint8 transform before clean-fid),
    per-image CLIP and HPS cosines, per-image colour stats.  ``save(i, pixels)`` keeps each image."""
    keys = [(i,) for i in range(len(prompts))]
    feats = {name: [] for name in views}
    clip_cos, hps_cos, colour = [], [], []
    shape = None
    for i, u8 in batches(source, prompts, keys, batch_size, seed, to_uint8):
        shape = shape or list(u8[0].shape)
        caps = list(prompts[i:i + len(u8)])
        if save is not None:
            for j, img in enumerate(u8):
                save(i + j, img)
        for name, view in views.items():
            feats[name].append(features.of_uint8([view(x) for x in u8]))
        if clip is not None:
            clip_cos.append(clip.cosines(u8, caps).numpy())
        if hps is not None:
            hps_cos.append(hps.cosines(u8, caps).numpy())
        colour.append(colour_stats(u8))
    return {"features": {k: np.concatenate(v) for k, v in feats.items()},
            "clip": np.concatenate(clip_cos) if clip is not None else None,
            "hps": np.concatenate(hps_cos) if hps is not None else None,
            "colour": {k: np.concatenate([c[k] for c in colour]) for k in colour[0]}, "image_shape": shape}


def compare(measured: dict, plan: Plan, source, prompts: Sequence[str], *, to_uint8, batch_size: int, seed: int,
            features, view, clip=None, teacher: TeacherImages | None = None) -> dict:
    """Colour means (all images), colour relative to the teacher on the planned prompts (same noise), and
    per-prompt diversity of the source and the teacher: results.json's comparison numbers."""
    out = mean_stats(measured["colour"])
    if teacher is not None and plan.teacher_index:
        mine = mean_stats(measured["colour"], plan.teacher_index)
        theirs = mean_stats(teacher.colour([(i,) for i in plan.teacher_index]))
        out.update(relative(mine, theirs, "vs_teacher"))
        out.update({f"teacher_{k}": v for k, v in theirs.items()})
    if plan.div_keys:
        images = [img for _, u8 in batches(source, [prompts[i] for i in plan.div_index], plan.div_keys, batch_size,
                                           seed + 10_000_000, to_uint8) for img in u8]
        div = diversity_stats(images, plan.seeds, view, features, clip)
        out.update(div)
        if teacher is not None:
            theirs = diversity_stats(teacher.images(plan.div_keys), plan.seeds, view, features, clip)
            out.update({f"{k}_vs_teacher": div[k] / theirs[k] if theirs[k] > 0 else float("nan") for k in div})
            out.update({f"teacher_{k}": v for k, v in theirs.items()})
    return out


# ----------------------------------------------------------------------------- the results folder

def staging_dir(out_dir: Path, name: str) -> Path:
    """A fresh folder for a result being written, published whole (``publish_dir``) when complete."""
    # hidden and unique per process, beside the target so publish_dir's rename stays on one filesystem
    path = out_dir / f".{name}.staging-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir(parents=True)
    return path


def describe_comparison(clip, hps, plan: Plan, teacher: TeacherImages | None) -> dict:
    """What results.json says about how its comparison numbers (``compare``'s) were made."""
    return {**(clip.describe() if clip is not None else {"clip_model": None}),
            **(hps.describe() if hps is not None else {"hps_model": None}),
            "colour": describe_colour(),
            "teacher": ({**teacher.meta, "compared_prompts": len(plan.teacher_index), "cache": str(teacher.folder)}
                        if teacher is not None else None),
            "diversity": ({"prompts": len(plan.div_keys) // plan.seeds, "seeds": plan.seeds,
                           "inception": "mean pairwise L2 of Inception pool features (FID path) per prompt",
                           "clip": "mean pairwise 1 - cosine of CLIP image embeddings per prompt"}
                          if plan.div_keys else None)}
