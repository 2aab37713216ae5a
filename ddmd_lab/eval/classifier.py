"""A small classifier trained on the same data: class adherence of generated
images and a cheap domain Frechet distance on its penultimate features (for
curves during training, where Inception FID would be too slow on a CPU).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ddmd_lab.errors import UserError
from ddmd_lab.eval.fid import fid_from_stats, stats
from ddmd_lab.util.io import atomic_torch_save, atomic_write_text, safe_torch_load


class SmallClassifier(nn.Module):
    def __init__(self, num_classes: int = 10, channels: int = 1, width: int = 32):
        super().__init__()
        c = width
        self.features = nn.Sequential(
            nn.Conv2d(channels, c, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * c * 16, 128), nn.SiLU(),
        )
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def accuracy(net: SmallClassifier, images: Tensor, labels: Tensor, batch: int = 512) -> float:
    net.eval()
    hits = sum((net(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum().item() for i in range(0, len(images), batch))
    return hits / len(images)


@torch.no_grad()
def features(net: SmallClassifier, images: Tensor, batch: int = 512) -> np.ndarray:
    net.eval()
    return torch.cat([net.features(images[i:i + batch]) for i in range(0, len(images), batch)]).double().numpy()


def train_classifier(fit, train_images: Tensor, train_labels: Tensor, test_images: Tensor, test_labels: Tensor,
                     folder: Path, num_classes: int, epochs: int = 2, seed: int = 0, progress: bool = True) -> Path:
    """Fit (``fit``: training.fitting.fit_classifier) and cache the classifier with its test accuracy."""
    net = fit(lambda: SmallClassifier(num_classes, channels=train_images.shape[1]), (train_images, train_labels),
              epochs, seed, progress)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(net.state_dict(), folder / "classifier.pt")
    acc = accuracy(net, test_images, test_labels)
    atomic_write_text(folder / "classifier.json", json.dumps({"test_accuracy": acc, "epochs": epochs}, indent=2))
    return folder


def load_classifier(folder: Path, num_classes: int, channels: int = 1) -> SmallClassifier:
    path = Path(folder) / "classifier.pt"
    net = SmallClassifier(num_classes, channels)
    weights = safe_torch_load(path, f"delete {path.parent} and run `make classifier` again", "classifier file")
    try:
        net.load_state_dict(weights)
    except Exception as exc:
        raise UserError(f"the classifier at {path} cannot be loaded ({exc.__class__.__name__}); "
                        f"delete {path.parent} and run `make classifier` again.") from None
    return net.eval()


class ClassifierMetrics:
    """Adherence (accuracy on requested labels) and domain FD against real test images."""

    def __init__(self, net: SmallClassifier, real_images: Tensor):
        self.net = net
        self.real_stats = stats(features(net, real_images))

    def __call__(self, images: Tensor, labels: Tensor) -> dict[str, float]:
        x = images.detach().float().clamp(-1, 1)
        return {"class_adherence": accuracy(self.net, x, labels),
                "domain_fd": fid_from_stats(stats(features(self.net, x)), self.real_stats)}
