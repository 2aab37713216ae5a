"""Classifier-free guidance, in both conventions the field uses.

Standard form (the paper's): ``cfg = uncond + alpha * (cond - uncond)``;
alpha = 1 means no guidance.  Offset form (Z-Image's pipeline; Lumina2 and SDXL write the standard one):
``cfg = cond + g * (cond - uncond)`` with g = alpha - 1, so Z-Image-Turbo's
"guidance_scale = 0" is alpha = 1.  Configs in ddmd_lab always hold alpha.
"""
from __future__ import annotations

from torch import Tensor


def cfg(cond: Tensor, uncond: Tensor, alpha: float) -> Tensor:
    """Standard CFG: uncond + alpha * (cond - uncond)."""
    return uncond + alpha * (cond - uncond)


def cfg_offset(cond: Tensor, uncond: Tensor, g: float) -> Tensor:
    """Offset CFG as diffusers pipelines write it: cond + g * (cond - uncond)."""
    return cond + g * (cond - uncond)


def alpha_from_offset(g: float) -> float:
    return g + 1.0


def offset_from_alpha(alpha: float) -> float:
    return alpha - 1.0
