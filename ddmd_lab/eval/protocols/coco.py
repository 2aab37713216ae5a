"""COCO-10k evaluation of text-to-image students: the paper's Table 2 protocol.

Two protocols (``Protocol``): ``dmd2``, DMD2's own evaluator reproduced on the prompts and reference
images it distributes (eval/dmd2.py: FID, patch-FID, CLIP score with its prefix), the default when
those files are given; and ``val2014-seeded``, a seeded 10k subset of COCO-2014 val drawn here
(``coco_subset``; bicubic resize, plain CLIP score).  Both add HPSv2.1 (with its weights), colour
metrics relative to the teacher's images for the same prompts and noise, and per-prompt diversity
(eval/prompt_eval.py).  Every model loads from a local file: no hub access exists here.

Data layouts::

    dmd2            COCO=/data/coco10k  with subset/ (reference images) and all_prompts.pkl
                    (scripts/download_sdxl.sh of DMD2 unpacks coco10k.zip so), or its parent folder
    val2014-seeded  COCO=/data/coco     with annotations/captions_val2014.json and val2014/
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image
from torch import Tensor

from ddmd_lab.data.image_files import square_resize, unreadable_images
from ddmd_lab.errors import UserError
from ddmd_lab.eval.clip_score import ClipScorer
from ddmd_lab.eval.fid import InceptionFeatures, cached_reference_stats, fid_from_stats, stats, to_uint8_hwc
from ddmd_lab.eval.protocols.dmd2 import (PREFIX, TRANSFORMS, fid_transform, patch_transform, read_reference,
                                          to_uint8_truncated)
from ddmd_lab.eval.protocols.prompt_eval import Plan, compare, describe_comparison, measure, staging_dir
from ddmd_lab.util.io import atomic_write_text, publish_dir
from ddmd_lab.util.progress import track

COCO_LAYOUT = "COCO=/data/coco with annotations/captions_val2014.json and val2014/"
CAPTIONS_FILE = Path("annotations") / "captions_val2014.json"
IMAGES_DIR = "val2014"
RESULT_DIR = "coco10k"



# ----------------------------------------------------------------------------- the subset

@dataclass(frozen=True)
class CocoPair:
    image_file: Path
    caption: str
    image_id: int


def resolve_coco(root: Path) -> tuple[Path, Path]:
    """COCO root folder -> (captions json, images folder) in the standard layout."""
    root = Path(root).expanduser()
    captions, images = root / CAPTIONS_FILE, root / IMAGES_DIR
    if not captions.is_file() or not images.is_dir():
        missing = captions if not captions.is_file() else images
        raise UserError(f"COCO data not found: {missing} is missing; point to a folder laid out as {COCO_LAYOUT}.")
    return captions, images


def _load_captions_json(captions_json: Path) -> dict:
    if not captions_json.is_file():
        raise UserError(f"COCO captions file {captions_json} not found; expected the layout {COCO_LAYOUT}.")
    try:
        data = json.loads(captions_json.read_text())
        images, annotations = data["images"], data["annotations"]
        # touch every field we rely on now, so a malformed file fails here with one message, not mid-eval
        images = [(int(im["id"]), str(im["file_name"])) for im in images]
        annotations = [(int(a["id"]), int(a["image_id"]), str(a["caption"])) for a in annotations]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{captions_json} is not a COCO captions file ({type(e).__name__}: {e}); use the official "
                        f"captions_val2014.json, laid out as {COCO_LAYOUT}.") from e
    return {"images": images, "annotations": annotations}


def first_captions(annotations: Sequence[tuple[int, int, str]]) -> dict[int, str]:
    """image id -> the caption of its lowest-id annotation (a fixed, order-independent choice)."""
    best: dict[int, tuple[int, str]] = {}
    for ann_id, image_id, caption in annotations:
        if image_id not in best or ann_id < best[image_id][0]:
            best[image_id] = (ann_id, caption)
    # COCO captions often carry stray whitespace / newlines; the prompt should not
    return {image_id: " ".join(caption.split()) for image_id, (_, caption) in best.items()}


def coco_subset(captions_json: Path, images_dir: Path, n: int = 10_000, seed: int = 0) -> list[CocoPair]:
    """A deterministic subset of ``n`` COCO images, one caption each, ordered by image id.

    Images (those with at least one caption) are sorted by id, then
    ``random.Random(seed).sample`` picks ``n`` of them; with fewer than ``n``
    available all are used (no warning: ``len`` of the result says so).
    DMD2 samples one caption per image; we take the annotation with the
    lowest id, so the choice does not depend on the order of the json.
    """
    captions_json, images_dir = Path(captions_json), Path(images_dir)
    data = _load_captions_json(captions_json)
    if not images_dir.is_dir():
        raise UserError(f"COCO image folder {images_dir} not found; expected the layout {COCO_LAYOUT}.")
    captions = first_captions(data["annotations"])
    images = sorted((image_id, name) for image_id, name in data["images"] if image_id in captions)
    if not images:
        raise UserError(f"{captions_json} has no captioned images; use the official captions_val2014.json ({COCO_LAYOUT}).")
    chosen = sorted(random.Random(seed).sample(images, min(n, len(images))))
    pairs = [CocoPair(images_dir / name, captions[image_id], image_id) for image_id, name in chosen]
    missing = [p.image_file for p in pairs if not p.image_file.is_file()]
    if missing:
        raise UserError(f"{len(missing)} of {len(pairs)} COCO images are missing, e.g. {missing[0]}; "
                        f"{images_dir} must hold the full val2014 image set ({COCO_LAYOUT}).")
    bad = unreadable_images([p.image_file for p in pairs])
    if bad:
        raise UserError(f"{len(bad)} of {len(pairs)} COCO images cannot be read as images, e.g. {bad[0]}; "
                        f"re-download them (the full val2014 image set, {COCO_LAYOUT}).")
    return pairs


def subset_hash(pairs: Sequence[CocoPair]) -> str:
    """Names the reference images (ids and file names, not captions nor absolute paths:
    moving the data folder keeps the cache valid)."""
    text = "\n".join(f"{p.image_id}:{p.image_file.name}" for p in pairs)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- images

def reference_image(path: Path, resolution: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return square_resize(img, resolution)
    except OSError as e:
        raise UserError(f"cannot read COCO image {path} ({e}); re-download val2014 ({COCO_LAYOUT}).") from e


def iter_reference_batches(pairs: Sequence[CocoPair], resolution: int, batch_size: int) -> Iterator[np.ndarray]:
    """uint8 (B, R, R, 3) batches: 10k images at 512 are 7.9 GB, so callers stream."""
    for i in range(0, len(pairs), batch_size):
        yield np.stack([reference_image(p.image_file, resolution) for p in pairs[i:i + batch_size]])


def reference_images(pairs: Sequence[CocoPair], resolution: int) -> np.ndarray:
    """All reference images, uint8 (N, R, R, 3), centre-cropped and bicubic-resized.
    Small subsets only (tests, previews); ``reference_stats`` streams instead."""
    return np.concatenate(list(iter_reference_batches(pairs, resolution, 64)))


def reference_stats(pairs: Sequence[CocoPair], resolution: int, cache_dir: Path,
                    features: InceptionFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Inception (mu, sigma) of the reference images, cached per (subset, resolution)."""
    path = Path(cache_dir) / f"coco_ref_{subset_hash(pairs)}_n{len(pairs)}_r{resolution}.npz"

    def compute() -> np.ndarray:
        n = -(-len(pairs) // features.batch_size)
        return np.concatenate([features.of_uint8(batch) for batch in
                               track(iter_reference_batches(pairs, resolution, features.batch_size), n,
                                     "reference features")])

    return cached_reference_stats(path, compute)


# ----------------------------------------------------------------------------- DMD2's reference set

def dmd2_reference_stats(data, view_name: str, view, resolution: int, cache_dir: Path,
                         features: InceptionFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Inception (mu, sigma) of every file of DMD2's reference folder through ``view`` (its FID or
    patch-FID transform), cached per (reference set, view, resolution)."""
    files = data.reference_files
    path = Path(cache_dir) / f"dmd2_ref_{data.reference_hash()}_n{len(files)}_{view_name}_r{resolution}.npz"

    def compute() -> np.ndarray:
        starts = range(0, len(files), features.batch_size)
        return np.concatenate([features.of_uint8([view(read_reference(f)) for f in files[i:i + features.batch_size]])
                               for i in track(starts, len(starts), f"reference features ({view_name})")])

    return cached_reference_stats(path, compute)


# ----------------------------------------------------------------------------- protocols

@dataclass(frozen=True)
class Protocol:
    """How generated and reference images become FID / CLIP inputs.

    ``dmd2``: DMD2's own evaluator (eval/dmd2.py): truncated 8 bits at full resolution, FID after a
    square crop + Lanczos to ``resolution``, patch-FID on 299 x 299 centre crops, CLIP with the
    "A photo depicts " prefix after a 256 Lanczos resize.  ``val2014-seeded``: this harness's
    earlier protocol: a seeded subset of val2014 (``coco_subset``), rounded 8 bits, centre crop +
    PIL bicubic to ``resolution`` for both sides, FID and plain CLIP score.
    """

    name: str
    resolution: int

    def __post_init__(self):
        if self.name not in PROTOCOLS:
            raise UserError(f"unknown COCO protocol {self.name!r}; use one of {', '.join(PROTOCOLS)}.")

    def to_uint8(self, images: Tensor) -> np.ndarray:
        return to_uint8_truncated(images) if self.name == "dmd2" else generated_batch(images, self.resolution)

    def views(self) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        """The Inception inputs per FID kind (before clean-fid's own resize to 299)."""
        if self.name == "dmd2":
            return {"fid": lambda u8: fid_transform(u8, self.resolution), "patch_fid": patch_transform}
        # to_uint8 already cropped and resized a sampled image; images read from a folder get the same here
        return {"fid": lambda u8: u8 if u8.shape[:2] == (self.resolution,) * 2 else
                square_resize(Image.fromarray(u8), self.resolution)}

    def clip_options(self) -> dict:
        return {"prefix": PREFIX, "resize": 256} if self.name == "dmd2" else {}

    def describe(self) -> dict:
        if self.name == "dmd2":
            return {"protocol": "dmd2", "transforms": TRANSFORMS}
        return {"protocol": "val2014-seeded", "transforms": {
            "uint8": "((x + 1) * 127.5) rounded to uint8", "subset": "random.Random(seed).sample of captioned val2014 "
            "images, lowest-id caption each", "fid": "centre crop to square, PIL bicubic to the eval resolution "
            "(generated and reference alike), then clean-fid (PIL bicubic in float to 299, Inception 2015-12-05)",
            "clip_image": "open_clip's eval transform", "clip_text": "the caption as is",
            "clip_score": "mean raw cosine (clip_score) and x100 (clip_score_x100)"}}


PROTOCOLS = ("dmd2", "val2014-seeded")


# ----------------------------------------------------------------------------- evaluation

def generated_batch(images: Tensor, resolution: int) -> np.ndarray:
    """The student's [-1, 1] (B, C, H, W) output -> uint8 (B, R, R, 3), processed like the references."""
    u8 = to_uint8_hwc(images)
    if u8.shape[1:3] == (resolution, resolution):
        return u8
    return np.stack([square_resize(Image.fromarray(img), resolution) for img in u8])


def evaluate_coco(source, prompts: Sequence[str], names: Sequence[str], out_dir: Path, *, protocol: Protocol,
                  reference: dict[str, tuple[np.ndarray, np.ndarray]], features, clip: ClipScorer | None = None,
                  hps=None, batch_size: int = 16, seed: int = 0, plan=None, teacher=None, info: dict | None = None,
                  save_images: bool = True, result_dir: str = RESULT_DIR) -> dict:
    """One image per prompt from ``source(prompts, keys)`` (images in [-1, 1]; eval/prompt_eval.py), then
    FID against ``reference`` (name -> Inception (mu, sigma), one per ``protocol.views()``), CLIP score,
    HPSv2.1, colour stats (relative to ``teacher``'s images for the same prompts and noise), and the
    diversity of ``plan``'s extra seeds; the folder is staged and published whole.

    ``out_dir/<result_dir>`` receives ``images/`` (PNGs named ``names``, in prompt order; skipped with
    ``save_images=False``), ``captions.json`` and ``results.json``; an older result is renamed beside
    it with its own images and numbers, never mixed or overwritten.
    """
    if len(prompts) < 2:
        raise UserError(f"COCO evaluation needs at least 2 images for FID, got {len(prompts)}; raise the subset size.")
    views = protocol.views()
    if set(reference) != set(views):
        raise ValueError(f"reference statistics for {sorted(reference)}, protocol {protocol.name} needs {sorted(views)}")
    out_dir, started = Path(out_dir), time.time()
    plan = plan or Plan.make(len(prompts), 0, 0, 0)
    staging = staging_dir(out_dir, result_dir)
    try:
        def save_png(i: int, img: np.ndarray) -> None:  # lossless; level 1 is fast
            Image.fromarray(img).save(staging / "images" / names[i], compress_level=1)

        save = None
        if save_images:
            (staging / "images").mkdir()
            save = save_png
        measured = measure(source, prompts, to_uint8=protocol.to_uint8, batch_size=batch_size, seed=seed,
                           features=features, views=views, clip=clip, hps=hps, save=save)
        results = {**protocol.describe(), "n": len(prompts), "resolution": protocol.resolution,
                   "image_shape": measured["image_shape"], "seed": seed}
        for name, feats in measured["features"].items():
            results[name] = fid_from_stats(stats(feats), reference[name])
        cos = measured["clip"]
        results.update(clip_score=float(cos.mean()) if cos is not None else None,
                       clip_score_x100=float(100 * cos.mean()) if cos is not None else None,
                       hpsv21=float(100 * measured["hps"].mean()) if hps is not None else None)
        results.update(compare(measured, plan, source, prompts, to_uint8=protocol.to_uint8, batch_size=batch_size,
                               seed=seed, features=features, view=views["fid"], clip=clip, teacher=teacher))
        results.update(describe_comparison(clip, hps, plan, teacher), **(info or {}))
        atomic_write_text(staging / "captions.json", json.dumps(
            [{"file": f, "caption": c} for f, c in zip(names, prompts)], indent=1))
        results["elapsed_s"] = round(time.time() - started, 1)
        atomic_write_text(staging / "results.json", json.dumps(results, indent=2))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # our own half-written folder: nothing else is touched
        raise
    publish_dir(staging, out_dir / result_dir)
    return results
