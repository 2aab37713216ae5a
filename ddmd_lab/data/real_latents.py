"""Real images for the text-to-image discriminator (DMD2's GAN), as VAE latents.

The prompt set is a COCO captions JSON; its images (the folder beside it in
COCO's layout, or ``data.images``) are centre-cropped and resized to the
teacher's resolution exactly as the COCO evaluation processes references, and
encoded once by the checkpoint's VAE into the latent space the backbone
denoises: ``(z - shift_factor) * scaling_factor``, the inverse of
``text_to_image.decode_latents``.  The latents (the posterior mean) are cached
under ``cache_dir/real_latents``, keyed by the VAE (its config and a
fingerprint of its weights, not where its folder lives), the resolution and
the image list (names and sizes), and read back memory-mapped.

Each image keeps its own captions: a training batch's conditions are captions
of the real images it carries, so the discriminator is conditional the way
DMD2's is (a real image is judged with its own caption).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ddmd_lab.data.image_files import square_resize, uint8_to_signed, unreadable_images
from ddmd_lab.errors import UserError
from ddmd_lab.util.io import atomic_torch_save, safe_torch_load

SUBSET_SEED = 0  # which images a capped set keeps: fixed, so every run and seed shares one cache


@dataclass
class RealImages:
    files: list[Path]  # image i
    prompts: list[str]  # every caption of the chosen images
    captions: list[list[int]]  # image i's captions, as indices into prompts


def images_dir_for(captions_json: Path, images: str | None) -> Path:
    """``data.images``, or the folder COCO's layout puts beside the captions file
    (root/annotations/captions_train2014.json -> root/train2014)."""
    if images:
        folder = Path(images).expanduser()
        if not folder.is_dir():
            raise UserError(f"data.images={folder} is not a folder; point it at the images {captions_json.name} names.")
        return folder
    split = captions_json.stem.removeprefix("captions_")
    candidates = [captions_json.parent.parent / split, captions_json.parent / split]
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise UserError(f"no image folder found beside {captions_json} (looked for {' and '.join(map(str, candidates))}); "
                    "set data.images=<folder holding the images the captions file names>.")


def coco_images(captions_json: str | Path, images: str | None, max_images: int | None) -> RealImages:
    """The captioned images of a COCO captions file (at most ``max_images``: a fixed random
    subset, ordered by image id), with all their captions; every file must exist."""
    path = Path(captions_json).expanduser()
    if path.suffix != ".json" or not path.is_file():
        raise UserError(f"the discriminator needs real images with captions: data.prompts must be a COCO captions "
                        f".json (images[*].file_name, annotations[*].caption), got {path}.")
    try:
        data = json.loads(path.read_text())
        names = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        annotations = [(int(a["image_id"]), a["caption"].strip()) for a in data["annotations"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path} is not a COCO captions file ({exc.__class__.__name__}); it needs images[*].id / "
                        "file_name and annotations[*].image_id / caption.") from None
    folder = images_dir_for(path, images)
    by_image: dict[int, list[str]] = {}
    for image_id, caption in annotations:
        if image_id in names and caption:
            by_image.setdefault(image_id, []).append(caption)
    ids = sorted(by_image)
    if not ids:
        raise UserError(f"{path} has no captioned images.")
    if max_images and len(ids) > max_images:
        ids = sorted(random.Random(SUBSET_SEED).sample(ids, max_images))
    files = [folder / names[i] for i in ids]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{len(missing)} of the {len(files)} images {path.name} names are missing from {folder}, "
                        f"e.g. {missing[0].name}; put them there or set data.images to the folder that holds them.")
    bad = unreadable_images(files)  # headers only: before any model loads (decoding errors stop the encode later)
    if bad:
        raise UserError(f"{len(bad)} of {len(files)} real images cannot be read, e.g. {bad[0]}; replace or remove "
                        "them (the captions file names them) and run again.")
    prompts, captions = [], []
    for i in ids:
        captions.append(list(range(len(prompts), len(prompts) + len(by_image[i]))))
        prompts.extend(by_image[i])
    return RealImages(files, prompts, captions)


def vae_identity(vae) -> dict:
    """What makes two VAEs encode alike: class, config (not its path) and a weights fingerprint
    (64 evenly spaced values of every tensor, exactly)."""
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    h = hashlib.sha256()
    for name, p in sorted(vae.state_dict().items()):
        flat = p.detach().flatten()
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy().tobytes())
    return {"class": type(vae).__name__, "config": json.loads(json.dumps(config, sort_keys=True, default=str)),
            "weights": h.hexdigest()[:16]}


def cache_path(cache_dir: str | Path, vae, files: list[Path], resolution: int) -> Path:
    listing = [(f.name, f.stat().st_size) for f in files]
    key = json.dumps({"vae": vae_identity(vae), "resolution": resolution, "images": listing}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / "real_latents" / f"{resolution}px-{len(files)}-{digest}.pt"


def read_image(path: Path, resolution: int) -> np.ndarray | None:
    """uint8 (R, R, 3), centre-cropped and resized like the COCO references; None if unreadable."""
    try:
        with Image.open(path) as img:
            return square_resize(img, resolution)
    except (OSError, ValueError, SyntaxError):  # PIL: unidentified / truncated / corrupt files
        return None


@torch.no_grad()
def encode_latents(vae, pixels: Tensor) -> Tensor:
    """Images in [-1, 1] -> the backbone's latents (posterior mean, the checkpoint's shift and scale)."""
    param = next(vae.parameters())
    z = vae.encode(pixels.to(param.device, param.dtype)).latent_dist.mode().float()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (z - shift) * vae.config.scaling_factor


def encode_files(vae, files: list[Path], resolution: int, batch: int, device: torch.device) -> Tensor:
    """Every file's latents (float16, on the CPU), the VAE in float32 on ``device`` meanwhile.
    Unreadable files stop it with one error that names one of them and their count."""
    param = next(vae.parameters())
    before = (param.device, param.dtype)
    vae.to(device, torch.float32)
    out, bad = [], []
    try:
        for i in range(0, len(files), batch):
            chunk = files[i:i + batch]
            pixels = [read_image(f, resolution) for f in chunk]
            bad += [f for f, p in zip(chunk, pixels) if p is None]
            if not bad:  # after the first failure only count the others
                out.append(encode_latents(vae, uint8_to_signed(np.stack(pixels))).half().cpu())
    finally:
        vae.to(*before)
    if bad:
        raise UserError(f"{len(bad)} of {len(files)} real images cannot be read, e.g. {bad[0]}; replace or remove "
                        "them (the captions file names them) and run again.")
    return torch.cat(out)


def cached_latents(cache_dir: str | Path, vae, files: list[Path], resolution: int, batch: int = 16,
                   device: torch.device | str = "cpu") -> Tensor:
    """(N, C, h, w) float16 latents of ``files``, encoded once and read memory-mapped after."""
    path = cache_path(cache_dir, vae, files, resolution)
    if not path.is_file():
        latents = encode_files(vae, files, resolution, batch, torch.device(device))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"latents": latents, "files": [f.name for f in files]}, path)
    return safe_torch_load(path, f"delete {path} (it is rebuilt from the images)", "real-latent cache", mmap=True)["latents"]
