"""What ``DATA=`` names: the new concept a student learns.

Image scales (fashion, mnist): ``<dataset>:<class>``, the class by index or name, e.g.
``mnist:7`` (a fashion student learns the digit 7) or ``fashion:Sneaker``.  The concept
always gets a new label (the student's num_classes, student.py): from the other
dataset it is a concept the student never saw; from its own dataset it is a known
concept under a new name (a truly held-out class needs a teacher trained without it,
which the teacher settings do not offer).  Training images: the class's train split;
its test split is the reference of the new class's Frechet distance and spectrum.

Text-to-image scales: a folder of images with captions, each ``<name>.png|jpg|jpeg|webp``
with ``<name>.txt`` beside it (kohya / DreamBooth layout), or a ``metadata.jsonl`` of
``{"file_name": ..., "text": ...}`` rows (Hugging Face imagefolder).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from ddmd_lab.errors import UserError
from ddmd_lab.scales.base import TEXT_TO_IMAGE
from ddmd_lab.scales.images import cached_image_set

IMAGE_DATASETS = ("fashion", "mnist")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class ImageConcept:
    source: str          # the dataset the images come from
    target_class: int    # its class there (what the source's classifier should say)
    class_name: str
    train: Tensor        # (N, 1, 32, 32) in [-1, 1]
    test: Tensor         # held-out images of the class (FD / spectrum reference)

    def describe(self) -> str:
        return f"{self.source}:{self.target_class} ({self.class_name}, {len(self.train)} training images)"


@dataclass
class CaptionFolder:
    folder: Path
    files: list[Path]
    captions: list[str]

    def describe(self) -> str:
        return f"{self.folder} ({len(self.files)} captioned images)"


def parse_data(data: str, scale: str, run_root: str | None = None):
    """The concept DATA names for a student of ``scale`` (image scales: its own data root for
    its own dataset)."""
    if not data or not str(data).strip():
        raise UserError("no DATA: name what to learn, e.g. DATA=mnist:7 (image scales) or DATA=<folder of images "
                        "with captions> (zimage).")
    if scale in IMAGE_DATASETS:
        return image_concept(str(data).strip(), scale, run_root)
    if scale in TEXT_TO_IMAGE:
        return caption_folder(Path(data).expanduser())
    raise UserError(f"fine-tuning needs an image or text-to-image student (fashion, mnist, {', '.join(TEXT_TO_IMAGE)}), "
                    f"not a {scale!r} run.")


def image_concept(data: str, scale: str, run_root: str | None = None) -> ImageConcept:
    name, sep, which = data.partition(":")
    name = name.strip().lower()
    if not sep or name not in IMAGE_DATASETS or not which.strip():
        raise UserError(f"DATA={data!r}: a {scale} student learns a class of an image dataset, written "
                        f"<dataset>:<class> with dataset one of {', '.join(IMAGE_DATASETS)}, e.g. DATA=mnist:7 or "
                        "DATA=fashion:Sneaker.")
    root = run_root if name == scale else None
    train, test = cached_image_set(name, root, "train"), cached_image_set(name, root, "test")
    which = which.strip()
    names = [c.lower() for c in train.class_names]
    if which.isdigit() and int(which) < train.num_classes:
        c = int(which)
    elif which.lower() in names:
        c = names.index(which.lower())
    else:
        raise UserError(f"DATA={data!r}: {name} has no class {which!r}; its classes are 0-{train.num_classes - 1} "
                        f"({', '.join(train.class_names)}).")
    return ImageConcept(name, c, train.class_names[c], train.images[train.labels == c], test.images[test.labels == c])


def caption_folder(folder: Path) -> CaptionFolder:
    if not folder.is_dir():
        raise UserError(f"DATA={folder} is not a folder; a text-to-image student learns from a folder of images with "
                        "captions (<name>.png with <name>.txt beside it, or a metadata.jsonl).")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    meta = folder / "metadata.jsonl"
    captions: dict[str, str] = {}
    if meta.is_file():
        for n, line in enumerate(meta.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                captions[row["file_name"]] = str(row.get("text", row.get("caption")))
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{meta} line {n} is not a JSON object with file_name and text; fix that line.") from None
    for p in images:
        txt = p.with_suffix(".txt")
        if p.name not in captions and txt.is_file():
            captions[p.name] = txt.read_text().strip()
    if not images:
        raise UserError(f"DATA={folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); put the concept's images there, "
                        "each with a caption.")
    missing = [p.name for p in images if not captions.get(p.name) or captions[p.name] == "None"]
    if missing:
        raise UserError(f"{len(missing)} of {len(images)} images in {folder} have no caption, e.g. {missing[0]}; add "
                        f"{Path(missing[0]).with_suffix('.txt')} (or a metadata.jsonl row).")
    return CaptionFolder(folder, images, [captions[p.name] for p in images])
