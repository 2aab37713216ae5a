"""Sample grids as PNG (one row per class)."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

from ddmd_lab.util.io import atomic_write_bytes


def save_grid(images: Tensor, path: Path, nrow: int) -> None:
    """Images in [-1, 1], (N, C, H, W), written atomically as one PNG."""
    grid = make_grid(images.detach().float().clamp(-1, 1).cpu(), nrow=nrow, normalize=True, value_range=(-1, 1), pad_value=1.0)
    array = (grid.permute(1, 2, 0) * 255).round().byte().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(path), buffer.getvalue())
