"""Distances between sample sets (for low-dimensional scales)."""
from __future__ import annotations

import torch
from torch import Tensor


def energy_distance(x: Tensor, y: Tensor) -> float:
    """sqrt of the energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| (a metric on
    distributions; 0 iff they are equal).  V-statistic, float64."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    d = 2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()
    return float(d.clamp_min(0).sqrt())


def classwise_energy_distance(x: Tensor, y: Tensor, labels_x: Tensor, labels_y: Tensor) -> float:
    """Mean over classes of the energy distance between same-class samples."""
    classes = labels_x.unique()
    return sum(energy_distance(x[labels_x == c], y[labels_y == c]) for c in classes) / len(classes)
