"""Reading a diffusers network's hidden states for a discriminator head.

``run_until`` runs one forward of the network and stops it where the features
are (a hook raises once it has them), so a features() call costs the network
up to that point and nothing after: SDXL's up path, a transformer's final
layer.  The captured tensor stays in the autograd graph: the generator's GAN
loss backpropagates through it into the sample.  The hook is removed before
the call returns, so a backward that recomputes checkpointed blocks never
meets it.
"""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

# the largest token / feature grid handed to the head: SDXL's mid block at 1024 px (32 x 32);
# larger grids (Z-Image / Lumina2 at 1024 px: 64 x 64 tokens) are average-pooled to it
FEATURE_GRID = 32


class _Reached(Exception):
    """Raised by the hook to end the forward once the features are captured."""


def run_until(modules: nn.Module | list[nn.Module], call: Callable[[], object], *, inputs: bool) -> Tensor:
    """Run ``call`` (one network forward) until one of ``modules`` is reached; return that
    module's first positional input (``inputs=True``) or its output."""
    modules = modules if isinstance(modules, (list, tuple)) else [modules]
    captured: list[Tensor] = []

    def pre_hook(_module, args):
        captured.append(args[0])
        raise _Reached

    def post_hook(_module, _args, out):
        captured.append(out[0] if isinstance(out, tuple) else out)
        raise _Reached

    handles = [m.register_forward_pre_hook(pre_hook) if inputs else m.register_forward_hook(post_hook) for m in modules]
    try:
        call()
    except _Reached:
        pass
    finally:
        for h in handles:
            h.remove()
    if not captured:
        raise RuntimeError(f"the forward never reached {type(modules[0]).__name__}; features() cannot read it")
    return captured[0]


def grid_size(h: int, w: int) -> tuple[int, int]:
    return min(h, FEATURE_GRID), min(w, FEATURE_GRID)


def pooled(maps: Tensor) -> Tensor:
    """(B, C, H, W) maps average-pooled to at most FEATURE_GRID x FEATURE_GRID."""
    size = grid_size(*maps.shape[-2:])
    return maps if tuple(maps.shape[-2:]) == size else F.adaptive_avg_pool2d(maps, size)


def token_maps(tokens: Tensor, h: int, w: int) -> Tensor:
    """Image tokens (B, h*w, D) in row-major patch order -> pooled (B, D, h', w') maps."""
    return pooled(tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1]).permute(0, 3, 1, 2))
