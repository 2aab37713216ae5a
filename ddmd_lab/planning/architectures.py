"""The real architectures at full size on the meta device (no weights, no download).

Their configs live in experiments/architectures/<family>/ (each names its source) or come
from a loaded checkpoint; here they are built on the meta device, their parameters counted
(denoiser, one LoRA adapter, the largest checkpointed block, text encoders, VAE), and one
trained forward pass tells how many bytes autograd keeps (the activation estimate).  The
memory plan (memory_plan.py) turns these facts into bytes per GPU.
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddmd_lab.backbones.blocks import CHECKPOINTED
from ddmd_lab.config import experiments_dir
from ddmd_lab.errors import UserError

DENOISER = {"sdxl": "unet", "zimage": "transformer", "lumina2": "transformer"}


def compute_bytes(precision: str) -> int:
    """Bytes of the compute dtype of a Lightning precision (bf16-mixed: 2)."""
    p = str(precision)
    return 8 if p.startswith("64") else 2 if p.startswith(("bf16", "16")) else 4


@dataclass(frozen=True)
class Activations:
    """What autograd keeps per sample in one trained forward of the denoiser (bytes, compute dtype),
    measured at batch 1 and scaled by the batch.  outside: saved outside the checkpointed blocks;
    boundaries: the blocks' inputs (what checkpointing keeps); block_max: the largest block's
    internals; blocks: all blocks' internals."""
    outside: int
    boundaries: int
    block_max: int
    blocks: int


@dataclass(frozen=True)
class Facts:
    """Counted on the real architecture (meta device)."""
    denoiser_params: int
    adapter_params: int = 0  # one LoRA adapter at the plan's rank and targets
    largest_block_params: int = 0  # the biggest checkpointed block: one FSDP unit under per-block wrapping
    text_encoder_params: tuple = ()  # (name, params) per frozen text encoder
    vae_params: int = 0
    activations: Activations | None = None  # None: not estimated
    vae_decode_elements: int = 0  # the VAE decoder's largest activation for one image


def architectures_dir() -> Path:
    return experiments_dir() / "architectures"


def family_specs(family: str) -> dict:
    """The family's full-size configs from experiments/architectures/<family>/ (denoiser, text encoders, VAE)."""
    folder = architectures_dir() / family
    if family not in CHECKPOINTED or not folder.is_dir():
        raise UserError(f"no memory plan for family {family!r}; known: {', '.join(sorted(CHECKPOINTED))}.")

    def read(name: str) -> dict:
        return json.loads((folder / f"{name}.json").read_text())

    return {"denoiser": read(DENOISER[family]), "vae": read("vae"),
            "text_encoders": [read(p.stem) for p in sorted(folder.glob("text_encoder*.json"))]}


def model_specs(model) -> dict:
    """The same, read from a loaded TextToImage teacher (what a run actually holds)."""
    def diffusers_spec(net) -> dict:
        return {"_library": "diffusers", "_class_name": type(net).__name__,
                **{k: v for k, v in dict(net.config).items() if not k.startswith("_")}}

    return {"denoiser": diffusers_spec(model.backbone.denoiser()), "vae": diffusers_spec(model.vae),
            "text_encoders": [{"_library": "transformers", "_class_name": type(m).__name__, **m.config.to_dict()}
                              for m in model.text_encoders]}


@contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loggers = [logging.getLogger(n) for n in ("diffusers", "transformers")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


def build_meta(spec: dict, dtype: str = "float32"):
    """The spec's class at full size on the meta device (no memory, no weights)."""
    kwargs = {k: v for k, v in spec.items() if not k.startswith("_")}
    with _quiet(), torch.device("meta"):
        if spec["_library"] == "diffusers":
            import diffusers  # deferred: diffusers takes seconds to import; only the real-model paths need it

            net = getattr(diffusers, spec["_class_name"])(**kwargs)
        else:
            import transformers  # deferred: transformers takes seconds to import; only the real-model paths need it

            cls = getattr(transformers, spec["_class_name"])
            net = cls(cls.config_class.from_dict(kwargs))
        if dtype != "float32":
            net = net.to(getattr(torch, dtype))
    return net


def count(module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def matches(name: str, targets) -> bool:
    """peft's rule for a list of target modules: the full name or its last dotted parts."""
    return any(name == t or name.endswith("." + t) for t in targets)


def adapter_params(net, rank: int, targets) -> int:
    """One LoRA adapter's parameters: A (rank x in) and B (out x rank) per targeted layer."""
    total = 0
    for name, m in net.named_modules():
        if not matches(name, targets):
            continue
        if isinstance(m, nn.Linear):
            total += rank * (m.in_features + m.out_features)
        elif isinstance(m, nn.Conv2d):  # A: a conv to rank channels, B: 1x1 conv back
            total += rank * m.in_channels // m.groups * math.prod(m.kernel_size) + rank * m.out_channels
        else:
            raise UserError(f"lora.targets {name!r} is a {type(m).__name__}; the plan counts Linear and Conv2d layers.")
    if rank and not total:
        raise UserError(f"no module of {type(net).__name__} matches lora.targets {list(targets)}.")
    return total


def checkpointed_blocks(net, family: str) -> list:
    classes, prefix = CHECKPOINTED[family]
    return [(n, m) for n, m in net.named_modules() if type(m).__name__ in classes and n.startswith(prefix)]


def denoiser_facts(net, family: str, lora_rank: int = 0, targets=()) -> Facts:
    blocks = checkpointed_blocks(net, family)
    return Facts(count(net), adapter_params(net, lora_rank, targets) if lora_rank else 0,
                 max((count(m) for _, m in blocks), default=0))


@contextmanager
def _flash_like_attention():
    """F.scaled_dot_product_attention that keeps what flash / memory-efficient attention keeps
    for backward on a GPU (q, k, v, output, logsumexp), not the attention matrix."""
    class FlashLike(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = q.new_empty(*q.shape[:-1], v.shape[-1])
            ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
            return out

        @staticmethod
        def backward(ctx, grad):  # never run: the forward pass is on the meta device
            raise NotImplementedError

    original = F.scaled_dot_product_attention

    def sdpa(query, key, value, *args, **kwargs):
        return FlashLike.apply(query, key, value)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _meta_forward(net, family: str, batch: int, side: int, tokens: int, dtype):
    """One forward of the denoiser on meta inputs shaped as the backbones call it."""
    def empty(*shape, dt=dtype):
        return torch.empty(*shape, device="meta", dtype=dt)

    c = net.config
    t = empty(batch, dt=torch.float32)  # as the adapters pass it (flow.timestep_input)
    if family == "sdxl":
        pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        return net(empty(batch, c.in_channels, side, side), t, encoder_hidden_states=empty(batch, tokens, c.cross_attention_dim),
                   added_cond_kwargs={"text_embeds": empty(batch, pooled), "time_ids": empty(batch, 6)}, return_dict=False)[0]
    if family == "zimage":
        return net([empty(c.in_channels, 1, side, side) for _ in range(batch)], t,
                   [empty(tokens, c.cap_feat_dim) for _ in range(batch)], return_dict=False)[0]
    # lumina2: its rotary embedder reads caption lengths from the mask's values, which meta tensors lack;
    # it runs on the CPU (all tokens valid: conditions are trimmed to the longest caption) and its
    # outputs move to the meta device
    rope = net.rope_embedder
    with torch.device("cpu"):
        rope.freqs_cis = rope._precompute_freqs_cis(rope.axes_dim, rope.axes_lens, rope.theta)
    real_forward = type(rope).forward

    def cpu_rope(hidden, mask):
        out = real_forward(rope, torch.zeros(hidden.shape, dtype=hidden.dtype), torch.ones(mask.shape, dtype=torch.bool))
        return tuple(o.to("meta") if torch.is_tensor(o) else o for o in out)

    rope.forward = cpu_rope
    try:
        return net(hidden_states=empty(batch, c.in_channels, side, side), timestep=t,
                   encoder_hidden_states=empty(batch, tokens, c.cap_feat_dim),
                   encoder_attention_mask=empty(batch, tokens, dt=torch.bool), return_dict=False)[0]
    finally:
        del rope.forward


def _storage(t) -> tuple[int, int]:
    s = t.untyped_storage()
    return s._cdata, s.nbytes()


def measure_saved(net, family: str, batch: int, side: int, tokens: int, dtype) -> tuple[int, int, int, int]:
    """(outside, boundaries, largest block, all blocks): bytes autograd saves in one forward,
    split by diffusers' checkpointed blocks (storages counted once; weights excluded)."""
    exclude = {_storage(p)[0] for p in net.parameters()} | {_storage(b)[0] for b in net.buffers()}
    saved: dict[int, tuple[int, str | None]] = {}
    boundary: dict[int, int] = {}
    where: list = [None]

    def enter(name):
        def hook(module, args, kwargs):
            for x in [*args, *kwargs.values()]:
                if torch.is_tensor(x):
                    key, nbytes = _storage(x)
                    if key not in exclude:
                        boundary.setdefault(key, nbytes)
            where[0] = name
        return hook

    def leave(module, args, kwargs, out):
        where[0] = None

    def pack(x):
        key, nbytes = _storage(x)
        if key not in exclude and key not in saved:
            saved[key] = (nbytes, where[0])
        return x

    handles = []
    for name, m in checkpointed_blocks(net, family):
        handles += [m.register_forward_pre_hook(enter(name), with_kwargs=True),
                    m.register_forward_hook(leave, with_kwargs=True)]
    try:
        with _quiet(), torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x), _flash_like_attention():
            _meta_forward(net, family, batch, side, tokens, dtype)
    finally:
        for h in handles:
            h.remove()
    per_block: dict = defaultdict(int)
    for nbytes, block in saved.values():
        if block is not None:
            per_block[block] += nbytes
    outside = sum(n for n, block in saved.values() if block is None)
    boundaries = sum(n for k, n in boundary.items() if not (k in saved and saved[k][1] is None))
    return outside, boundaries, max(per_block.values(), default=0), sum(per_block.values())


def vae_decode_elements(vae, side: int) -> int:
    """Elements of the VAE decoder's largest activation for one image (module outputs, meta device)."""
    largest = [0]

    def hook(module, args, out):
        if torch.is_tensor(out):
            largest[0] = max(largest[0], out.numel())

    handles = [m.register_forward_hook(hook) for m in vae.modules()]
    try:
        with _quiet(), torch.no_grad():
            p = next(vae.parameters())
            vae.decode(torch.empty(1, vae.config.latent_channels, side, side, device="meta", dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
    return largest[0]


def architecture_facts(family: str, resolution: int, text_tokens: int, precision: str, lora_rank: int = 0,
                       targets: tuple = (), specs: dict | None = None) -> Facts:
    """Facts of the real architecture (the family's full-size configs unless ``specs`` are given),
    built on the meta device: a few seconds at full size."""
    specs = specs or family_specs(family)
    return _facts(json.dumps(specs, sort_keys=True), family, resolution, text_tokens, precision, lora_rank,
                  tuple(targets))


@lru_cache(maxsize=16)
def _facts(specs_json: str, family: str, resolution: int, text_tokens: int, precision: str, lora_rank: int,
           targets: tuple) -> Facts:
    specs = json.loads(specs_json)
    vae = build_meta(specs["vae"])
    side = resolution // 2 ** (len(vae.config.block_out_channels) - 1)
    compute = {2: "bfloat16", 4: "float32", 8: "float64"}[compute_bytes(precision)]
    net = build_meta(specs["denoiser"], compute)
    facts = denoiser_facts(net, family, lora_rank, targets)
    if lora_rank:  # the real adapter on the meta net: the frozen base saves less (no weight gradients)
        from peft import LoraConfig  # deferred: peft pulls in transformers; only LoRA paths need it

        with _quiet():
            net.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=list(targets)), adapter_name="generator")
        net.requires_grad_(False)
        for n, p in net.named_parameters():
            p.requires_grad_(".generator." in n)
    dtype = getattr(torch, compute)
    acts = Activations(*measure_saved(net, family, 1, side, text_tokens, dtype))
    texts = tuple((spec["_class_name"], count(build_meta(spec))) for spec in specs["text_encoders"])
    return Facts(facts.denoiser_params, facts.adapter_params, facts.largest_block_params, texts, count(vae),
                 acts, vae_decode_elements(vae, side))
