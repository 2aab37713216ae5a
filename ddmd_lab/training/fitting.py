"""Fitting what a scale caches before any run: its teacher (flow matching with label dropout) and, on the
image scales, its classifier.  The scales say what to fit (a builder, the data, the settings) and where the
result goes; this module owns the Lightning loop, so nothing below training/ knows Lightning."""
from __future__ import annotations

from typing import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ddmd_lab.training.callbacks.progress import StepProgressBar
from ddmd_lab.training.teacher_module import TeacherModule


class ClassifierModule(pl.LightningModule):
    def __init__(self, net: nn.Module, lr: float = 2e-3):
        super().__init__()
        self.net, self.lr = net, lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = x + 0.05 * torch.randn_like(x)  # slightly robust to generator noise
        loss = F.cross_entropy(self.net(x), y)
        self.log("classifier_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.net.parameters(), lr=self.lr)


def _trainer(name: str, progress: bool, accelerator: str = "cpu", **limits) -> pl.Trainer:
    return pl.Trainer(accelerator=accelerator, logger=False, enable_checkpointing=False, enable_model_summary=False,
                      enable_progress_bar=progress, callbacks=[StepProgressBar(name)] if progress else [], **limits)


def fit_teacher(build: Callable[[], nn.Module], data: tuple[Tensor, Tensor], settings: dict, name: str,
                accelerator: str = "cpu", progress: bool = True) -> nn.Module:
    """A backbone from ``build()`` (after seeding: its initialisation is part of the recipe) trained on
    (x0, labels) for settings' steps at its lr, batch_size and p_uncond."""
    pl.seed_everything(settings["seed"], verbose=False)
    backbone = build()
    module = TeacherModule(backbone, lr=settings["lr"], p_uncond=settings["p_uncond"], total_steps=settings["steps"])
    loader = DataLoader(TensorDataset(*data), batch_size=settings["batch_size"], shuffle=True, drop_last=True)
    _trainer(name, progress, accelerator, max_steps=settings["steps"]).fit(module, loader)
    return backbone


def fit_classifier(build: Callable[[], nn.Module], data: tuple[Tensor, Tensor], epochs: int, seed: int = 0,
                   progress: bool = True) -> nn.Module:
    pl.seed_everything(seed, verbose=False)
    net = build()
    loader = DataLoader(TensorDataset(*data), batch_size=256, shuffle=True)
    _trainer("classifier", progress, max_epochs=epochs).fit(ClassifierModule(net), loader)
    return net


class Fitters:
    """What a scale's ``prepare(cfg, fit)`` receives: the two fits, so scales build and cache without Lightning."""

    teacher = staticmethod(fit_teacher)
    classifier = staticmethod(fit_classifier)
