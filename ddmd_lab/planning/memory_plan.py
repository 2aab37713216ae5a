"""Per-GPU memory of a text-to-image run, planned without a GPU (``make plan``).

The facts of the real architectures (parameters, the activation estimate) come
from architectures.py (full size on the meta device, no weights, no download).
What the run holds follows the code:

- full fine-tuning (lora.rank 0): the teacher, and the generator and fake as
  deep copies of it (module.py): the teacher in ``teacher.dtype``, the trained
  copies in ``master_dtype``, each with gradients and AdamW's two states
  (exp_avg, exp_avg_sq) in that dtype.
- LoRA (lora.rank > 0): one frozen base (the teacher) and two peft adapters on
  the ``lora.targets`` linears (lora.py), the adapters in ``master_dtype``.
- ``ddp``: everything replicated, plus one flattened bucket of the stepped model's
  gradients at a time (sharding.average_gradients; no DDP wrapper).  ``fsdp``:
  trained weights, gradients and optimiser states divided by the GPUs, the
  frozen teacher sharded or replicated (``fsdp_teacher``), plus the gathered
  block.  ``auto`` on one GPU: everything once.
- ``precision: bf16-mixed`` keeps float32 weights; torch.autocast caches the
  bf16 copy of every weight that requires grad for the whole training_step.
- frozen text encoders in ``teacher.text_dtype`` on the GPU unless prompts are
  precomputed (``data.precompute``); the VAE in ``teacher.dtype``, moved to the
  GPU for the evaluation grids.

The arithmetic (``components``) is separate from the meta instantiation
(``architectures.architecture_facts``) so that the tests check it against a
small model measured on the CPU.
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
    teacher_dtype, trained_dtype = weight_dtypes(s)
    tb, rb = DTYPE_BYTES[teacher_dtype], DTYPE_BYTES[trained_dtype]
    trained = f.adapter_params if s.lora_rank else f.denoiser_params  # one trained model's parameters
    n_trained = 2 if s.train_fake else 1
    shard = s.gpus if s.strategy == "fsdp" else 1
    teacher_shard = shard if s.fsdp_teacher == "shard" else 1
    mixed = str(s.precision).endswith("-mixed") and compute_bytes(s.precision) < 4
    return {
        "teacher": math.ceil(f.denoiser_params * tb / teacher_shard),
        "generator": math.ceil(trained * rb / shard),
        "fake": math.ceil(trained * rb / shard) if s.train_fake else 0,
        "gradients": math.ceil(n_trained * trained * rb / shard),
        "optimizer": math.ceil(2 * n_trained * trained * rb / shard),  # AdamW: exp_avg + exp_avg_sq
        "ddp_buckets": min(trained * rb, DDP_BUCKET_BYTES) if s.strategy == "ddp" else 0,
        # autocast keeps the low-precision copy of each float32 weight that requires grad
        "autocast_cache": n_trained * trained * compute_bytes(s.precision) if mixed and rb == 4 and s.strategy != "fsdp" else 0,
        # FSDP: one block gathered, the next prefetched, its unsharded gradient (compute dtype)
        "fsdp_gathered": 3 * f.largest_block_params * compute_bytes(s.precision) if s.strategy == "fsdp" else 0,
        "text_encoders": sum(n for _, n in f.text_encoder_params) * DTYPE_BYTES[s.text_dtype] if s.text_on_gpu else 0,
        "vae": f.vae_params * DTYPE_BYTES[s.teacher_dtype],  # the pipeline's dtype: not in the LightningModule
        "activations": training_activations(f.activations, s),
        # evaluation grids, between steps: input, output and one temporary of the largest layer
        "vae_decode": 3 * f.vae_decode_elements * DTYPE_BYTES[s.teacher_dtype] * s.eval_batch,
    }


STATIC = ("teacher", "generator", "fake", "gradients", "optimizer", "ddp_buckets", "autocast_cache",
          "text_encoders", "vae")


def peak_bytes(c: dict[str, int]) -> int:
    """Everything held, plus the larger transient: a training step's or an evaluation's decode."""
    return sum(c[k] for k in STATIC) + c["fsdp_gathered"] + max(c["activations"], c["vae_decode"])


# The training step's own part of the plan: the peak without the frozen text encoders, the VAE and
# its decode (a run with precomputed prompts between evaluations).  gpu_check.py loads neither text
# encoders nor a VAE, so this is what its measured peak compares with.
TRAINING = ("teacher", "generator", "fake", "gradients", "optimizer", "ddp_buckets", "autocast_cache",
            "fsdp_gathered", "activations")


def training_bytes(c: dict[str, int]) -> int:
    return sum(c[k] for k in TRAINING)


DESCRIPTIONS = {
    "teacher": "frozen teacher denoiser (LoRA: the shared base)",
    "generator": "generator weights (full copy or LoRA adapter)",
    "fake": "fake-model weights (full copy or LoRA adapter)",
    "gradients": "gradients of the trained weights",
    "optimizer": "AdamW exp_avg + exp_avg_sq",
    "ddp_buckets": "ddp: one all-reduce bucket of the stepped model's gradients",
    "autocast_cache": "autocast's bf16 copies of float32 trained weights",
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
                         margin: float = DEFAULT_MARGIN) -> tuple[Settings, dict]:
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
                 gpu_gib=float(gpu_gib or DEFAULT_GPU_GIB), margin=margin)
    return s, t


def memory_plan(cfg, gpu_gib: float | None = None, fsdp_teacher: str | None = None,
                margin: float = DEFAULT_MARGIN, model=None) -> dict:
    """The plan of a text-to-image run's config, as a JSON-ready dict: for the family's full-size
    architecture, or for ``model`` (a loaded TextToImage teacher: what a run holds)."""
    s, t = settings_from_config(cfg, gpu_gib, fsdp_teacher, margin)
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
        "between steps, so the peak takes the larger of it and the step's activations.",
        f"fits: peak <= {1 - s.margin:.0%} of {s.gpu_gib:g} GiB (the rest: CUDA context, workspaces, fragmentation).",
    ]
    teacher_dtype, trained_dtype = weight_dtypes(s)
    if trained_dtype in ("bfloat16", "float16"):
        out.append(f"trained weights in {trained_dtype} have no float32 master copy: AdamW updates smaller than "
                   "~1/256 of a weight (lr 5e-7 gives such updates) are rounded away.")
    if s.strategy == "fsdp":
        out.append(f"fsdp: every {' / '.join(classes)} is its own FSDP unit inside each model's FSDP root "
                   "(ddmd_lab/sharding.py PerBlockFSDP, auto_wrap_policy on these classes), so one block is "
                   "gathered at a time. Autocast's weight cache is not modelled under FSDP (its mixed precision "
                   f"gathers bf16 weights). Teacher: {s.fsdp_teacher}ed (fsdp_teacher).")
    return out


# ---- output -------------------------------------------------------------------------------------

def format_table(plan: dict) -> str:
    s = plan["settings"]
    lora = f"LoRA rank {s['lora_rank']}" if s["lora_rank"] else "full fine-tuning"
    head = (f"memory plan: {plan['scale']} ({plan['family']}), {lora}, {s['strategy']} on {s['gpus']} GPU(s), "
            f"batch {s['batch']}/GPU at {plan['resolution']} px, teacher {s['teacher_dtype']}, trained "
            f"{s['trained_dtype']}, {s['precision']}, gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}")
    rows = [head, "", f"{'component':<16}{'GiB/GPU':>9}  what"]
    for key, what in DESCRIPTIONS.items():
        rows.append(f"{key:<16}{plan['gib'][key]:>9.2f}  {what}")
    verdict = "fits" if plan["fits"] else "DOES NOT FIT"
    rows += ["", f"{'peak':<16}{plan['peak_gib']:>9.2f}  held + fsdp_gathered + max(activations, vae_decode)",
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
