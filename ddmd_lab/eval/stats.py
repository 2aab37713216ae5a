"""Output statistics over training: the variance curves of the paper's Fig. 3."""
from __future__ import annotations

from torch import Tensor


def output_stats(images: Tensor, saturation: float = 0.98) -> dict[str, float]:
    """Per-image mean and std (averaged), and the share of saturated pixels.

    Images are in the model's range [-1, 1]; a pixel is saturated at
    |x| >= ``saturation`` (CA-only's oversaturation pushes pixels there and
    beyond).  The std of per-image means shows colour drift across samples.
    """
    x = images.detach().float().flatten(1)
    means, stds = x.mean(1), x.std(1)
    return {
        "out_mean": means.mean().item(),
        "out_std": stds.mean().item(),
        "out_mean_spread": means.std().item(),
        "saturated": (x.abs() >= saturation).float().mean().item(),
        "out_of_range": (x.abs() > 1.0).float().mean().item(),
    }
