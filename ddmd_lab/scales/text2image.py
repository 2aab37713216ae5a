"""Text-to-image scales (zimage, lumina2, sdxl): a real diffusers checkpoint as the
teacher, text prompts as conditions, sample grids as the running evaluation
(COCO-10k FID / CLIP score is its own command: ``make eval-coco``).

``teacher.source`` is a local diffusers folder or a hub id (pipelines.py);
``teacher.family`` picks the adapter.  Prompts come from ``data.prompts``: a
text file (one per line) or a COCO captions JSON.  Conditions are encoded per
batch by the frozen text encoders (on the accelerator when there is one), or
once up front with ``data.precompute: true`` (cached under cache_dir).  GAN arms
(DMD2's recipe) also need real images: a COCO captions JSON's own images, VAE-encoded
once and cached (data/real_latents.py); a batch then pairs real latents with captions
of those same images.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from ddmd_lab.backbones import lumina2, sdxl, zimage
from ddmd_lab.backbones.lora import DEFAULT_TARGETS, check_targets
from ddmd_lab.backbones.pipeline_sampling import PipelineCFG
from ddmd_lab.backbones.pipelines import (DTYPES, load_pipeline, meta_denoiser, pipeline_folder, resolution_step,
                                          resolve_source)
from ddmd_lab.backbones.text_to_image import TextToImage, check_resolution
from ddmd_lab.config import RunConfig, scale_settings
from ddmd_lab.data.embeddings import Embeddings, cache_folder, open_embeddings, text_files_fingerprint, write_embeddings
from ddmd_lab.data.prompts import read_prompts, warn_truncated
from ddmd_lab.data.real_latents import cached_latents, coco_images
from ddmd_lab.data.steps import step_loader
from ddmd_lab.errors import UserError
from ddmd_lab.parallel.ranks import local_rank
from ddmd_lab.scales import text2image_eval

TEACHER_DEFAULTS = {"family": None, "source": None, "dtype": "float32", "resolution": 1024,
                    # frozen text encoders need no float32 master weights: e.g. bfloat16 halves Qwen3's memory
                    "text_dtype": None,
                    "system_prompt": None, "thinking": None, "max_length": None,
                    # the teacher sampler's CFG options, as the family's pipeline names them (null: the pipeline's
                    # default; Lumina2 renormalises, Z-Image does not).  Training's CA term is plain CFG regardless.
                    "cfg_normalization": None, "cfg_truncation": None}
DATA_DEFAULTS = {
    "prompts": None,        # .txt (one prompt per line) or a COCO captions .json
    # true: conditions from the embedding cache (make embed; built first if missing), memory-mapped bfloat16 --
    # training never loads the text encoders.  false: encoded per batch on the rank's accelerator
    "precompute": False,
    "encode_batch": 16,
    # GAN arms (dmd2, decoupled_hybrid_gan, ca_gan): the discriminator's real images are the captions file's own
    # (data.prompts must then be a COCO captions .json), VAE-encoded once and cached under cache_dir
    "images": None,         # their folder; null = beside the captions file in COCO's layout (annotations/../train2014)
    "max_images": 10000,    # at most this many of them (a fixed random subset); null = all
    "eval_prompts": ["a photo of a cat sitting on a windowsill", "a red double-decker bus on a city street",
                     "a bowl of fruit on a wooden table", "a snowy mountain landscape at sunrise"],
    "eval_batch": 4,
    # colour of the evaluation samples also relative to the teacher's many-step CFG samples of the same prompts and
    # noise at the run's alpha (*_vs_teacher): sampled once at the first evaluation, cached under cache_dir/teacher_eval
    "eval_vs_teacher": True,
}
VAE_BATCH = 4  # real images per VAE encode (the encoder in float32 at 1024 px: a few GiB of activations each)


def teacher_settings(cfg: RunConfig) -> dict:
    t = scale_settings(cfg.teacher, TEACHER_DEFAULTS, "teacher")
    if not t["family"] or not t["source"]:
        raise UserError(f"scale {cfg.run.scale!r} needs a checkpoint: --set teacher.source=<diffusers folder or hub id> "
                        "(and teacher.family, which its YAML sets).")
    return t


def data_settings(cfg: RunConfig) -> dict:
    return scale_settings(cfg.data, DATA_DEFAULTS, "data")


# load_teacher loads the pipeline afresh for every run (LoRA writes adapters into its
# network); condition_loader, the evaluator and the CLI commands reuse what it loaded.
_LOADED: dict = {}


def _cached_text(cfg: RunConfig, training: bool) -> bool:
    """Whether a model's conditions come from the embedding cache: training with data.precompute."""
    return training and bool(data_settings(cfg)["precompute"])


