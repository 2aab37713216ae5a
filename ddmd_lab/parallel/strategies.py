"""Data parallelism for a distillation run: what each rank holds, and which gradients travel.

A training step makes up to two manual backward passes, each followed by one optimiser's step
(DistillModule._update): the generator's, then the fake model's (+ discriminator head).  A single
DistributedDataParallel wrapper around the whole module all-reduces every trained tensor in each
backward -- the idle model's zero gradients too, twice the traffic -- and needs
find_unused_parameters to get through a backward that leaves a model out.  Here instead:

``ddp`` (PerOptimizerDDP): no wrapper.  Every rank holds everything; after each manual backward
    exactly the stepped optimiser's gradients are averaged over the ranks, in coalesced all-reduces
    of at most BUCKET_BYTES (``average_gradients``).  The same with LoRA, where both adapters live
    in one base network: only the stepped adapter's tensors travel.  No overlap of communication
    with the backward (DDP's buckets overlap); for full fine-tuning at scale, use fsdp.
``fsdp`` (PerBlockFSDP): the teacher, the generator and the fake model are each their own FSDP root,
    and inside each every repeated block of the family is its own unit (the class names of
    backbones/blocks.CHECKPOINTED: Z-Image / Lumina2 transformer blocks, SDXL's ResnetBlock2D and
    BasicTransformerBlock, which are also the CPU image UNet's blocks), so a forward gathers one
    block at a time and each backward reduce-scatters only the models it went through (the idle
    model is frozen during the other's update: DistillModule._frozen).  ``fsdp_teacher: replicate``
    keeps the frozen teacher whole on every rank instead.  A backbone's calls (x0, features) run
    through its root's forward (ShardedBackbone), which is where FSDP gathers the root's own
    weights and, after a backward, finalises the gradients for the optimiser.  Gradient clipping
    takes the global norm over the shards (``clip_global``); trained tensors outside FSDP (the
    discriminator head) are averaged like ddp's.  Each forward gathers from every rank, so all
    ranks make the same calls: the backward simulation's step index k is rank 0's on every rank
    (``rank_zeros_draw``), and every rank takes part in evaluation (EvalCallback); global rank 0
    writes.  Checkpoints are Lightning's full state dict and optimiser states, gathered on rank 0
    without the frozen teacher.
    Not with LoRA (refused in config.py): the adapters sit inside the frozen base's flat
    parameters, so every backward would reduce-scatter a gradient buffer the size of the base.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from lightning_fabric.strategies.fsdp import \
    _get_full_state_dict_context  # no public route in Lightning's FSDP1 strategy
from pytorch_lightning.core.optimizer import LightningOptimizer
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy
from torch import Tensor
from torch.distributed.fsdp import (FullOptimStateDictConfig, FullStateDictConfig, FullyShardedDataParallel,
                                    MixedPrecision, OptimStateKeyType, StateDictType)
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from ddmd_lab.backbones.blocks import CHECKPOINTED
from ddmd_lab.errors import UserError

# DDP's default bucket_cap_mb (25): gradients are all-reduced in flattened buckets this big; the memory plan counts one
BUCKET_BYTES = 25 * 2 ** 20
BLOCKS = frozenset(name for classes, _ in CHECKPOINTED.values() for name in classes)
MODELS = ("teacher", "generator", "fake")


def make_strategy(parallel):
    """Lightning's strategy for the config's parallel section (config.Parallel): ``ddp`` (and ``auto`` on several
    devices, where Lightning would pick DDP) -> PerOptimizerDDP, ``fsdp`` -> PerBlockFSDP; anything else goes to
    Lightning as named."""
    s = str(parallel.strategy)
    if s == "ddp" or (s == "auto" and _several_devices(parallel)):
        return PerOptimizerDDP()
    if s == "fsdp":
        return PerBlockFSDP(fsdp_teacher=parallel.fsdp_teacher)
    return s


def _several_devices(parallel) -> bool:
    return parallel.num_nodes > 1 or not (parallel.devices in (1, "1") or parallel.devices == [0])


# ---- gradients -------------------------------------------------------------------------------------

def average_gradients(params: list, world_size: int, bucket_bytes: int = BUCKET_BYTES) -> None:
    """Average the gradients of ``params`` over the ranks: one all-reduce per bucket of up to
    ``bucket_bytes`` (consecutive gradients of one dtype and device, flattened).  Parameters
    without a gradient are left out (the same ones on every rank: every rank runs the same code)."""
    grads = [p.grad for p in params if p.grad is not None]
    if world_size <= 1 or not grads:
        return
    bucket: list[Tensor] = []
    size = 0
    for g in grads:
        if bucket and (size + g.numel() * g.element_size() > bucket_bytes
                       or (g.dtype, g.device) != (bucket[0].dtype, bucket[0].device)):
            _all_reduce_mean(bucket, world_size)
            bucket, size = [], 0
        bucket.append(g)
        size += g.numel() * g.element_size()
    _all_reduce_mean(bucket, world_size)


def _all_reduce_mean(grads: list[Tensor], world_size: int) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat.div_(world_size)
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def clip_global(params: list, max_norm: float, sharded: set) -> Tensor:
    """torch.nn.utils.clip_grad_norm_ over parameters partly held as shards: the squared norms of
    the local shards (ids in ``sharded``) are summed over the ranks, those of replicated tensors
    (identical on every rank) counted once.  Returns the global norm, the same on every rank."""
    grads = [p.grad for p in params if p.grad is not None]
    device = params[0].device
    shards, replicated = torch.zeros((), device=device), torch.zeros((), device=device)
    for p in params:
        if p.grad is not None:
            square = torch.linalg.vector_norm(p.grad, dtype=torch.float32).square()
            if id(p) in sharded:
                shards += square
            else:
                replicated += square
    torch.distributed.all_reduce(shards)  # on every rank, even one whose shards are all empty
    total = (shards + replicated).sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype))
    return total


def reduce_and_clip(strategy, params: list, max_norm: float) -> Tensor:
    """After a manual backward: average what no wrapper averaged, clip by the global norm."""
    if isinstance(strategy, (PerOptimizerDDP, PerBlockFSDP)):
        return strategy.reduce_and_clip(params, max_norm)
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def rank_zeros_draw(strategy, k: int, device) -> int:
    """``k`` of global rank 0 on every rank, where the strategy runs forwards in lockstep (FSDP: each
    forward gathers with every rank, so all must make the same number of calls: the backward
    simulation's k).  Elsewhere each rank keeps its own draw."""
    if not getattr(strategy, "forwards_in_lockstep", False) or strategy.world_size == 1:
        return k
    value = torch.tensor(k, dtype=torch.int64, device=device)
    torch.distributed.broadcast(value, src=0)
    return int(value.item())


# ---- ddp ---------------------------------------------------------------------------------------------

class PerOptimizerDDP(DDPStrategy):
    """DDP without the DistributedDataParallel wrapper: the module's _update averages the stepped
    optimiser's gradients (reduce_and_clip).  Evaluation stays on global rank 0."""

    evaluates_on_every_rank = False
    forwards_in_lockstep = False

    def configure_ddp(self) -> None:
        # what the wrapper's construction did: every rank starts from rank 0's trained weights
        if self.world_size > 1:
            for p in self.lightning_module.parameters():
                if p.requires_grad:
                    torch.distributed.broadcast(p.data, src=0)

    def reduce_and_clip(self, params: list, max_norm: float) -> Tensor:
        average_gradients(params, self.world_size)
        return torch.nn.utils.clip_grad_norm_(params, max_norm)  # identical gradients: the global norm


# ---- fsdp ----------------------------------------------------------------------------------------

class ShardedBackbone(FullyShardedDataParallel):
    """An FSDP root around a Backbone whose calls (x0, features) run through the root's forward:
    that is where FSDP gathers the root's own weights, registers the hooks that finalise gradients
    after a backward, and resets its state.  Other attributes reach the backbone (FSDP's __getattr__)."""

    def _through_forward(self, name: str, *args, **kwargs):
        inner = self._fsdp_wrapped_module
        method = getattr(inner, name)

        def forward(*a, **kw):
            del inner.forward  # the module's own forward again, should the method call it
            return method(*a, **kw)

        inner.forward = forward
        try:
            return self(*args, **kwargs)
        finally:
            inner.__dict__.pop("forward", None)

    def x0(self, *args, **kwargs):
        return self._through_forward("x0", *args, **kwargs)

    def features(self, *args, **kwargs):
        return self._through_forward("features", *args, **kwargs)


def block_classes(backbone) -> set[type]:
    """The classes of ``backbone``'s repeated blocks (one FSDP unit each)."""
    found = {type(m) for m in backbone.modules() if type(m).__name__ in BLOCKS}
    if not found:
        raise UserError(f"strategy=fsdp shards a network block by block ({', '.join(sorted(BLOCKS))}); "
                        f"{type(backbone).__name__} has none of them (the toy MLP): use strategy=ddp.")
    return found


class PerBlockFSDP(FSDPStrategy):
    """Lightning's FSDPStrategy with one FSDP root per model and one unit per block (module docstring)."""

    evaluates_on_every_rank = True
    forwards_in_lockstep = True

    def __init__(self, fsdp_teacher: str = "shard", **kwargs):
        if fsdp_teacher not in ("shard", "replicate"):
            raise UserError(f"fsdp_teacher must be shard or replicate, got {fsdp_teacher!r}.")
        super().__init__(use_orig_params=True, **kwargs)
        self.fsdp_teacher = fsdp_teacher
        self._sharded: set[int] = set()

    @property
    def mixed_precision_config(self):
        """bf16-mixed / 16-mixed: gathered weights in the compute dtype, gradients reduced in float32,
        buffers and forward inputs untouched (the adapters' x0 math stays float32 / float64).
        Lightning's own config reduces in bf16 and casts inputs and buffers."""
        precision = self.precision_plugin.precision
        if precision in ("bf16-mixed", "16-mixed"):
            dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
            return MixedPrecision(param_dtype=dtype, reduce_dtype=torch.float32, cast_root_forward_inputs=False)
        return None

    def setup(self, trainer) -> None:
        plugin = self.precision_plugin
        if plugin.precision == "32-true":
            # Lightning's FSDP plugin casts the whole module to float32 here (a bfloat16 teacher
            # too); the other strategies' 32-true casts nothing
            plugin.convert_module = lambda module: module
        if plugin.precision == "bf16-mixed" and self.root_device.type == "cpu":
            # its autocast is CUDA's; on CPU ranks (the tests) the gathered bf16 weights need CPU's
            plugin.forward_context = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
        super().setup(trainer)

    def _setup_model(self, model):
        """Wrap teacher / generator / fake of the DistillModule in place; the module itself stays
        unwrapped (its training_step runs as it does on one device)."""
        names = [n for n in MODELS if getattr(model, n, None) is not None]
        if self.fsdp_teacher == "replicate":
            names.remove("teacher")
        common = dict(sharding_strategy=self.sharding_strategy, cpu_offload=self.cpu_offload,
                      mixed_precision=self.mixed_precision_config, device_id=self.root_device,
                      **{k: v for k, v in self.kwargs.items() if k != "auto_wrap_policy"})
        for name in names:
            backbone = getattr(model, name)
            setattr(model, name, ShardedBackbone(backbone, auto_wrap_policy=ModuleWrapPolicy(block_classes(backbone)),
                                                 **common))
        self._sharded = {id(p) for n in names for p in getattr(model, n).parameters()}
        _move_outside_fsdp(model, self.root_device)  # the discriminator head, a replicated teacher, buffers
        return model

    def reduce_and_clip(self, params: list, max_norm: float) -> Tensor:
        average_gradients([p for p in params if id(p) not in self._sharded], self.world_size)
        return clip_global(params, max_norm, self._sharded)

    def optimizer_state(self, optimizer) -> dict:
        """Lightning's full optimiser state (rank 0, keyed by parameter id), gathered without CPU
        offloading on a CPU device: torch gathers every state of a parameter into one reused buffer
        and offloads with ``.cpu()``, which copies nothing on a CPU, so each state would alias the
        last (exp_avg saved as exp_avg_sq); without offloading it clones."""
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        if self._state_dict_type != "full":
            return super().optimizer_state(optimizer)
        offload = self.root_device.type != "cpu"
        with FullyShardedDataParallel.state_dict_type(
                self.model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=offload, rank0_only=True),
                FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=True)):
            state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:
                state = FullyShardedDataParallel.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
        return state

    def lightning_module_state_dict(self) -> dict:
        """Lightning's full state dict (rank 0), except a sharded frozen teacher, which checkpoints
        leave out anyway (DistillModule.on_save_checkpoint): it is not gathered to be dropped."""
        model = self.model
        skip = {"teacher"} if isinstance(getattr(model, "teacher", None), ShardedBackbone) else set()
        state: dict = OrderedDict()
        with _get_full_state_dict_context(model, world_size=self.world_size):
            model._save_to_state_dict(state, "", False)
            for name, child in model.named_children():
                if name not in skip:
                    child.state_dict(destination=state, prefix=f"{name}.")
        return state


def _move_outside_fsdp(module, device) -> None:
    """What FSDP did not place on ``device`` (FSDPStrategy.model_to_device moves nothing)."""
    if isinstance(module, FullyShardedDataParallel):
        return
    for key, p in module._parameters.items():
        if p is not None and p.device != device:
            p.data = p.data.to(device)
    for key, b in module._buffers.items():
        if b is not None and b.device != device:
            module._buffers[key] = b.to(device)
    for child in module.children():
        _move_outside_fsdp(child, device)


def sharded_ids(module) -> set[int]:
    """Ids of the parameters FSDP holds as shards in ``module`` (empty without FSDP)."""
    return {id(p) for m in module.modules() if isinstance(m, ShardedBackbone) for p in m.parameters()}
