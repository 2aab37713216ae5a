"""COCO-10k evaluation of text-to-image students, DMD2's protocol.

A fixed 10k subset of COCO-2014 val with one caption per image; the student
draws one image per caption; FID (clean-fid's protocol, via ``fid.py``)
against the same 10k real images, centre-cropped to square and resized to the
eval resolution (512 by default), and CLIP score with open_clip (ViT-g-14 by
default) loaded from a local checkpoint file: no hub access exists here.

Expected data layout (``resolve_coco``)::

    COCO=/data/coco
      annotations/captions_val2014.json
      val2014/COCO_val2014_000000000042.jpg ...
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import UserError
from ..io import atomic_write_text, publish_dir
from .clip_score import ClipScorer
from .fid import InceptionFeatures, cached_reference_stats, fid_from_stats, stats, to_uint8_hwc

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
    return pairs


def subset_hash(pairs: Sequence[CocoPair]) -> str:
    """Names the reference images (ids and file names, not captions nor absolute paths:
    moving the data folder keeps the cache valid)."""
    text = "\n".join(f"{p.image_id}:{p.image_file.name}" for p in pairs)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- images

def square_resize(img: Image.Image, resolution: int) -> np.ndarray:
    """Centre crop to square, then PIL bicubic resize to ``resolution``: uint8 (R, R, 3).
    The same function processes real and generated images, so neither side gets an edge."""
    img = img.convert("RGB")
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


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


def uint8_to_signed(u8: np.ndarray) -> Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], a generator's output format;
    ``to_uint8_hwc`` maps it back to exactly the same pixels."""
    return torch.from_numpy(np.ascontiguousarray(u8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def reference_stats(pairs: Sequence[CocoPair], resolution: int, cache_dir: Path,
                    features: InceptionFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Inception (mu, sigma) of the reference images, cached per (subset, resolution)."""
    path = Path(cache_dir) / f"coco_ref_{subset_hash(pairs)}_n{len(pairs)}_r{resolution}.npz"

    def compute() -> np.ndarray:
        return np.concatenate([features.of_uint8(batch)
                               for batch in iter_reference_batches(pairs, resolution, features.batch_size)])

    return cached_reference_stats(path, compute)


# ----------------------------------------------------------------------------- evaluation

def generated_batch(images: Tensor, resolution: int) -> np.ndarray:
    """The student's [-1, 1] (B, C, H, W) output -> uint8 (B, R, R, 3), processed like the references."""
    u8 = to_uint8_hwc(images)
    if u8.shape[1:3] == (resolution, resolution):
        return u8
    return np.stack([square_resize(Image.fromarray(img), resolution) for img in u8])


def _staging_dir(out_dir: Path) -> Path:
    # hidden and unique per process, beside the target so publish_dir's rename stays on one filesystem
    path = out_dir / f".{RESULT_DIR}.staging-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir(parents=True)
    return path


def evaluate_coco(generate: Callable[[list[str], int], Tensor], pairs: Sequence[CocoPair], out_dir: Path, *,
                  resolution: int = 512, batch_size: int = 16, clip: ClipScorer | None,
                  features: InceptionFeatures, cache_dir: Path, seed: int = 0) -> dict:
    """Generate one image per caption, score FID and CLIP score, publish the folder.

    ``generate(captions, first_index)`` returns images in [-1, 1] (B, 3, H, W);
    torch's global RNG is seeded with ``seed + first_index`` before each call
    (inside ``fork_rng``: the caller's RNG state is untouched), so a fixed
    batch size reproduces the images, and a batch does not depend on the
    ones before it.  ``out_dir/coco10k`` receives ``images/`` (PNGs, in
    ``pairs`` order), ``captions.json`` and ``results.json``; the whole
    folder is staged and published at once, so an older result is renamed
    beside it with its own images and numbers, never mixed or overwritten.
    """
    if len(pairs) < 2:
        raise UserError(f"COCO evaluation needs at least 2 images for FID, got {len(pairs)}; raise the subset size.")
    out_dir = Path(out_dir)
    started = time.time()
    reference = reference_stats(pairs, resolution, cache_dir, features)  # first: a bad data folder fails fast
    staging = _staging_dir(out_dir)
    try:
        results = _generate_and_score(generate, pairs, staging, reference, resolution=resolution,
                                      batch_size=batch_size, clip=clip, features=features, seed=seed)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # our own half-written folder: nothing else is touched
        raise
    results["elapsed_s"] = round(time.time() - started, 1)
    atomic_write_text(staging / "results.json", json.dumps(results, indent=2))
    publish_dir(staging, out_dir / RESULT_DIR)
    return results


def _generate_and_score(generate, pairs, staging: Path, reference, *, resolution: int, batch_size: int,
                        clip: ClipScorer | None, features: InceptionFeatures, seed: int) -> dict:
    """Fills ``staging`` with images/ and captions.json; returns the numbers."""
    (staging / "images").mkdir()
    files, feats, clip_scores = [], [], []
    with torch.random.fork_rng():
        for i in range(0, len(pairs), batch_size):
            batch = pairs[i:i + batch_size]
            captions = [p.caption for p in batch]
            torch.manual_seed(seed + i)
            images = generate(captions, i)
            if images.ndim != 4 or len(images) != len(batch):
                raise ValueError(f"generate returned shape {tuple(images.shape)} for {len(batch)} captions; "
                                 "expected (B, 3, H, W) in [-1, 1]")
            u8 = generated_batch(images, resolution)
            for j, (img, p) in enumerate(zip(u8, batch)):
                name = f"{i + j:05d}_{p.image_id:012d}.png"
                Image.fromarray(img).save(staging / "images" / name, compress_level=1)  # lossless; level 1 is fast
                files.append(name)
            feats.append(features.of_uint8(u8))  # the saved pixels exactly (PNG is lossless)
            if clip is not None:
                clip_scores.append(clip.scores(u8, captions))
    fid = fid_from_stats(stats(np.concatenate(feats)), reference)
    results = {
        "fid": fid,
        "clip_score": float(torch.cat(clip_scores).mean()) if clip is not None else None,
        "n": len(pairs),
        "resolution": resolution,
        "clip_model": clip.model_name if clip is not None else None,
        "clip_weights": str(clip.weights) if clip is not None else None,
        "seed": seed,
        "subset_hash": subset_hash(pairs),
        "fid_protocol": "clean-fid (PIL bicubic to 299, Inception 2015-12-05) vs centre-cropped reference",
    }
    atomic_write_text(staging / "captions.json", json.dumps(
        [{"file": f, "image_id": p.image_id, "caption": p.caption} for f, p in zip(files, pairs)], indent=1))
    return results
