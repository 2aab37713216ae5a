"""Per-GPU memory of a text-to-image run, planned without a GPU (``make plan``).

The facts of the real architectures (parameters, the activation estimate) come
from architectures.py (full size on the meta device, no weights, no download).
What the run holds follows the code:

- full fine-tuning (lora.rank 0): the teacher, and the generator and fake as
  deep copies of it (module.py): the teacher in ``teacher.dtype``, the trained
  copies in ``master_dtype``, each with AdamW's two states (exp_avg,
  exp_avg_sq) in that dtype, held all along.
- gradients of one trained model at a time: the generator's update, then the
  fake's; the idle model is frozen during the other's, and each update ends
  with zero_grad(set_to_none=True) (module.py ``_update``).
- AdamW as module.py builds it (neither foreach nor fused named): on CUDA
  torch's foreach implementation, whose step holds one temporary of the
  stepped model's size (the sqrt of exp_avg_sq) beside its gradients;
  ``fused=True`` holds none (``--adamw fused`` plans that).
- LoRA (lora.rank > 0): one frozen base (the teacher) and two peft adapters on
  the ``lora.targets`` linears (lora.py), the adapters in ``master_dtype``.
- ``ddp``: everything replicated, plus one flattened bucket of the stepped model's
  gradients at a time (sharding.average_gradients; no DDP wrapper).  ``fsdp``:
  trained weights, gradients and optimiser states divided by the GPUs, the
  frozen teacher sharded or replicated (``fsdp_teacher``), plus the gathered
  block.  ``auto`` on one GPU: everything once.
- ``precision: bf16-mixed`` keeps float32 weights; Lightning's autocast runs
  with cache_enabled=False, so a weight's bf16 copy lives only as long as the
  op that cast it needs it (no cache of every weight for the whole step).
- frozen text encoders in ``teacher.text_dtype`` on the GPU unless prompts are
  precomputed (``data.precompute``); the VAE in ``teacher.dtype``, moved to the
  GPU for the evaluation grids.

A step's peak is what is held plus one model's update: its gradients with the
largest of what the update's phases add -- the backward's activations, ddp's
bucket in the all-reduce after it, AdamW's temporary in the step after that.

The arithmetic (``components``, ``step_bytes``) is separate from the meta
instantiation (``architectures.architecture_facts``) so that the tests check
each term against a small model measured on the CPU.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ddmd_lab.backbones.blocks import CHECKPOINTED
from ddmd_lab.backbones.lora import DEFAULT_TARGETS
from ddmd_lab.config import scale_settings
from ddmd_lab.errors import UserError
from ddmd_lab.parallel.strategies import BUCKET_BYTES as DDP_BUCKET_BYTES
from ddmd_lab.planning.architectures import (Activations, Facts, architecture_facts, compute_bytes, family_specs,
                                             model_specs)
from ddmd_lab.scales.text2image import TEACHER_DEFAULTS, data_settings
from ddmd_lab.util.io import atomic_write_text

GIB = 2 ** 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
DEFAULT_GPU_GIB = 80.0  # A100 / H100 80 GB (80 GiB); an H200's 141 GB is ~140 GiB
DEFAULT_MARGIN = 0.10  # kept free: CUDA context, cuBLAS/NCCL workspaces, allocator fragmentation
PLAN_FILE = "memory_plan.json"
# AdamW implementations the plan knows: the bytes its step adds, in trained models' sizes
ADAMW_STEP_MODELS = {"foreach": 1, "fused": 0}
# what DistillModule.configure_optimizers builds on CUDA (torch.optim.AdamW without foreach / fused: torch
# picks foreach there); tests/test_memory_terms.py fails when the two part
ADAMW_DEFAULT = "foreach"

DEFAULT_TEXT_TOKENS = {"zimage": 512, "lumina2": 256}  # the adapters' max_length (SDXL: CLIP's 77)


# ---- the arithmetic ---------------------------------------------------------------------------



@dataclass(frozen=True)
class Settings:
    batch: int = 1  # per GPU
    teacher_queries: int = 3  # samples per student sample in the teacher's batched call (update.py)
    eval_batch: int = 4
    teacher_dtype: str = "float32"
    trained_dtype: str = "float32"  # master_dtype: the trained copies / LoRA adapters
    text_dtype: str = "bfloat16"
    precision: str = "bf16-mixed"
    lora_rank: int = 0
    train_fake: bool = True
    strategy: str = "single"  # single | ddp | fsdp
    gpus: int = 1
    fsdp_teacher: str = "shard"  # shard | replicate
    gradient_checkpointing: bool = True
    text_on_gpu: bool = True
    gpu_gib: float = DEFAULT_GPU_GIB
    margin: float = DEFAULT_MARGIN
    adamw: str = ADAMW_DEFAULT  # foreach | fused (ADAMW_STEP_MODELS)


def adamw_variant(defaults: dict, device_type: str = "cuda") -> str:
    """The AdamW implementation torch runs for an optimiser built with these ``defaults`` on that device:
    fused=True: 'fused'; foreach=True, or neither named on CUDA (torch's default there): 'foreach';
    otherwise the per-tensor loop, 'for-loop' (torch's default on the CPU)."""
    if defaults.get("fused"):
        return "fused"
    foreach = defaults.get("foreach")
    return "foreach" if foreach or (foreach is None and device_type == "cuda") else "for-loop"


def weight_dtypes(s: Settings) -> tuple[str, str]:
    """(teacher, trained) weight dtypes: Lightning's ``*-true`` precisions cast the whole module."""
    true = {"bf16-true": "bfloat16", "16-true": "float16", "64-true": "float64"}.get(str(s.precision))
    return (true, true) if true else (s.teacher_dtype, s.trained_dtype)


def training_activations(a: Activations | None, s: Settings) -> int:
    """The generator step's peak: its graph at ``batch`` (with checkpointing: what lies outside the
    blocks, the blocks' inputs, and one block recomputed in backward), while the teacher's
    no-grad batched call runs at teacher_queries x batch (counted as one block's internals)."""
    if a is None:
        return 0
    graph = s.batch * (a.outside + (a.boundaries if s.gradient_checkpointing else a.blocks))
    transient = max(s.teacher_queries, 1) * s.batch * a.block_max
    return graph + transient


def components(f: Facts, s: Settings) -> dict[str, int]:
    """Per-GPU bytes by component (the peak is ``peak_bytes``)."""
    if s.adamw not in ADAMW_STEP_MODELS:
        raise UserError(f"adamw {s.adamw!r}: the memory plan knows {' and '.join(ADAMW_STEP_MODELS)}; "
                        "pick one of them (make plan ... --adamw fused).")
    teacher_dtype, trained_dtype = weight_dtypes(s)
    tb, rb = DTYPE_BYTES[teacher_dtype], DTYPE_BYTES[trained_dtype]
    trained = f.adapter_params if s.lora_rank else f.denoiser_params  # one trained model's parameters
    n_trained = 2 if s.train_fake else 1
    shard = s.gpus if s.strategy == "fsdp" else 1
    teacher_shard = shard if s.fsdp_teacher == "shard" else 1
    one = math.ceil(trained * rb / shard)  # one trained model's weights on this GPU, in their dtype
    return {
        "teacher": math.ceil(f.denoiser_params * tb / teacher_shard),
        "generator": one,
        "fake": one if s.train_fake else 0,
        "optimizer": 2 * n_trained * one,  # AdamW's exp_avg + exp_avg_sq of every trained model, held all along
        # the stepped model's only: the idle one is frozen, and gradients are set to None after each update
        "gradients": one,
        "adamw_step": ADAMW_STEP_MODELS[s.adamw] * one,  # foreach: sqrt(exp_avg_sq) for every tensor at once
        "ddp_buckets": min(trained * rb, DDP_BUCKET_BYTES) if s.strategy == "ddp" else 0,
        # FSDP: one block gathered, the next prefetched, its unsharded gradient (compute dtype)
        "fsdp_gathered": 3 * f.largest_block_params * compute_bytes(s.precision) if s.strategy == "fsdp" else 0,
        "text_encoders": sum(n for _, n in f.text_encoder_params) * DTYPE_BYTES[s.text_dtype] if s.text_on_gpu else 0,
        "vae": f.vae_params * DTYPE_BYTES[s.teacher_dtype],  # the pipeline's dtype: not in the LightningModule
        "activations": training_activations(f.activations, s),
        # evaluation grids, between steps: input, output and one temporary of the largest layer
        "vae_decode": 3 * f.vae_decode_elements * DTYPE_BYTES[s.teacher_dtype] * s.eval_batch,
    }


# held through the whole run; the training step's own part of them (gpu_check.py loads neither text
# encoders nor a VAE: its measured peak compares with the training part)
HELD = ("teacher", "generator", "fake", "optimizer", "text_encoders", "vae")
TRAINING_HELD = ("teacher", "generator", "fake", "optimizer")
# one model's update, on top of what is held (step_bytes)
STEP = ("gradients", "activations", "fsdp_gathered", "ddp_buckets", "adamw_step")
TRAINING = TRAINING_HELD + STEP


def step_bytes(c: dict[str, int]) -> int:
    """One model's update: its gradients (they grow through the backward and live until the step's
    end), with the largest of what its phases add -- the backward's activations (and FSDP's gathered
    blocks), ddp's all-reduce bucket after it, AdamW's temporary in the step after that.  The phases
    follow one another, so only the largest counts.  (Counting the whole graph beside all the
    gradients is pessimistic: the backward frees the graph as the gradients fill.)"""
    return c["gradients"] + max(c["activations"] + c["fsdp_gathered"], c["ddp_buckets"], c["adamw_step"])


def peak_bytes(c: dict[str, int]) -> int:
    """Everything held, plus the larger transient: a training step's update or an evaluation's decode
    (between steps: no gradients then)."""
    return sum(c[k] for k in HELD) + max(step_bytes(c), c["vae_decode"])


def training_bytes(c: dict[str, int]) -> int:
    """The training step's own part of the peak: without the frozen text encoders, the VAE and its decode
    (a run with precomputed prompts between evaluations)."""
    return sum(c[k] for k in TRAINING_HELD) + step_bytes(c)


DESCRIPTIONS = {
    "teacher": "frozen teacher denoiser (LoRA: the shared base)",
    "generator": "generator weights (full copy or LoRA adapter)",
    "fake": "fake-model weights (full copy or LoRA adapter)",
    "optimizer": "AdamW exp_avg + exp_avg_sq of both trained models",
    "gradients": "gradients of the stepped model (one at a time)",
    "adamw_step": "AdamW step's temporary (foreach: one model's size; fused: 0)",
    "ddp_buckets": "ddp: one all-reduce bucket of the stepped model's gradients",
    "fsdp_gathered": "FSDP: gathered + prefetched block, its gradient",
    "text_encoders": "frozen text encoders (0: prompts precomputed)",
    "vae": "VAE (evaluation decoding)",
    "activations": "activations of a training step (estimate)",
    "vae_decode": "VAE decode of an evaluation batch (estimate)",
}


# ---- from a run's config ------------------------------------------------------------------------

def world_size(cfg) -> int:
    d = cfg.parallel.devices
    if isinstance(d, (list, tuple)):
        n = len(d)
    elif isinstance(d, int) or (isinstance(d, str) and d.strip().isdigit()):
        n = int(d)
    else:
        n = -1
    if n < 1:
        raise UserError(f"devices={d!r}: the memory plan needs a number of GPUs, e.g. SET=\"devices=8\".")
    return n * int(cfg.parallel.num_nodes)


def strategy_kind(cfg, gpus: int) -> str:
    s = str(cfg.parallel.strategy)
    if s == "auto":
        return "single" if gpus == 1 else "ddp"  # Lightning picks DDP for several GPUs
    if s.startswith("ddp"):
        return "ddp"
    if s.startswith("fsdp"):
        return "fsdp"
    raise UserError(f"strategy {s!r}: the memory plan knows auto, ddp and fsdp.")


def teacher_queries(arm) -> int:
    """Samples per student sample in update.generator_update's one batched teacher call."""
    shared = arm.shared_draw and arm.uses_ca and arm.uses_dm
    return max(int(arm.uses_dm) + (int(not shared) + 1 if arm.uses_ca else 0), 1)


def settings_from_config(cfg, gpu_gib: float | None = None, fsdp_teacher: str | None = None,
                         margin: float = DEFAULT_MARGIN, adamw: str | None = None) -> tuple[Settings, dict]:
    t, d = scale_settings(cfg.teacher, TEACHER_DEFAULTS, "teacher"), data_settings(cfg)  # no checkpoint needed
    for key in ("dtype", "text_dtype"):
        if t[key] is not None and t[key] not in DTYPE_BYTES:
            raise UserError(f"teacher.{key} must be one of {', '.join(DTYPE_BYTES)}, got {t[key]!r}.")
    fsdp_teacher = fsdp_teacher or cfg.parallel.fsdp_teacher  # the run's own key unless the plan is asked another
    if fsdp_teacher not in ("shard", "replicate"):
        raise UserError(f"fsdp_teacher must be shard or replicate, got {fsdp_teacher!r}.")
    gpus = world_size(cfg)
    s = Settings(batch=cfg.schedule.batch_size, teacher_queries=teacher_queries(cfg.arm), eval_batch=int(d["eval_batch"]),
                 teacher_dtype=t["dtype"], trained_dtype=cfg.optimisation.master_dtype, text_dtype=t["text_dtype"] or t["dtype"],
                 precision=str(cfg.parallel.precision), lora_rank=int(cfg.optimisation.lora.get("rank", 0)), train_fake=cfg.arm.train_fake,
                 strategy=strategy_kind(cfg, gpus), gpus=gpus, fsdp_teacher=fsdp_teacher,
                 gradient_checkpointing=cfg.optimisation.gradient_checkpointing, text_on_gpu=not d["precompute"],
                 gpu_gib=float(gpu_gib or DEFAULT_GPU_GIB), margin=margin, adamw=adamw or ADAMW_DEFAULT)
    return s, t


def memory_plan(cfg, gpu_gib: float | None = None, fsdp_teacher: str | None = None,
                margin: float = DEFAULT_MARGIN, model=None, adamw: str | None = None) -> dict:
    """The plan of a text-to-image run's config, as a JSON-ready dict: for the family's full-size
    architecture, or for ``model`` (a loaded TextToImage teacher: what a run holds); ``adamw``: the
    AdamW implementation to plan for (default ADAMW_DEFAULT, what the run builds)."""
    s, t = settings_from_config(cfg, gpu_gib, fsdp_teacher, margin, adamw)
    family = model.family if model is not None else t["family"]
    if family not in CHECKPOINTED:
        raise UserError(f"no memory plan for teacher.family {family!r}; known: {', '.join(sorted(CHECKPOINTED))}.")
    specs = model_specs(model) if model is not None else family_specs(family)
    if family == "sdxl":  # CLIP's context
        tokens = int(specs["text_encoders"][0]["max_position_embeddings"])
    else:
        tokens = int(t["max_length"] or DEFAULT_TEXT_TOKENS[family])
    targets = tuple(cfg.optimisation.lora.get("targets", DEFAULT_TARGETS)) if s.lora_rank else ()
    facts = architecture_facts(family, int(t["resolution"]), tokens, s.precision, s.lora_rank, targets, specs)
    c = components(facts, s)
    peak = peak_bytes(c)
    usable = s.gpu_gib * (1 - s.margin) * GIB
    return {
        "scale": cfg.run.scale, "family": family, "arm": cfg.arm.name,
        "architecture": "the run's checkpoint" if model is not None else f"experiments/architectures/{family}",
        "settings": asdict(s), "text_tokens": tokens, "resolution": int(t["resolution"]),
        "params": {"denoiser": facts.denoiser_params, "lora_adapter": facts.adapter_params,
                   "largest_block": facts.largest_block_params,
                   "text_encoders": [{"class": n, "params": p} for n, p in facts.text_encoder_params],
                   "vae": facts.vae_params},
        "bytes": c, "gib": {k: round(v / GIB, 2) for k, v in c.items()},
        "peak_gib": round(peak / GIB, 2), "training_gib": round(training_bytes(c) / GIB, 2),
        "step_gib": round(step_bytes(c) / GIB, 2),
        "gpu_gib": s.gpu_gib, "usable_gib": round(usable / GIB, 2),
        "fits": peak <= usable, "headroom_gib": round((usable - peak) / GIB, 2),
        "notes": notes(s, family),
    }


def notes(s: Settings, family: str) -> list[str]:
    """How the numbers were made, and where the code does not (yet) do what they assume."""
    classes, prefix = CHECKPOINTED[family]
    out = [
        "activations: an estimate. One trained forward of the real architecture on the meta device at the "
        "recipe's resolution, text length and compute dtype; the bytes autograd saves, weights excluded, "
        "attention as flash / memory-efficient SDPA keeps them (q, k, v, output, logsumexp). "
        + ("With gradient checkpointing: what lies outside the checkpointed blocks "
           f"({', '.join(classes)}{' under ' + prefix if prefix else ''}) + every block's input + one block's internals"
           if s.gradient_checkpointing else "Without gradient checkpointing: everything saved")
        + f"; measured at batch 1, times the batch ({s.batch}). Plus, for the teacher's batched no-grad call "
          f"({s.teacher_queries} x batch) while the generator's graph is held, one block's internals at that batch "
          "(pessimistic: a no-grad pass frees as it goes). Float32 norms and upcasts under autocast can add some.",
        "vae_decode: 3 x the decoder's largest activation x data.eval_batch, in the VAE's dtype; it happens "
        "between steps (no gradients then), so the peak takes the larger of it and a model's update.",
        "gradients: one trained model's at a time (the generator's update, then the fake's: the idle model is "
        "frozen, and each update ends with zero_grad(set_to_none=True)); the update adds the largest of its "
        "phases: the backward's activations, ddp's bucket, AdamW's step temporary.",
        ADAMW_NOTES[s.adamw],
        f"fits: peak <= {1 - s.margin:.0%} of {s.gpu_gib:g} GiB (the rest: CUDA context, workspaces, fragmentation).",
    ]
    teacher_dtype, trained_dtype = weight_dtypes(s)
    if trained_dtype in ("bfloat16", "float16"):
        out.append(f"trained weights in {trained_dtype} have no float32 master copy: AdamW updates smaller than "
                   "~1/256 of a weight (lr 5e-7 gives such updates) are rounded away.")
    if mixed_precision(s) and s.strategy != "fsdp":
        out.append("no autocast weight cache: Lightning's MixedPrecision runs torch.autocast(cache_enabled=False), "
                   "so a float32 weight's bf16 copy lives only while its op needs it.")
    if s.strategy == "fsdp":
        out.append(f"fsdp: every {' / '.join(classes)} is its own FSDP unit inside each model's FSDP root "
                   "(ddmd_lab/sharding.py PerBlockFSDP, auto_wrap_policy on these classes), so one block is "
                   "gathered at a time; its mixed precision gathers bf16 weights, so autocast has nothing to "
                   f"cast. Teacher: {s.fsdp_teacher}ed (fsdp_teacher).")
    return out


ADAMW_NOTES = {
    "foreach": "adamw: foreach, what the run builds (torch.optim.AdamW without foreach / fused: torch's default on "
               "CUDA); its step holds sqrt(exp_avg_sq) for every tensor at once, one model's size (adamw_step). "
               "fused=True would hold none: make plan ... --adamw fused.",
    "fused": "adamw: fused (torch.optim.AdamW(fused=True), one CUDA kernel, no model-sized temporary); the run builds "
             "the foreach one today (DistillModule.configure_optimizers), whose step adds one model's size.",
}


def mixed_precision(s: Settings) -> bool:
    """A Lightning *-mixed precision with a 16-bit compute dtype: autocast over float32 weights."""
    return str(s.precision).endswith("-mixed") and compute_bytes(s.precision) < 4


# ---- output -------------------------------------------------------------------------------------

def format_table(plan: dict) -> str:
    s = plan["settings"]
    lora = f"LoRA rank {s['lora_rank']}" if s["lora_rank"] else "full fine-tuning"
    head = (f"memory plan: {plan['scale']} ({plan['family']}), {lora}, {s['strategy']} on {s['gpus']} GPU(s), "
            f"batch {s['batch']}/GPU at {plan['resolution']} px, teacher {s['teacher_dtype']}, trained "
            f"{s['trained_dtype']}, {s['precision']}, gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, "
            f"AdamW {s['adamw']}")
    rows = [head, "", f"{'component':<16}{'GiB/GPU':>9}  what"]
    for key, what in DESCRIPTIONS.items():
        rows.append(f"{key:<16}{plan['gib'][key]:>9.2f}  {what}")
    verdict = "fits" if plan["fits"] else "DOES NOT FIT"
    rows += ["", f"{'update':<16}{plan['step_gib']:>9.2f}  one model's: gradients + max(activations + fsdp_gathered, "
             "ddp_buckets, adamw_step)",
             f"{'peak':<16}{plan['peak_gib']:>9.2f}  held (teacher .. optimizer, text encoders, VAE) + max(update, vae_decode)",
             f"{'training part':<16}{plan['training_gib']:>9.2f}  without text encoders, VAE, VAE decode "
             "(what make gpu-check measures)",
             f"{verdict}: {plan['peak_gib']:.2f} of {plan['usable_gib']:.2f} usable GiB "
             f"({plan['gpu_gib']:g} GiB GPU), headroom {plan['headroom_gib']:.2f} GiB", ""]
    rows += [f"- {n}" for n in plan["notes"]]
    return "\n".join(rows)


def write_plan(plan: dict, path: Path) -> bool:
    """Write the plan (atomically); True when it replaced an earlier plan (a derived file)."""
    path = Path(path)
    existed = path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(plan, indent=2) + "\n")
    return existed


def write_run_plan(cfg, run_dir: Path, model) -> None:
    """The run folder's memory_plan.json for ``model`` (the text-to-image teacher the run loaded; once per
    run folder).  Against the GPU's own memory when there is one.  A plan that cannot be made never stops
    the run."""
    path = Path(run_dir) / PLAN_FILE
    if path.exists():
        return
    try:
        gib = torch.cuda.get_device_properties(0).total_memory / GIB if torch.cuda.is_available() else None
        plan = memory_plan(cfg, gpu_gib=gib, model=model)
        if not plan["fits"]:
            warnings.warn(f"memory plan: {plan['peak_gib']} GiB per GPU against {plan['usable_gib']} usable; "
                          f"see {path} (make plan SCALE={cfg.run.scale}).", stacklevel=2)
    except Exception as exc:  # the plan is advice; the run goes on
        plan = {"scale": cfg.run.scale, "error": f"{exc.__class__.__name__}: {exc}"}
    write_plan(plan, path)
