"""Whole diffusers pipelines from a local folder or a hub id.

A real checkpoint is a diffusers folder: ``model_index.json`` names the
pipeline class and one subfolder per component (transformer or UNet, text
encoders, tokenizers, VAE, scheduler).  diffusers' own loader reads it; this
module only decides *where* the folder is and turns every way that can fail
into one sentence naming the fix.  Hub ids go through huggingface_hub's cache,
and ``HF_HUB_OFFLINE=1`` is respected (nothing is fetched, the cache must
already hold the snapshot).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ddmd_lab.errors import UserError

# family -> the pipeline class its checkpoints declare in model_index.json
PIPELINE_CLASSES = {"zimage": "ZImagePipeline", "lumina2": "Lumina2Pipeline", "sdxl": "StableDiffusionXLPipeline"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _looks_like_path(source: str) -> bool:
    # hub ids are exactly "owner/name"; anything else with a separator, or a ~ / . start, is a path
    return source.startswith(("/", ".", "~")) or source.count("/") != 1 or os.sep != "/" and os.sep in source


def resolve_source(source: str) -> Path:
    """The local diffusers folder for ``source`` (a folder, or a hub id fetched into the HF cache)."""
    if not source:
        raise UserError("no checkpoint given: set teacher.source to a diffusers folder or a hub id, "
                        "e.g. --set teacher.source=/models/Z-Image-Turbo.")
    path = Path(source).expanduser()
    if path.exists() or _looks_like_path(source):
        if not path.is_dir():
            raise UserError(f"checkpoint folder {path} does not exist; set teacher.source to a diffusers folder "
                            "(the one holding model_index.json) or to a hub id like owner/name.")
        if not (path / "model_index.json").is_file():
            raise UserError(f"{path} is not a diffusers pipeline folder (no model_index.json); point teacher.source "
                            "at the folder that holds it, e.g. one made by `huggingface-cli download <id> --local-dir <folder>`.")
        return path
    from huggingface_hub import snapshot_download  # deferred: only a hub id needs it

    try:
        return Path(snapshot_download(source, local_files_only=hub_offline()))
    except Exception as exc:  # network, auth, missing repo or missing cache: all one answer for the user
        how = ("HF_HUB_OFFLINE is set and the cache does not hold it: download it where the hub is reachable"
               if hub_offline() else "check the id, your network and `huggingface-cli login`")
        raise UserError(f"cannot get {source!r} from the Hugging Face hub ({exc.__class__.__name__}); {how}, "
                        "or set teacher.source to a local diffusers folder.") from None


def pipeline_class_of(folder: Path) -> str:
    try:
        return json.loads((folder / "model_index.json").read_text())["_class_name"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise UserError(f"{folder / 'model_index.json'} is malformed ({exc.__class__.__name__}); "
                        "re-download the checkpoint.") from None


def pipeline_folder(source: str, family: str) -> Path:
    """The local folder of ``source``, refused when it holds another family's pipeline (read from
    model_index.json: no weights are loaded)."""
    if family not in PIPELINE_CLASSES:
        raise UserError(f"unknown model family {family!r}; known: {', '.join(PIPELINE_CLASSES)} (teacher.family).")
    folder = resolve_source(source)
    declared, expected = pipeline_class_of(folder), PIPELINE_CLASSES[family]
    if declared != expected:
        raise UserError(f"{folder} holds a {declared}, not the {expected} of family {family!r}; "
                        "set teacher.family to match the checkpoint, or point teacher.source at a checkpoint of this family.")
    return folder


DENOISERS = {"zimage": "transformer", "lumina2": "transformer", "sdxl": "unet"}  # model_index.json's component


def component_config(folder: Path, name: str) -> dict:
    """A component's config.json (vae, transformer, unet, ...), read without loading it."""
    path = Path(folder) / name / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path} ({exc.__class__.__name__}); re-download the checkpoint "
                        "or restore the missing file.") from None


def resolution_step(folder: Path, family: str) -> tuple[int, int]:
    """(VAE downsampling factor, the denoiser's patch size) from the folder's config files: an image
    side must be a multiple of their product."""
    vae = component_config(folder, "vae")
    factor = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
    if family == "sdxl":
        return factor, 1
    net = component_config(folder, DENOISERS[family])
    patch = net["all_patch_size"][0] if family == "zimage" else net.get("patch_size", 1)
    return factor, int(patch)


def meta_denoiser(folder: Path, family: str):
    """The checkpoint's denoiser built from its config on the meta device (its module names and
    shapes; no memory, no weights read): seconds even at full size."""
    import diffusers  # deferred: diffusers takes seconds to import; only the real-model paths need it

    library, class_name = json.loads((Path(folder) / "model_index.json").read_text())[DENOISERS[family]][:2]
    cls = getattr(diffusers, class_name)
    with torch.device("meta"):
        return cls.from_config(cls.load_config(Path(folder) / DENOISERS[family]))


def load_pipeline(source: str, family: str, dtype: str = "float32", text_encoders: bool = True):
    """diffusers' pipeline of ``family`` from ``source``, weights in ``dtype``, on the CPU.
    ``text_encoders=False``: the text encoders are built on the meta device from their configs
    (architecture only, no weights read or held: conditions then come from an embedding cache).

    A folder of another family is refused (an SDXL folder under teacher.family=zimage
    would otherwise fail deep inside the first forward pass)."""
    if dtype not in DTYPES:
        raise UserError(f"teacher.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    folder = pipeline_folder(source, family)
    expected = PIPELINE_CLASSES[family]
    import diffusers  # deferred: diffusers takes seconds to import; only the real-model paths need it

    try:
        meta = {} if text_encoders else _meta_text_encoders(folder, DTYPES[dtype])
        return getattr(diffusers, expected).from_pretrained(folder, dtype=DTYPES[dtype], **meta)
    except (OSError, ValueError, EnvironmentError) as exc:
        # diffusers names the missing component / weight file in its message
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"cannot load the {expected} in {folder}: {first_line} -- re-download the checkpoint "
                        "or restore the missing file.") from None


def _meta_text_encoders(folder: Path, dtype: torch.dtype) -> dict:
    """The pipeline's text encoders as weightless modules on the meta device (their configs kept)."""
    import transformers  # deferred: transformers takes seconds to import; only the real-model paths need it

    index = json.loads((folder / "model_index.json").read_text())
    encoders = {}
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        library, class_name = (index.get(name) or [None, None])[:2]
        if library != "transformers" or not class_name:
            continue
        cls = getattr(transformers, class_name)
        config = cls.config_class.from_pretrained(folder / name)
        with torch.device("meta"):
            encoders[name] = cls(config).to(dtype).eval().requires_grad_(False)
    return encoders
