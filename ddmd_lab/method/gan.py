"""The GAN regulariser of the paper's comparison (DMD2-style).

A small discriminator head reads the fake model's bottleneck features of a
re-noised sample: real images against generator outputs.  The generator gets
the non-saturating loss through the (frozen for this step) fake model; the
head trains with the fake model's optimiser.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DiscriminatorHead(nn.Module):
    def __init__(self, feature_shape: tuple[int, ...]):
        super().__init__()
        c = feature_shape[0]
        if len(feature_shape) == 3:  # (C, H, W) maps
            self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.SiLU())
        else:  # (C,) vectors
            self.body = nn.Sequential(nn.Linear(c, c), nn.SiLU())
        self.out = nn.Linear(c, 1)

    def forward(self, features: Tensor) -> Tensor:
        h = self.body(features.float())
        if h.ndim == 4:
            h = h.mean(dim=(2, 3))
        return self.out(h).squeeze(1)

    @classmethod
    def for_backbone(cls, backbone) -> "DiscriminatorHead":
        """A head sized by the backbone's ``feature_shape`` where it declares one (real models:
        no forward on the CPU at full resolution), else by probing its features once."""
        shape = getattr(backbone, "feature_shape", None)
        if shape is not None:
            return cls(tuple(shape))
        with torch.no_grad():
            x = torch.zeros(1, *backbone.sample_shape)
            feats = backbone.features(x, torch.full((1,), 0.5), backbone.null_batch(1))
        return cls(tuple(feats.shape[1:]))


def generator_gan_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss, softplus(-D(G(z)))."""
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
