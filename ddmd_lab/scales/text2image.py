"""Text-to-image scales (zimage, lumina2, sdxl): a real diffusers checkpoint as the
teacher, text prompts as conditions, sample grids as the running evaluation
(COCO-10k FID / CLIP score is its own command: ``make eval-coco``).

``teacher.source`` is a local diffusers folder or a hub id (pipelines.py);
``teacher.family`` picks the adapter.  Prompts come from ``data.prompts``: a
text file (one per line) or a COCO captions JSON.  Conditions are encoded per
batch by the frozen text encoders (on the accelerator when there is one), or
once up front with ``data.precompute: true`` (cached under cache_dir).
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import torch
from pytorch_lightning.utilities import move_data_to_device

from ..backbones.text_to_image import TextToImage
from ..config import RunConfig, scale_settings
from ..data.steps import step_loader
from ..errors import UserError
from ..eval.grid import save_grid
from ..eval.spectra import raps, spectral_centroid
from ..eval.stats import output_stats
from ..io import atomic_torch_save
from ..pipelines import DTYPES, load_pipeline

TEACHER_DEFAULTS = {"family": None, "source": None, "dtype": "float32", "resolution": 1024,
                    # frozen text encoders need no float32 master weights: e.g. bfloat16 halves Qwen3's memory
                    "text_dtype": None,
                    "system_prompt": None, "thinking": None, "max_length": None,
                    # the teacher sampler's CFG options, as the family's pipeline names them (null: the pipeline's
                    # default; Lumina2 renormalises, Z-Image does not).  Training's CA term is plain CFG regardless.
                    "cfg_normalization": None, "cfg_truncation": None}
DATA_DEFAULTS = {
    "prompts": None,        # .txt (one prompt per line) or a COCO captions .json
    "precompute": False,    # encode every prompt once and cache the conditions (memory: all of them at once)
    "encode_batch": 16,
    "eval_prompts": ["a photo of a cat sitting on a windowsill", "a red double-decker bus on a city street",
                     "a bowl of fruit on a wooden table", "a snowy mountain landscape at sunrise"],
    "eval_batch": 4,
}
EVAL_SEED = 1234


def teacher_settings(cfg: RunConfig) -> dict:
    t = scale_settings(cfg.teacher, TEACHER_DEFAULTS, "teacher")
    if not t["family"] or not t["source"]:
        raise UserError(f"scale {cfg.scale!r} needs a checkpoint: --set teacher.source=<diffusers folder or hub id> "
                        "(and teacher.family, which its YAML sets).")
    return t


def data_settings(cfg: RunConfig) -> dict:
    return scale_settings(cfg.data, DATA_DEFAULTS, "data")


# load_teacher loads the pipeline afresh for every run (LoRA writes adapters into its
# network); condition_loader, the evaluator and the CLI commands reuse what it loaded.
_LOADED: dict = {}


def _key(cfg: RunConfig) -> str:
    return json.dumps(teacher_settings(cfg), sort_keys=True)


def load_model(cfg: RunConfig, fresh: bool = False) -> TextToImage:
    key = _key(cfg)
    if fresh or key not in _LOADED:
        _LOADED.clear()  # one pipeline in memory at a time
        _LOADED[key] = _build(cfg)
    return _LOADED[key]


def _build(cfg: RunConfig) -> TextToImage:
    from ..backbones import lumina2, sdxl, zimage

    t = teacher_settings(cfg)
    pipe = load_pipeline(t["source"], t["family"], t["dtype"])
    if t["text_dtype"]:  # before anything is encoded, so null and prompt features come from the same weights
        if t["text_dtype"] not in DTYPES:
            raise UserError(f"teacher.text_dtype must be one of {', '.join(DTYPES)}, got {t['text_dtype']!r}.")
        for name in ("text_encoder", "text_encoder_2"):
            if getattr(pipe, name, None) is not None:
                getattr(pipe, name).to(DTYPES[t["text_dtype"]])
    text = {k: t[k] for k in ("system_prompt", "max_length") if t[k] is not None}
    if t["family"] == "zimage":
        model = zimage.from_pipeline(pipe, t["resolution"], thinking=t["thinking"], **text)
    elif t["family"] == "lumina2":
        model = lumina2.from_pipeline(pipe, t["resolution"], **text)
    else:
        if text or t["thinking"]:
            raise UserError("SDXL's CLIP encoders take no system prompt, thinking or max_length; remove them from teacher.")
        model = sdxl.from_pipeline(pipe, t["resolution"])
    from ..backbones.pipeline_sampling import PipelineCFG

    model.guidance = PipelineCFG.pipeline_default(t["family"], t["cfg_normalization"], t["cfg_truncation"])
    for m in [model.vae, *model.text_encoders]:
        m.eval().requires_grad_(False)
    return model


def load_teacher(cfg: RunConfig):
    return load_model(cfg, fresh=True).backbone


def encode_device(cfg: RunConfig) -> torch.device:
    if cfg.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())  # the rank's device under DDP
    return torch.device("cpu")


@contextmanager
def text_encoders_on(model: TextToImage, device: torch.device):
    """The frozen text encoders on ``device`` for a while (encoding), then back on the CPU."""
    for m in model.text_encoders:
        m.to(device)
    try:
        yield
    finally:
        for m in model.text_encoders:
            m.to("cpu")


def encode_rows(model: TextToImage, prompts: list[str], batch: int) -> list:
    """One single-sample condition per prompt (encoded ``batch`` at a time)."""
    rows = []
    for i in range(0, len(prompts), batch):
        rows.extend(model.backbone.condition_rows(model.encode(prompts[i:i + batch])))
    return rows


def read_prompts(path: str | None) -> list[str]:
    if not path:
        raise UserError("no training prompts: set data.prompts to a text file (one prompt per line) or a COCO "
                        "captions JSON, e.g. --set data.prompts=/data/coco/annotations/captions_train2014.json.")
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"prompt file {p} does not exist; set data.prompts to a .txt (one per line) or a COCO captions .json.")
    if p.suffix == ".json":
        try:
            prompts = [a["caption"].strip() for a in json.loads(p.read_text())["annotations"]]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{p} is not a COCO captions file ({exc.__class__.__name__}); it needs "
                            "annotations[*].caption, or give a .txt with one prompt per line.") from None
    else:
        prompts = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"{p} holds no prompts.")
    return prompts


def precomputed_rows(cfg: RunConfig, model: TextToImage, prompts: list[str]) -> list:
    """Every prompt's condition, cached per (checkpoint and text settings, prompts)."""
    d = data_settings(cfg)
    digest = hashlib.sha256((_key(cfg) + "\n".join(prompts)).encode()).hexdigest()[:16]
    path = Path(cfg.cache_dir) / "prompt_embeddings" / f"{teacher_settings(cfg)['family']}-{digest}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=False)
    with text_encoders_on(model, encode_device(cfg)):
        rows = encode_rows(model, prompts, d["encode_batch"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(rows, path)
    return rows


def condition_loader(cfg: RunConfig, start_step: int = 0):
    """Per step: ``batch_size`` prompts drawn from (seed, step), as one batch condition."""
    if cfg.arm.gan_weight or cfg.arm.gan_disc_weight:
        raise UserError(f"arm {cfg.arm.name!r} needs real images for its discriminator; text-to-image scales provide "
                        "prompts only -- pick an arm without a GAN term.")
    model, d = load_model(cfg), data_settings(cfg)
    prompts = read_prompts(d["prompts"])
    backbone = model.backbone
    if d["precompute"]:
        rows = precomputed_rows(cfg, model, prompts)

        def make_batch(g: torch.Generator):
            return backbone.cat_conditions([rows[i] for i in torch.randint(len(rows), (cfg.batch_size,), generator=g)])
    else:
        device = encode_device(cfg)
        for m in model.text_encoders:  # they stay there: encoding happens every step
            m.to(device)

        def make_batch(g: torch.Generator):
            return model.encode([prompts[i] for i in torch.randint(len(prompts), (cfg.batch_size,), generator=g)])

    return step_loader(make_batch, cfg.seed, start_step, cfg.steps)


class Evaluator:
    """Sample grid of fixed prompts and noise at every evaluation point, with the output
    statistics of the decoded images (the variance curves: CA-only's oversaturation shows
    up as rising std and saturated share) and of the latents."""

    def __init__(self, cfg: RunConfig, run_dir: Path | None = None):
        self.cfg, self.run_dir = cfg, run_dir
        self.model = load_model(cfg)
        d = data_settings(cfg)
        prompts = list(d["eval_prompts"])
        n = min(max(cfg.eval_samples, len(prompts)), 64)  # real-model decoding is expensive; a grid needs no more
        self.prompts = [prompts[i % len(prompts)] for i in range(n)]
        self.nrow = len(prompts)  # one column per prompt
        self.batch = d["eval_batch"]
        with text_encoders_on(self.model, encode_device(cfg)):
            self.rows = encode_rows(self.model, self.prompts, self.batch)
        gen = torch.Generator().manual_seed(EVAL_SEED)
        self.noise = torch.randn(n, *self.model.backbone.sample_shape, generator=gen)

    def samples(self, module) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, images in [-1, 1]) of the student on the fixed prompts and noise."""
        backbone, device = self.model.backbone, module.device
        self.model.vae.to(device)
        latents, images = [], []
        for i in range(0, len(self.rows), self.batch):
            cond = backbone.cat_conditions(self.rows[i:i + self.batch])
            cond = move_data_to_device(cond, device)
            z = module.sample(self.noise[i:i + self.batch].to(device), cond)
            latents.append(z.float().cpu())
            images.append(self.model.decode(z).cpu())
        return torch.cat(latents), torch.cat(images)

    def __call__(self, module) -> dict:
        latents, images = self.samples(module)
        metrics = {**output_stats(images), "latent_std": latents.flatten(1).std(1).mean().item(),
                   "spectral_centroid": spectral_centroid(raps(images))}
        if self.run_dir is not None:
            save_grid(images, self.run_dir / "samples" / f"step_{module.step_count:07d}.png",
                      nrow=self.nrow)
        return metrics


def make_evaluator(cfg: RunConfig, run_dir: Path | None = None) -> Evaluator:
    return Evaluator(cfg, run_dir)


def reference_rows(cfg: RunConfig) -> dict[str, dict]:
    return {}  # the teacher's reference numbers for these scales are COCO-10k's (make eval-coco)
