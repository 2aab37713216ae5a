"""Radially averaged power spectra (RAPS) and what the paper's findings need
from them: the spectral centroid and the high-frequency excess of generated
images over real ones (checkerboard noise shows up there first).
"""
from __future__ import annotations

import torch
from torch import Tensor


def raps(images: Tensor) -> Tensor:
    """Mean power per integer radial frequency, averaged over images and channels.

    Input (N, C, H, W) with H == W; output (H // 2 + 1,) for radii 0..H/2
    in cycles per image.  The mean is removed per image so the DC bin holds
    only what the mean cannot explain (zero for constant images).
    """
    x = images.detach().double()
    n = x.shape[-1]
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).mean(dim=(0, 1)) / (n * n)
    freqs = torch.fft.fftfreq(n, d=1.0 / n)
    radius = (freqs[:, None] ** 2 + freqs[None, :] ** 2).sqrt().round().long()
    bins = n // 2 + 1
    keep = radius < bins
    total = torch.zeros(bins, dtype=torch.float64).index_add_(0, radius[keep], power[keep])
    count = torch.zeros(bins, dtype=torch.float64).index_add_(0, radius[keep], torch.ones_like(power[keep]))
    return (total / count.clamp_min(1)).float()


def spectral_centroid(spectrum: Tensor) -> float:
    """Power-weighted mean radial frequency (cycles per image), DC excluded."""
    s = spectrum[1:].double()
    f = torch.arange(1, len(spectrum), dtype=torch.float64)
    return float((s * f).sum() / s.sum().clamp_min(1e-30))


def high_frequency_excess(generated: Tensor, reference: Tensor, cutoff: float = 0.5) -> float:
    """log10 of generated over reference power above ``cutoff`` x Nyquist.

    0 means the same high-frequency energy as real data; > 0 is excess
    (noise, checkerboards); < 0 missing detail (blur).
    """
    start = int(round(cutoff * (len(generated) - 1)))
    g, r = generated[start:].double().sum(), reference[start:].double().sum()
    return float(torch.log10(g.clamp_min(1e-30) / r.clamp_min(1e-30)))
