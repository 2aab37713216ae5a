"""Colour and contrast of generated images: what "oversaturated" and "colour cast" mean, in numbers.

Per image, from its 8-bit pixels (what is saved and looked at), with kornia's colour conversions:

- ``hsv_saturation``  mean HSV saturation S = (max - min) / max of R, G, B (0 grey .. 1 pure colour)
- ``clipped_r/g/b``   share of pixels whose channel sits at 0 or 255 (burnt out or crushed);
                      ``clipped`` is their mean (grey images: the one channel)
- ``lab_a``, ``lab_b`` mean CIELAB a* (green - / red +) and b* (blue - / yellow +), D65 sRGB:
                      a colour cast moves them; users' "yellowed" Decoupled DMD images are b* > the teacher's
- ``rms_contrast``    standard deviation of the luma Y = 0.299 R + 0.587 G + 0.114 B in [0, 1]
                      (Peli's RMS contrast)

Grey images (the image scales) get ``clipped`` and ``rms_contrast`` only.  ``relative`` sets a
student's means against a reference's (the teacher's images for the same prompts and noise, or
real data): saturation and contrast as ratios (1 = as the reference), the others as differences
(0 = as the reference), so "oversaturated" reads "more saturated than the teacher", the paper's claim.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import Tensor

RGB_KEYS = ("hsv_saturation", "clipped_r", "clipped_g", "clipped_b", "clipped", "lab_a", "lab_b", "rms_contrast")
GREY_KEYS = ("clipped", "rms_contrast")
RATIO_KEYS = ("hsv_saturation", "rms_contrast")  # relative: student / reference; every other key: student - reference
RELATIVE_KEYS = ("hsv_saturation", "clipped", "lab_a", "lab_b", "rms_contrast")


def unit_pixels(images: np.ndarray | Tensor) -> Tensor:
    """uint8 (N, H, W, C) pixels, or a model's output in [-1, 1] (N, C, H, W) rounded to 8 bits as it is saved,
    -> float (N, C, H, W) in [0, 1] on multiples of 1/255."""
    if isinstance(images, Tensor):
        x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    else:
        u8 = np.asarray(images)
        if u8.dtype != np.uint8:
            raise ValueError(f"pixel arrays must be uint8 (N, H, W, C), got {u8.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(u8)).permute(0, 3, 1, 2).float()
    return x / 255.0


@torch.no_grad()
def colour_stats(images: np.ndarray | Tensor | list, chunk: int = 8) -> dict[str, np.ndarray]:
    """Per-image values (N,) of every metric above (``chunk`` images at a time: 1024-px batches are large);
    ``images`` as ``unit_pixels`` takes them, or a list of uint8 (H, W, C) arrays of any sizes."""
    import kornia.color as kc  # deferred: kornia takes seconds to import; only colour stats need it

    if isinstance(images, list):  # images of different sizes (a folder): one at a time
        parts = [colour_stats(img[None]) for img in images]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out: dict[str, list] = {}
    for i in range(0, len(images), chunk):
        x = unit_pixels(images[i:i + chunk])
        ends = (x <= 0.0) | (x >= 1.0)  # exactly 0 or 255 in 8 bits
        if x.shape[1] == 1:
            vals = {"clipped": ends.flatten(1).float().mean(1), "rms_contrast": x.flatten(1).std(1)}
        elif x.shape[1] == 3:
            per_channel = ends.flatten(2).float().mean(2)  # (n, 3)
            lab = kc.rgb_to_lab(x)
            vals = {"hsv_saturation": kc.rgb_to_hsv(x)[:, 1].flatten(1).mean(1),
                    "clipped_r": per_channel[:, 0], "clipped_g": per_channel[:, 1], "clipped_b": per_channel[:, 2],
                    "clipped": per_channel.mean(1),
                    "lab_a": lab[:, 1].flatten(1).mean(1), "lab_b": lab[:, 2].flatten(1).mean(1),
                    "rms_contrast": kc.rgb_to_grayscale(x).flatten(1).std(1)}
        else:
            raise ValueError(f"colour metrics need 1 or 3 channels, got {x.shape[1]}")
        for k, v in vals.items():
            out.setdefault(k, []).append(v.double().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def mean_stats(per_image: dict[str, np.ndarray], index: Iterable[int] | None = None) -> dict[str, float]:
    """Means over images (or over the images at ``index``)."""
    idx = None if index is None else np.asarray(list(index), dtype=int)
    return {k: float(np.mean(v if idx is None else v[idx])) for k, v in per_image.items()}


def relative(student: dict[str, float], reference: dict[str, float], suffix: str) -> dict[str, float]:
    """``<key>_<suffix>``: ratio for saturation and contrast, difference for the rest (see module doc)."""
    out = {}
    for k in RELATIVE_KEYS:
        if k in student and k in reference:
            if k in RATIO_KEYS:
                out[f"{k}_{suffix}"] = student[k] / reference[k] if reference[k] > 0 else float("nan")
            else:
                out[f"{k}_{suffix}"] = student[k] - reference[k]
    return out


def describe() -> dict[str, str]:
    """What results.json says about these numbers."""
    return {"pixels": "8-bit, as saved", "hsv_saturation": "mean HSV S (kornia.color.rgb_to_hsv)",
            "clipped": "share of pixels at 0 or 255, per channel (clipped_r/g/b) and their mean",
            "lab": "mean CIELAB a*, b* (kornia.color.rgb_to_lab, sRGB D65)",
            "rms_contrast": "std of luma 0.299R+0.587G+0.114B in [0,1] (kornia.color.rgb_to_grayscale)",
            "relative": "<metric>_vs_<reference>: ratio for hsv_saturation and rms_contrast (1 = as the reference), "
                        "difference for clipped, lab_a, lab_b (0 = as the reference)"}
