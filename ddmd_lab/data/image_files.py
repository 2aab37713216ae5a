"""Image files and their pixels, as both the training data (real_latents.py) and the evaluations
(eval/protocols/) read them: a header check of many files before any long work, square centre crops,
and uint8 pixels <-> a generator's [-1, 1] output.  Here, below both, so data/ never imports eval/."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor


def unreadable_images(files: Sequence[Path]) -> list[Path]:
    """The files PIL cannot identify as images (empty, truncated headers, not images): only each
    header is read (about a millisecond each), so a bad folder fails before any long work."""
    bad = []
    for f in files:
        try:
            with Image.open(f) as img:
                img.size  # noqa: B018  (the header, parsed by open)
        except (OSError, ValueError, SyntaxError):  # PIL: unidentified / corrupt / unreadable
            bad.append(Path(f))
    return bad


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


def center_crop_long_edge(img: Image.Image) -> Image.Image:
    """BigGAN's CenterCropLongEdge as DMD2 uses it: a centred square of the short side (torchvision's offsets)."""
    return TF.center_crop(img, min(img.size))


def uint8_to_signed(u8: np.ndarray) -> Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], a generator's output format;
    ``eval.fid.to_uint8_hwc`` maps it back to exactly the same pixels."""
    return torch.from_numpy(np.ascontiguousarray(u8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
