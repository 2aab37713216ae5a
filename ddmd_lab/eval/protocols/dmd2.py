"""DMD2's COCO-10k protocol, reproduced step by step (the paper's Table 2 was measured with it).

Source: tianweiy/DMD2 -- main/coco_eval/coco_evaluator.py (FID / patch-FID transforms, CLIP score),
main/coco_eval/cleanfid/{fid,utils}.py (its clean-fid copy), main/sdxl/test_folder_sdxl.py (the
evaluation script: 8-bit conversion, FID and patch-FID of every checkpoint, CLIP score),
experiments/sdxl/README.md (``--eval_res 512 --ref_dir coco10k/subset --anno_path
coco10k/all_prompts.pkl --total_eval_samples 10000``) and scripts/download_sdxl.sh (coco10k.zip).

- **8 bits**: ``((x + 1) * 127.5).clamp(0, 255).to(uint8)``: truncation, not rounding.
- **FID**: every image (generated, and each file of the reference folder) is centre-cropped to a
  square on its long edge (torchvision's ``center_crop(img, min(size))``), resized with PIL
  **Lanczos** to the eval resolution (512 for SDXL), then clean-fid's own resize to 299 (PIL
  bicubic in float) and the 2015-12-05 Inception; Frechet distance of the two feature sets.
- **patch-FID**: the full-resolution image, a 299 x 299 centre crop (torchvision's
  ``center_crop``), **no resize** (images smaller than 299 on a side are passed whole, as DMD2's
  code does); then the same clean-fid path.
- **CLIP score**: images centre-cropped on the long edge and Lanczos-resized to **256**, then
  open_clip's own eval transform; captions tokenised (77 tokens, truncated), the 3 tokens of
  "A photo depicts " spliced after the start token, cut back to 77 and the last position set to
  the end token where it is not padding; mean raw cosine of ViT-g-14 (laion2b_s12b_b42k) in float32
  (reported x100 in the paper: 33.14 for DMD2).  eval/clip_score.py does both steps (``ClipScorer``'s
  ``prefix=PREFIX, resize=256``): the scorer owns how its inputs are prepared, this module says which.
"""
from __future__ import annotations

import hashlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor

from ddmd_lab.data.image_files import center_crop_long_edge, unreadable_images
from ddmd_lab.errors import UserError

PREFIX = "A photo depicts "
PATCH = 299
# clean-fid's image extensions (DMD2's copy: cleanfid/utils.py EXTENSIONS); .npy arrays are not read here
EXTENSIONS = {"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"}
LAYOUT = ("DMD2's coco10k folder as scripts/download_sdxl.sh unpacks coco10k.zip: <folder>/subset/ (the reference "
          "images) and <folder>/all_prompts.pkl (the prompts); or the folder above it")
TRANSFORMS = {
    "uint8": "((x + 1) * 127.5).clamp(0, 255) truncated to uint8 (DMD2's sample())",
    "fid": "torchvision center_crop to the short side, PIL Lanczos to the eval resolution, then clean-fid "
           "(PIL bicubic in float to 299, Inception 2015-12-05); the same for every reference file",
    "patch_fid": "torchvision center_crop 299x299 of the full-resolution image, no resize (whole image if a side < 299), "
                 "then clean-fid",
    "clip_image": "torchvision center_crop to the short side, PIL Lanczos to 256, then open_clip's eval transform",
    "clip_text": 'tokens of "A photo depicts " spliced after the start token, cut to 77, last token set to end-of-text '
                 "where not padding",
    "clip_score": "mean raw cosine (clip_score) and x100 (clip_score_x100, the paper's scale)",
}


# ----------------------------------------------------------------------------- pixels

def to_uint8_truncated(images: Tensor) -> np.ndarray:
    """[-1, 1] (N, C, H, W) -> uint8 (N, H, W, 3) as DMD2 converts samples: truncation toward zero."""
    x = ((images.detach().float() + 1.0) * 127.5).clamp(0.0, 255.0).to(torch.uint8)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def fid_transform(u8: np.ndarray, resolution: int) -> np.ndarray:
    """DMD2's ``resize_and_center_crop`` for FID: square centre crop, Lanczos to ``resolution``."""
    img = center_crop_long_edge(Image.fromarray(u8))
    return np.array(img.resize((resolution, resolution), Image.LANCZOS))


