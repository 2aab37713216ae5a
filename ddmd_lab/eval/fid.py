"""FID with clean-fid's protocol (PIL bicubic resize to 299 in float, then the
2015-12-05 Inception, then clean-fid's Frechet distance), for tensors in
memory and for image folders.  Reference statistics are cached per dataset,
split, resolution and count.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from cleanfid.fid import frechet_distance, get_folder_features
from cleanfid.resize import build_resizer
from torch import Tensor

from ddmd_lab.eval.inception import inception_feature_fn
from ddmd_lab.util.io import atomic_save_npz
from ddmd_lab.util.progress import track


def to_uint8_hwc(images: Tensor) -> np.ndarray:
    """[-1, 1] (N, C, H, W) -> uint8 (N, H, W, 3); grey images are repeated to RGB."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class InceptionFeatures:
    """Features of in-memory images or folders, clean-fid's resize included."""

    def __init__(self, device: str = "cpu", batch_size: int = 64, progress: bool = False):
        self.fn = inception_feature_fn(device)
        self.resize = build_resizer("clean")
        self.batch_size, self.progress = batch_size, progress

    def of_images(self, images: Tensor) -> np.ndarray:
        """Images in [-1, 1] (N, C, H, W)."""
        return self.of_uint8(to_uint8_hwc(images))

    def of_uint8(self, u8: np.ndarray) -> np.ndarray:
        """uint8 pixels (N, H, W, 3), e.g. images read from disk."""
        feats, starts = [], range(0, len(u8), self.batch_size)
        # a bar (or plain lines off a terminal) for more than one batch; callers that stream one batch at a time
        # count their own progress
        for i in track(starts, len(starts), "Inception features", "batch", enabled=self.progress and len(starts) > 1,
                       leave=False):
            batch = np.stack([self.resize(img) for img in u8[i:i + self.batch_size]])  # float 0..255, 299x299
            feats.append(self.fn(torch.from_numpy(batch).permute(0, 3, 1, 2).float()).cpu().numpy())
        return np.concatenate(feats)

    def of_folder(self, folder: str | Path) -> np.ndarray:
        return get_folder_features(str(folder), model=self.fn, num_workers=0, device=torch.device("cpu"),
                                   mode="clean", verbose=False, batch_size=self.batch_size)


def stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def fid_from_stats(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    return float(frechet_distance(a[0], a[1], b[0], b[1]))


def cached_reference_stats(path: Path, compute_features) -> tuple[np.ndarray, np.ndarray]:
    """Load (mu, sigma) from ``path`` or compute and store them atomically."""
    path = Path(path)
    if path.is_file():
        with np.load(path) as data:
            return data["mu"], data["sigma"]
    mu, sigma = stats(compute_features())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npz(path, mu=mu, sigma=sigma)
    return mu, sigma