def _key(cfg: RunConfig, training: bool = False) -> str:
    return json.dumps(teacher_settings(cfg), sort_keys=True) + (" cached-text" if _cached_text(cfg, training) else "")


def load_model(cfg: RunConfig, fresh: bool = False, training: bool = False) -> TextToImage:
    """The teacher with its VAE and text path.  ``training`` (load_teacher, the condition loader, the
    evaluator): with data.precompute the text encoders are never loaded (weightless, on the meta
    device) and every condition comes from the embedding cache, built first if missing."""
    key = _key(cfg, training)
    if fresh or key not in _LOADED:
        _LOADED.clear()  # one pipeline in memory at a time
        _LOADED[key] = _build(cfg, training)
    return _LOADED[key]


def _no_text_encoders(prompts: list[str]):
    raise UserError("this training run reads its prompts from the embedding cache (data.precompute=true) and holds no "
                    "text encoders; encode prompts with a model loaded for sampling (load_model without training).")


def check_checkpoint(cfg: RunConfig):
    """teacher.source's folder, refused before any weight loads when it holds another family's pipeline
    or teacher.resolution does not fit its VAE and patching (read from its config files)."""
    t = teacher_settings(cfg)
    folder = pipeline_folder(t["source"], t["family"])
    check_resolution(int(t["resolution"]), *resolution_step(folder, t["family"]))
    return folder


def check_inputs(cfg: RunConfig) -> None:
    """What a run reads besides the weights, checked before any model loads (a real checkpoint takes
    minutes): the checkpoint folder (check_checkpoint), the LoRA targets (on its denoiser built on the
    meta device), and the prompts file, or a GAN arm's captions and their images (headers only)."""
    folder = check_checkpoint(cfg)
    if int(cfg.optimisation.lora.get("rank", 0)) > 0:
        check_targets(meta_denoiser(folder, teacher_settings(cfg)["family"]), cfg.optimisation.lora.get("targets", DEFAULT_TARGETS))
    d = data_settings(cfg)
    if cfg.arm.gan_weight or cfg.arm.gan_disc_weight:
        if not d["prompts"]:
            read_prompts(None)  # the usual "no training prompts" error
        coco_images(d["prompts"], d["images"], d["max_images"])
    else:
        read_prompts(d["prompts"])


def _build(cfg: RunConfig, training: bool = False) -> TextToImage:
    t = teacher_settings(cfg)
    check_checkpoint(cfg)  # config files only: a wrong folder or resolution fails before the weights load
    cached = None
    if _cached_text(cfg, training):
        caches = find_embeddings(cfg)
        if all(c is not None for c in caches.values()):
            cached = caches["training"]
            print(f"text conditions: reusing the embedding cache {cached.folder} ({cached.describe()}); "
                  "text encoders not loaded")
    pipe = load_pipeline(t["source"], t["family"], t["dtype"], text_encoders=cached is None)
    if t["text_dtype"]:  # before anything is encoded, so null and prompt features come from the same weights
        if t["text_dtype"] not in DTYPES:
            raise UserError(f"teacher.text_dtype must be one of {', '.join(DTYPES)}, got {t['text_dtype']!r}.")
        for name in ("text_encoder", "text_encoder_2"):
            if getattr(pipe, name, None) is not None:
                getattr(pipe, name).to(DTYPES[t["text_dtype"]])
    text = {k: t[k] for k in ("system_prompt", "max_length") if t[k] is not None}
    null = cached.null if cached is not None else None
    if t["family"] == "zimage":
        model = zimage.from_pipeline(pipe, t["resolution"], thinking=t["thinking"], null=null, **text)
    elif t["family"] == "lumina2":
        model = lumina2.from_pipeline(pipe, t["resolution"], null=null, **text)
    else:
        if text or t["thinking"]:
            raise UserError("SDXL's CLIP encoders take no system prompt, thinking or max_length; remove them from teacher.")
        model = sdxl.from_pipeline(pipe, t["resolution"], null=null)
    model.guidance = PipelineCFG.pipeline_default(t["family"], t["cfg_normalization"], t["cfg_truncation"])
    for m in [model.vae, *model.text_encoders]:
        m.eval().requires_grad_(False)
    if _cached_text(cfg, training):
        if cached is None:  # the first run of this text path and prompt set: embed now, then drop the encoders
            embed(cfg, model)
            for m in model.text_encoders:
                m.to("meta")  # weightless from here on: the architecture stays (memory plans read it)
        model.encode = _no_text_encoders
    return model


def load_teacher(cfg: RunConfig):
    return load_model(cfg, fresh=True, training=True).backbone