def patch_transform(u8: np.ndarray) -> np.ndarray:
    """DMD2's patch-FID crop: 299 x 299 from the centre of the full-resolution image, no resize."""
    img = Image.fromarray(u8)
    if img.size[0] >= PATCH and img.size[1] >= PATCH:
        img = TF.center_crop(img, PATCH)
    return np.array(img)


# ----------------------------------------------------------------------------- the data as distributed

@dataclass(frozen=True)
class Dmd2Data:
    prompts: list[str]
    prompts_file: Path
    reference_dir: Path
    reference_files: list[Path]

    def reference_hash(self) -> str:
        """Names the reference set: relative file names and sizes (moving the folder keeps caches valid)."""
        text = "\n".join(f"{f.relative_to(self.reference_dir).as_posix()}:{f.stat().st_size}" for f in self.reference_files)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class _ListOfStrings(pickle.Unpickler):
    """all_prompts.pkl is a pickled list of strings: nothing else may be loaded from it."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a prompts file (a list of strings)")


def read_prompts_file(path: Path) -> list[str]:
    """DMD2's SDTextDataset: a .txt (stripped lines, blank lines skipped) or a pickled list of strings
    (None read as the empty prompt, as SDTextDataset does)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"DMD2 prompts file {path} not found; expected {LAYOUT}.")
    if path.suffix == ".txt":
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    try:
        prompts = _ListOfStrings(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise UserError(f"{path} is not DMD2's prompts pickle (a list of strings): {e}") from e
    if not isinstance(prompts, (list, tuple)) or not all(p is None or isinstance(p, str) for p in prompts):
        raise UserError(f"{path} holds a {type(prompts).__name__}, not a list of prompts; use DMD2's all_prompts.pkl "
                        "or a .txt with one prompt per line.")
    return ["" if p is None else p for p in prompts]


def image_files(folder: Path) -> list[Path]:
    """clean-fid's listing: every image under ``folder`` (recursively), sorted by path."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in EXTENSIONS)


def find_dmd2_root(root: Path) -> Path | None:
    """The coco10k folder at ``root`` or directly below it (``<root>/coco10k``), or None."""
    root = Path(root).expanduser()
    for cand in (root, root / "coco10k"):
        if (cand / "subset").is_dir():
            return cand
    return None


def resolve_dmd2(root: Path, prompts_file: Path | None = None) -> Dmd2Data:
    """DMD2's coco10k folder -> its prompts and reference images; one error naming what is missing."""
    root = Path(root).expanduser()
    folder = find_dmd2_root(root)
    if folder is None:
        raise UserError(f"{root} has no DMD2 reference folder (subset/); expected {LAYOUT}.")
    if prompts_file is None:
        prompts_file = folder / "all_prompts.pkl"
        if not prompts_file.is_file():
            raise UserError(f"{prompts_file} is missing (DMD2's prompt list, beside subset/); expected {LAYOUT}, "
                            "or pass the prompts file itself (PROMPTS=<.pkl or .txt>).")
    files = image_files(folder / "subset")
    if len(files) < 2:
        raise UserError(f"{folder / 'subset'} holds {len(files)} images; FID needs DMD2's reference images there ({LAYOUT}).")
    bad = unreadable_images(files)
    if bad:
        raise UserError(f"{len(bad)} of {len(files)} reference images in {folder / 'subset'} cannot be read as images, "
                        f"e.g. {bad[0].name}; re-extract DMD2's coco10k.zip.")
    prompts = read_prompts_file(prompts_file)
    if not prompts:
        raise UserError(f"{prompts_file} holds no prompts.")
    return Dmd2Data(prompts, Path(prompts_file), folder / "subset", files)


def read_reference(path: Path) -> np.ndarray:
    """A reference file as clean-fid reads it: PIL, converted to RGB, uint8 (H, W, 3)."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except OSError as e:
        raise UserError(f"cannot read reference image {path} ({e}); re-extract DMD2's coco10k.zip.") from e
