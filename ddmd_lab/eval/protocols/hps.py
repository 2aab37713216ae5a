"""HPSv2.1 (Human Preference Score v2.1) from a local checkpoint, as the HPSv2 package computes it.

Source: tgxs002/HPSv2, the ``hpsv2`` package (1.2.0, PyPI's latest; read for this module):
img_score.py / evaluation.py build open_clip ViT-H-14 with ``light_augmentation=True``, load
``HPS_v2.1_compressed.pt``'s ``state_dict`` and score ``image_features @ text_features.T`` of the
unit-norm embeddings (``model(image, text)`` normalises both), x100 in the benchmark
(``evaluate_benchmark``: ``logits_per_image = image_features @ text_features.T * 100``); the
benchmark prints each style's mean and the mean over all images ("Average").  The paper's Table 1
(30.20 for the teacher) is on this x100 scale.

Preprocessing (hpsv2/src/open_clip/transform.py, ``image_transform(is_train=False,
resize_longest_max=True)``, which ``light_augmentation`` selects): RGB -> ToTensor -> resize so the
**longest** side is 224 (bicubic, on the tensor) -> zero-pad to 224 x 224, centred -> normalise with
OpenAI's CLIP mean / std.  Assumptions, named because they cannot be checked against HPSv2's runs:
the tensor resize uses torchvision's default antialiasing (on since torchvision 0.17; HPSv2 pins no
version, so older installs resized without it), and we score in float32 where HPSv2 runs under
CUDA autocast (fp16); both move a score by far less than the differences the tables compare.

``model_name`` may also be an open_clip model-config JSON (a tiny model in the tests).
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor

from ddmd_lab.errors import UserError
from ddmd_lab.eval.clip_score import register_config
from ddmd_lab.eval.fid import to_uint8_hwc
from ddmd_lab.eval.protocols.prompt_eval import Plan, compare, describe_comparison, measure, staging_dir
from ddmd_lab.util.io import atomic_write_text, publish_dir

DEFAULT_HPS_MODEL = "ViT-H-14"
HPS_WEIGHTS_ENV = "HPS_WEIGHTS"
# the HPSv2 repo's v2.1 checkpoint (huggingface xswu/HPSv2, file HPS_v2.1_compressed.pt), downloaded elsewhere
DEFAULT_HPS_WEIGHTS = Path("~/.cache/hpsv2/HPS_v2.1_compressed.pt")
STYLES = ("anime", "concept-art", "paintings", "photo")  # the HPSv2 benchmark's styles, 800 prompts each
CHUNK = 80  # the benchmark's per-style std is over chunks of 80 prompts
PREPROCESS = ("RGB -> ToTensor -> bicubic resize of the longest side to the model's size (224 for ViT-H-14; torchvision, "
              "on the tensor) -> zero-pad to a centred square -> normalise (OpenAI CLIP mean/std); HPSv2's "
              "light_augmentation val transform")


def default_hps_weights() -> Path:
    return Path(os.environ.get(HPS_WEIGHTS_ENV) or DEFAULT_HPS_WEIGHTS).expanduser()


def hps_preprocess(img: Image.Image, size: int = 224) -> Tensor:
    """HPSv2's ``ResizeMaxSize`` val transform (see the module doc), (3, size, size)."""
    from open_clip.constants import (OPENAI_DATASET_MEAN,  # deferred: open_clip takes seconds to import
                                     OPENAI_DATASET_STD)

    x = TF.to_tensor(img.convert("RGB"))
    h, w = x.shape[1:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        new = (round(h * scale), round(w * scale))
        x = TF.resize(x, list(new), interpolation=TF.InterpolationMode.BICUBIC)
        pad_h, pad_w = size - new[0], size - new[1]
        x = TF.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return TF.normalize(x, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)


class HpsScorer:
    """HPSv2.1 of images against their prompts: ``cosines`` raw, ``score`` = 100 x their mean."""

    def __init__(self, model_name: str | Path = DEFAULT_HPS_MODEL, weights: str | Path | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 16):
        import open_clip  # deferred: open_clip takes seconds to import; only a scorer's construction needs it

        weights = default_hps_weights() if weights is None else Path(weights).expanduser()
        if not weights.is_file():
            raise UserError(f"HPSv2.1 weights {weights} not found: hub downloads are unavailable offline, so put the "
                            f"HPSv2 repo's HPS_v2.1_compressed.pt there or pass {HPS_WEIGHTS_ENV}=/path/HPS_v2.1_compressed.pt.")
        name = register_config(model_name)
        try:
            checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
            state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
            if not isinstance(state, dict):
                raise ValueError("no state_dict in the file")
            state = {k.removeprefix("module."): v for k, v in state.items()}
            self.model = open_clip.create_model(name, device="cpu")
            self.model.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as e:
            reason = (str(e).splitlines() or [type(e).__name__])[0]
            raise UserError(f"HPS weights {weights} do not fit open_clip model {name} ({reason}); pass HPSv2's "
                            "HPS_v2.1_compressed.pt with HPS_MODEL=ViT-H-14.") from e
        self.model.eval().to(device)
        self.tokenizer = open_clip.get_tokenizer(name)
        size = self.model.visual.image_size
        self.size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.model_name, self.weights = name, weights
        self.device, self.batch_size = torch.device(device), batch_size

    @torch.no_grad()
    def cosines(self, u8: np.ndarray, prompts: Sequence[str]) -> Tensor:
        """Per-image raw HPS (N,): the cosine of the unit-norm image and prompt embeddings."""
        if len(u8) != len(prompts):
            raise ValueError(f"{len(u8)} images but {len(prompts)} prompts")
        out = []
        for i in range(0, len(u8), self.batch_size):
            pixels = torch.stack([hps_preprocess(Image.fromarray(np.asarray(x)), self.size)
                                  for x in u8[i:i + self.batch_size]]).to(self.device)
            tokens = self.tokenizer(list(prompts[i:i + self.batch_size])).to(self.device)
            img = self.model.encode_image(pixels, normalize=True).float()
            txt = self.model.encode_text(tokens, normalize=True).float()
            out.append((img * txt).sum(-1).cpu())
        return torch.cat(out)

    def describe(self) -> dict:
        return {"hps_model": self.model_name, "hps_weights": str(self.weights), "hps_preprocess": PREPROCESS,
                "hps_scale": "100 x cosine (hpsv2 evaluate_benchmark)"}


def read_hps_prompts(path: str | Path) -> dict[str, list[str]]:
    """The HPSv2 benchmark prompts by style: a folder of ``<style>.json`` (JSON lists, as HPDv2's
    benchmark/ folder holds them) or ``<style>.txt`` (one per line), or one JSON file mapping style ->
    list (``hpsv2.benchmark_prompts('all')`` dumped), or one list / .txt (a single style, "all")."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = {}
        for style in STYLES:
            for ext in (".json", ".txt"):
                f = path / f"{style}{ext}"
                if f.is_file():
                    found[style] = _prompt_list(f)
                    break
        if not found:
            raise UserError(f"{path} holds none of the HPSv2 benchmark files {', '.join(s + '.json' for s in STYLES)} "
                            "(HPDv2's benchmark/ folder); pass that folder or one JSON file of style -> prompts.")
        return found
    if not path.is_file():
        raise UserError(f"HPSv2 benchmark prompts {path} not found; pass HPDv2's benchmark/ folder (anime.json, "
                        "concept-art.json, paintings.json, photo.json) or one JSON file of style -> prompts.")
    if path.suffix == ".json":
        data = _read_json(path)
        if isinstance(data, dict):
            if not all(isinstance(v, list) and all(isinstance(p, str) for p in v) for v in data.values()) or not data:
                raise UserError(f"{path}: a JSON object must map each style to a list of prompts.")
            return {str(k): list(v) for k, v in data.items()}
    return {"all": _prompt_list(path)}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} as JSON ({e}).") from e


def _prompt_list(path: Path) -> list[str]:
    if path.suffix == ".json":
        data = _read_json(path)
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise UserError(f"{path} must be a JSON list of prompts (as HPDv2's benchmark/{path.name}).")
        prompts = data
    else:
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"{path} holds no prompts.")
    return prompts


def benchmark_scores(cosines: np.ndarray, styles: Sequence[str]) -> dict:
    """HPSv2's benchmark table from per-image cosines: per style the mean x100 and the std of the
    80-prompt chunk means; "hpsv21" the mean over all images (the package's "Average")."""
    cosines, styles = np.asarray(cosines, dtype=float) * 100, np.asarray(styles)
    out = {"hpsv21": float(cosines.mean())}
    for style in dict.fromkeys(styles):
        s = cosines[styles == style]
        chunks = [s[i:i + CHUNK].mean() for i in range(0, len(s), CHUNK)]
        out[f"hpsv21_{style}"] = float(s.mean())
        out[f"hpsv21_{style}_chunk_std"] = float(np.std(chunks))
    return out


def flatten_styles(by_style: dict[str, list[str]], limit: int | None = None) -> tuple[list[str], list[str], list[str]]:
    """(prompts, their styles, image names ``<style>/<i:05d>.png`` as HPSv2 names them) of every style,
    each style's first ``limit`` prompts where given."""
    prompts, styles, names = [], [], []
    for style, items in by_style.items():
        for i, p in enumerate(items[:limit] if limit else items):
            prompts.append(p)
            styles.append(style)
            names.append(f"{style}/{i:05d}.png")
    return prompts, styles, names


def evaluate_hps(source, by_style: dict[str, list[str]], out_dir: Path, *, hps: HpsScorer, features, clip=None,
                 batch_size: int = 16, seed: int = 0, limit: int | None = None, plan=None, teacher=None,
                 info: dict | None = None, save_images: bool = True) -> dict:
    """HPSv2.1 on the benchmark prompts: one image per prompt (rounded 8 bits, full resolution), per-style
    and mean scores (``benchmark_scores``), colour relative to the teacher, diversity; published as
    ``out_dir/hpsv21`` (results.json, prompts.json, images/<style>/) like the COCO folder."""
    prompts, styles, names = flatten_styles(by_style, limit)
    plan = plan or Plan.make(len(prompts), 0, 0, 0)
    out_dir, started = Path(out_dir), time.time()
    staging = staging_dir(out_dir, RESULT_DIR)
    try:
        def save_png(i: int, img: np.ndarray) -> None:
            Image.fromarray(img).save(staging / "images" / names[i], compress_level=1)

        save = None
        if save_images:
            for style in dict.fromkeys(styles):
                (staging / "images" / style).mkdir(parents=True)
            save = save_png

        measured = measure(source, prompts, to_uint8=to_uint8_hwc, batch_size=batch_size, seed=seed, features=features,
                           views={}, clip=clip, hps=hps, save=save)
        results = {"benchmark": "HPSv2 (HPDv2 benchmark prompts)", "n": len(prompts),
                   "per_style": {s: styles.count(s) for s in dict.fromkeys(styles)}, "image_shape": measured["image_shape"],
                   "seed": seed, "uint8": "((x + 1) * 127.5) rounded", **benchmark_scores(measured["hps"], styles)}
        if clip is not None:
            results.update(clip_score=float(measured["clip"].mean()), clip_score_x100=float(100 * measured["clip"].mean()))
        results.update(compare(measured, plan, source, prompts, to_uint8=to_uint8_hwc, batch_size=batch_size, seed=seed,
                               features=features, view=lambda u8: u8, clip=clip, teacher=teacher))
        results.update(describe_comparison(clip, hps, plan, teacher), **(info or {}))
        atomic_write_text(staging / "prompts.json", json.dumps(
            [{"file": f, "style": s, "prompt": p} for f, s, p in zip(names, styles, prompts)], indent=1))
        results["elapsed_s"] = round(time.time() - started, 1)
        atomic_write_text(staging / "results.json", json.dumps(results, indent=2))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_dir(staging, out_dir / RESULT_DIR)
    return results


RESULT_DIR = "hpsv21"