def encode_device(cfg: RunConfig) -> torch.device:
    """This rank's accelerator, for the text encoders and the VAE outside the training step.  Read
    from the node-local rank (parallel/ranks.local_rank: LOCAL_RANK, or SLURM_LOCALID under srun, where every
    task would otherwise take cuda:0) and cfg.parallel.devices, not from torch.cuda.current_device():
    loaders and evaluators are made before Lightning sets it."""
    if cfg.parallel.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        rank = local_rank()
        devices = cfg.parallel.devices
        if isinstance(devices, str) and "," in devices:
            devices = [int(d) for d in devices.split(",") if d.strip()]
        if isinstance(devices, (list, tuple)) and devices:
            return torch.device("cuda", int(devices[rank % len(devices)]))
        return torch.device("cuda", rank % torch.cuda.device_count())
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


def text_identity(cfg: RunConfig) -> dict:
    """What decides the conditions a prompt gets: the checkpoint (its id or folder, and a fingerprint
    of its text encoders' and tokenizers' files), the text settings, the dtype the encoders run in."""
    t = teacher_settings(cfg)
    identity = {"family": t["family"], "source": t["source"], "text_dtype": t["text_dtype"] or t["dtype"],
                "files": text_files_fingerprint(resolve_source(t["source"])),
                **{k: t[k] for k in ("system_prompt", "thinking", "max_length")}}
    if t["family"] == "sdxl":
        identity["resolution"] = t["resolution"]  # SDXL's conditions carry the time ids (image size)
    return identity


def teacher_identity(cfg: RunConfig, steps: int | None, alpha: float) -> dict:
    """What decides a teacher's image: the checkpoint (its settings and a fingerprint of every file of its
    diffusers folder), the sampling steps and the CFG alpha.  The evaluations (eval/protocols/) key their
    caches of the teacher's images by it."""
    t = teacher_settings(cfg)
    return {"teacher": t, "files": text_files_fingerprint(resolve_source(t["source"]), ("*",)),
            "steps": steps, "alpha": alpha}


def embedding_sets(cfg: RunConfig) -> dict[str, list[str]]:
    """The prompt lists a run embeds: every prompt of data.prompts (GAN arms use the captions of their
    images among them), and the evaluator's fixed prompts."""
    d = data_settings(cfg)
    return {"training": read_prompts(d["prompts"]), "eval": list(d["eval_prompts"])}


def find_embeddings(cfg: RunConfig) -> dict[str, Embeddings | None]:
    """The complete caches of the run's prompt sets (None where missing); loads no model."""
    identity = text_identity(cfg)
    return {name: open_embeddings(cache_folder(cfg.run.cache_dir, identity, prompts))
            for name, prompts in embedding_sets(cfg).items()}


def embed(cfg: RunConfig, model: TextToImage | None = None, log=print) -> dict[str, Embeddings]:
    """make embed: the embedding caches of the training and evaluation prompts, written where
    missing (text encoders on this rank's device), reused where complete."""
    identity, caches = text_identity(cfg), {}
    for name, prompts in embedding_sets(cfg).items():
        folder = cache_folder(cfg.run.cache_dir, identity, prompts)
        cache = open_embeddings(folder)
        if cache is not None:
            log(f"{name} prompts: reusing the complete embedding cache {folder} ({cache.describe()})")
        else:
            model = model or load_model(cfg)
            warn_truncated(model, prompts, f"{name} prompts")
            batch = data_settings(cfg)["encode_batch"]
            with text_encoders_on(model, encode_device(cfg)):
                cache = write_embeddings(folder, lambda ps: model.backbone.condition_rows(model.encode(ps)), prompts,
                                         batch, model.backbone.null_batch(1), identity)
            log(f"{name} prompts: embedding cache written to {folder} ({cache.describe()})")
        caches[name] = cache
    return caches


class EmbeddedRows:
    """Prompt i of a loader's list -> its cached condition (float32, read from the memory map)."""

    def __init__(self, cache: Embeddings, index: list[int] | None):
        self.cache, self.index = cache, index

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else len(self.cache)

    def __getitem__(self, i):
        i = int(i)
        return self.cache[self.index[i] if self.index is not None else i]


def embedded_rows(cfg: RunConfig, prompts: list[str]) -> EmbeddedRows:
    """``prompts`` (all of data.prompts, or some of them: a GAN arm's captions) from the embedding cache."""
    load_model(cfg, training=True)  # builds the caches if missing
    every = embedding_sets(cfg)["training"]
    cache = open_embeddings(cache_folder(cfg.run.cache_dir, text_identity(cfg), every))
    if cache is None:
        raise UserError(f"the embedding cache of {data_settings(cfg)['prompts']} vanished while loading; run make embed again.")
    if prompts == every:
        return EmbeddedRows(cache, None)
    first: dict[str, int] = {}
    for i, p in enumerate(every):
        first.setdefault(p, i)
    missing = [p for p in prompts if p not in first]
    if missing:
        raise UserError(f"{len(missing)} prompts are not among data.prompts' (e.g. {missing[0]!r}); "
                        "their conditions cannot come from its embedding cache -- set data.precompute=false.")
    return EmbeddedRows(cache, [first[p] for p in prompts])


