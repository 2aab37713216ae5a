"""CLIP score with open_clip from a local checkpoint file (no hub access is assumed).

The paper's Table 2 (DMD2's protocol): ViT-g-14 trained on LAION-2B, the mean cosine
similarity of each image with its caption, printed x100.  DMD2 also prepends "A photo
depicts " to every caption (spliced into the tokens) and resizes images to 256 with
Lanczos before open_clip's own eval transform: ``ClipScorer(..., prefix=dmd2.PREFIX,
resize=256)`` (``prefixed_tokens`` and ``clip_image`` here; eval/protocols/dmd2.py says why).
``model_name`` may also be a path to an open_clip model-config JSON, so custom or tiny models work
the same way.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ddmd_lab.data.image_files import center_crop_long_edge
from ddmd_lab.errors import UserError
from ddmd_lab.eval.fid import to_uint8_hwc

DEFAULT_CLIP_MODEL = "ViT-g-14"
# DMD2 / GigaGAN score with ViT-g-14 trained on LAION-2B (tag laion2b_s12b_b42k); the file is the
# open_clip_pytorch_model.bin of HF's laion/CLIP-ViT-g-14-laion2B-s12B-b42K, downloaded elsewhere.
CLIP_WEIGHTS_ENV = "CLIP_WEIGHTS"
DEFAULT_CLIP_WEIGHTS = Path("~/.cache/ddmd_lab/open_clip/ViT-g-14-laion2b_s12b_b42k/open_clip_pytorch_model.bin")
CONTEXT = 77  # CLIP's text context: the token length the prefix splice assumes


def register_config(model_name: str | Path) -> str:
    """A path to an open_clip model-config JSON is registered under its stem (custom / tiny models);
    a built-in name is returned as is."""
    import open_clip  # deferred: open_clip takes seconds to import; only a scorer's construction needs it

    path = Path(model_name)
    if path.suffix != ".json":
        if str(model_name).startswith("hf-hub:"):
            raise UserError(f"CLIP model {model_name}: hub downloads are unavailable offline; pass a built-in open_clip "
                            "name (e.g. ViT-g-14) or a model-config JSON, and the weights as a local file.")
        if str(model_name).replace("/", "-") not in open_clip.list_models():
            raise UserError(f"unknown open_clip model {model_name!r}; pass a built-in name (e.g. ViT-g-14) "
                            "or the path of an open_clip model-config JSON.")
        return str(model_name)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the open_clip model config {path} ({e}); pass an existing JSON file.") from e
    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        # open_clip silently skips such files, and would then say only "config not found"
        raise UserError(f"{path} is not an open_clip model config: it needs embed_dim, vision_cfg and text_cfg.")
    if open_clip.get_model_config(path.stem) != cfg:  # re-registering rescans every config folder: only when new
        open_clip.add_model_config(path)
    return path.stem


def clip_image(u8: np.ndarray, size: int = 256) -> Image.Image:
    """DMD2's CLIP-score image: square centre crop, Lanczos to ``size`` (open_clip's transform follows)."""
    return center_crop_long_edge(Image.fromarray(u8)).resize((size, size), Image.LANCZOS)


def prefixed_tokens(tokenizer, captions: Sequence[str], prefix: str) -> Tensor:
    """DMD2's caption tokens with ``prefix`` ("A photo depicts ") spliced in (coco_evaluator.compute_clip_score):
    ``[start] + prefix tokens 1:4 + caption tokens 1:``, cut to 77, position 76 set to end-of-text
    where it is not padding.  ``tokenizer`` is open_clip's (DMD2 calls openai's clip.tokenize with
    truncate=True: the same BPE, the same 77-token truncation that ends in end-of-text)."""
    tokens = tokenizer(list(captions))
    if tokens.shape[1] != CONTEXT:
        raise ValueError(f"DMD2's splice assumes {CONTEXT}-token contexts, the tokenizer gives {tokens.shape[1]}")
    head = tokenizer([prefix])[:, 1:4].expand(len(tokens), -1)
    spliced = torch.cat([tokens[:, :1], head, tokens[:, 1:]], dim=1)[:, :CONTEXT].clone()
    eot = int(tokenizer([""])[0, 1])  # the end-of-text id (49407 for CLIP's BPE)
    last = spliced[:, CONTEXT - 1]
    last[last > 0] = eot
    return spliced


def default_clip_weights() -> Path:
    return Path(os.environ.get(CLIP_WEIGHTS_ENV) or DEFAULT_CLIP_WEIGHTS).expanduser()


class ClipScorer:
    """CLIP score of images against their captions with an open_clip model from a local file.

    Score = 100 x the mean cosine similarity of image and caption embeddings,
    the protocol of DMD2 and the paper (PAPER.md); no clamp at zero (torchmetrics'
    CLIPScore clamps, which only matters for a model whose cosines go negative).
    """

    def __init__(self, model_name: str | Path = DEFAULT_CLIP_MODEL, weights: str | Path | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 32, prefix: str | None = None,
                 resize: int | None = None):
        import open_clip  # deferred: open_clip takes seconds to import; only a scorer's construction needs it

        weights = default_clip_weights() if weights is None else Path(weights).expanduser()
        if not weights.is_file():
            raise UserError(f"CLIP weights {weights} not found: hub downloads are unavailable offline, so put the "
                            f"open_clip checkpoint of {Path(model_name).name} there or pass "
                            f"{CLIP_WEIGHTS_ENV}=/path/open_clip_pytorch_model.bin.")
        name = register_config(model_name)
        try:
            # pretrained=<absolute file path> makes open_clip load the file and never touch the hub
            # (it tries tags first: a relative file named like a tag, e.g. laion2b_s12b_b42k, would download)
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                name, pretrained=str(weights.resolve()), device=device)
        except (RuntimeError, AssertionError, KeyError, ValueError, pickle.UnpicklingError) as e:
            # strict load_state_dict raises RuntimeError, open_clip's pos-embed resizing an AssertionError
            # (the file is for another architecture), torch.load an UnpicklingError (not a checkpoint)
            reason = (str(e).splitlines() or [type(e).__name__])[0]
            raise UserError(f"CLIP weights {weights} do not fit open_clip model {name} ({reason}); "
                            f"pass the checkpoint that matches the model.") from e
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        self.model_name, self.weights = name, weights
        self.device, self.batch_size = torch.device(device), batch_size
        self.prefix, self.resize = prefix, resize

    def _pixels(self, u8: np.ndarray) -> Tensor:
        """open_clip's own eval transform (bicubic resize, centre crop, its mean / std), after DMD2's
        square crop + Lanczos to ``resize`` where set."""
        images = [clip_image(img, self.resize) if self.resize else Image.fromarray(np.asarray(img, dtype=np.uint8))
                  for img in u8]
        return torch.stack([self.preprocess(img) for img in images]).to(self.device)

    def _tokens(self, captions: Sequence[str]) -> Tensor:
        if self.prefix:
            return prefixed_tokens(self.tokenizer, captions, self.prefix)
        return self.tokenizer(list(captions))

    @torch.no_grad()
    def cosines(self, images: np.ndarray | Tensor, captions: Sequence[str]) -> Tensor:
        """Per-image cosine similarity (N,) in [-1, 1]; ``images`` uint8 (N, H, W, 3) or a tensor in [-1, 1] (N, C, H, W)."""
        u8 = to_uint8_hwc(images) if isinstance(images, Tensor) else images  # an array, or a list of any sizes
        if len(u8) != len(captions):
            raise ValueError(f"{len(u8)} images but {len(captions)} captions")
        out = []
        for i in range(0, len(u8), self.batch_size):
            img = self.model.encode_image(self._pixels(u8[i:i + self.batch_size])).float()
            txt = self.model.encode_text(self._tokens(captions[i:i + self.batch_size]).to(self.device)).float()
            out.append(torch.nn.functional.cosine_similarity(img, txt, dim=-1).cpu())
        return torch.cat(out)

    def scores(self, images: np.ndarray | Tensor, captions: Sequence[str]) -> Tensor:
        """Per-image scores (N,) in [-100, 100]: 100 x the cosine."""
        return 100 * self.cosines(images, captions)

    @torch.no_grad()
    def image_features(self, u8: np.ndarray) -> Tensor:
        """Unit-norm image embeddings (N, D) of uint8 images, through the same transform as the score."""
        out = [self.model.encode_image(self._pixels(u8[i:i + self.batch_size])).float().cpu()
               for i in range(0, len(u8), self.batch_size)]
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    def describe(self) -> dict:
        return {"clip_model": self.model_name, "clip_weights": str(self.weights), "clip_prefix": self.prefix,
                "clip_resize": f"center crop + Lanczos to {self.resize}" if self.resize else None}

    def __call__(self, images: np.ndarray | Tensor, captions: Sequence[str]) -> float:
        return float(self.scores(images, captions).mean())