def real_images(cfg: RunConfig, model: TextToImage):
    """(images and their captions, their cached latents) for a GAN arm's discriminator."""
    d = data_settings(cfg)
    if not d["prompts"]:
        read_prompts(None)  # the usual "no training prompts" error
    real = coco_images(d["prompts"], d["images"], d["max_images"])
    warn_truncated(model, real.prompts, "training captions")  # before the images' long VAE encode
    latents = cached_latents(cfg.run.cache_dir, model.vae, real.files, teacher_settings(cfg)["resolution"],
                             VAE_BATCH, encode_device(cfg))
    if tuple(latents.shape[1:]) != tuple(model.backbone.sample_shape):
        raise UserError(f"the VAE's latents of the real images have shape {tuple(latents.shape[1:])}, the teacher "
                        f"denoises {tuple(model.backbone.sample_shape)}; the checkpoint's VAE and denoiser disagree.")
    return real, latents


def condition_loader(cfg: RunConfig, start_step: int = 0):
    """Per step: ``batch_size`` prompts drawn from (seed, step), as one batch condition.  For GAN arms:
    ``batch_size`` real images and one of each's own captions, (condition, real latents)."""
    model, d = load_model(cfg, training=True), data_settings(cfg)
    gan = bool(cfg.arm.gan_weight or cfg.arm.gan_disc_weight)
    if gan:
        real, latents = real_images(cfg, model)
        prompts = real.prompts
    else:
        prompts = read_prompts(d["prompts"])
    warn_truncated(model, prompts, "training prompts")
    backbone = model.backbone
    if d["precompute"]:
        rows = embedded_rows(cfg, prompts)  # memory-mapped; the text encoders are not loaded

        def conditions(indices):
            return backbone.cat_conditions([rows[i] for i in indices])
    else:
        device = encode_device(cfg)
        for m in model.text_encoders:  # they stay there: encoding happens every step
            m.to(device)

        def conditions(indices):
            return model.encode([prompts[i] for i in indices])

    if not gan:
        def make_batch(g: torch.Generator):
            return conditions(torch.randint(len(prompts), (cfg.schedule.batch_size,), generator=g).tolist())
    else:
        def make_batch(g: torch.Generator):
            images = torch.randint(len(real.files), (cfg.schedule.batch_size,), generator=g).tolist()
            captions = [real.captions[i][int(torch.randint(len(real.captions[i]), (), generator=g))] for i in images]
            return conditions(captions), latents[images].float()

    return step_loader(make_batch, cfg.run.seed, start_step, cfg.schedule.steps)


def evaluator_prompts(cfg: RunConfig) -> list[str]:
    """The training evaluator's fixed prompts (data.eval_prompts repeated to eval_samples)."""
    return text2image_eval.eval_prompts(data_settings(cfg)["eval_prompts"], cfg.evaluation.eval_samples)


def make_evaluator(cfg: RunConfig, run_dir: Path | None = None) -> text2image_eval.TextToImageEvaluator:
    """The sample-grid evaluator (text2image_eval.py) on the evaluator's prompts, their conditions encoded
    now (or read from the embedding cache with data.precompute), and with data.eval_vs_teacher the
    teacher's identity at the run's alpha (its colour reference)."""
    model, d = load_model(cfg, training=True), data_settings(cfg)
    prompts = evaluator_prompts(cfg)
    nrow = len(d["eval_prompts"])  # one column per prompt
    if d["precompute"]:  # embedded with the training prompts (make embed)
        cache = embed(cfg, model, log=lambda _: None)["eval"]
        rows = [cache[i % nrow] for i in range(len(prompts))]
    else:
        with text_encoders_on(model, encode_device(cfg)):
            rows = encode_rows(model, prompts, d["eval_batch"])
    teacher = teacher_identity(cfg, None, cfg.objective.alpha) if d["eval_vs_teacher"] else None
    return text2image_eval.TextToImageEvaluator(cfg, run_dir, model, prompts, rows, nrow, d["eval_batch"], teacher)


def reference_rows(cfg: RunConfig) -> dict[str, dict]:
    """The teacher's colour row on the evaluator's prompts and noise, where a run's first evaluation
    cached it (nothing is sampled here); its COCO-10k / HPSv2.1 numbers come from make eval-coco / eval-hps."""
    try:
        return text2image_eval.teacher_row(cfg, teacher_identity(cfg, None, cfg.objective.alpha), evaluator_prompts(cfg))
    except UserError:  # the checkpoint is not here (another machine's runs): no row
        return {}
