"""``strategy=fsdp``: sharded data parallelism on torch's FSDP2 (``fully_shard``).

Teacher, generator and fake model are each their own FSDP root, and inside each every repeated block of
the family is its own unit (the class names of backbones/blocks.CHECKPOINTED: Z-Image / Lumina2
transformer blocks, SDXL's ResnetBlock2D and BasicTransformerBlock, which are also the CPU image UNet's
blocks).  Each parameter becomes a DTensor holding this rank's 1/world slice (dim 0); a forward gathers
one block at a time and each backward reduce-scatters only the gradients it computed (the idle model is
frozen during the other's update: DistillModule._frozen, which FSDP2 reads at each gather).  A backbone's
entry points (``x0``, ``features``) are registered with ``register_fsdp_forward_method``, so they gather
the root's own weights and finalise gradients as ``forward`` would.  ``fsdp_teacher: replicate`` keeps
the frozen teacher whole on every rank.  With LoRA the shared base is the one root (the adapters are
parameters of its blocks, so they shard with them; a backward reduce-scatters only the stepped adapter).

bf16-mixed: gathered weights in bfloat16, gradients reduced in float32 (``MixedPrecisionPolicy``), forward
inputs untouched (the adapters' x0 math stays float32 / float64); autocast is Lightning's.  Gradient
clipping takes the global norm over the DTensor gradients (torch's own norm of a DTensor list reduces over
the mesh) and over what sits outside FSDP (the discriminator head), which is averaged like ddp's.

Each forward gathers from every rank, so all ranks make the same calls: the backward simulation's k is
rank 0's everywhere (strategies.rank_zeros_draw), every rank runs the evaluation (EvalCallback) and
global rank 0 writes.  Checkpoints are torch.distributed.checkpoint folders, each rank writing and reading
its own shards (parallel/dcp_state.py).  Lightning's ModelParallelStrategy gives the process group (with
its timeout), the launcher and the order of setup; the sharding itself is this module's.
"""
from __future__ import annotations

from datetime import timedelta

import torch
from pytorch_lightning.strategies import ModelParallelStrategy
from torch import Tensor
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from ddmd_lab.backbones.blocks import CHECKPOINTED
from ddmd_lab.errors import UserError
from ddmd_lab.parallel.dcp_state import load_sharded, save_sharded
from ddmd_lab.parallel.gradients import average_gradients

BLOCKS = frozenset(name for classes, _ in CHECKPOINTED.values() for name in classes)
MODELS = ("teacher", "generator", "fake")
ENTRY_POINTS = ("x0", "features")  # what DistillModule calls on a backbone besides forward


def block_classes(backbone) -> set[type]:
    """The classes of ``backbone``'s repeated blocks (one FSDP unit each)."""
    found = {type(m) for m in backbone.modules() if type(m).__name__ in BLOCKS}
    if not found:
        raise UserError(f"strategy=fsdp shards a network block by block ({', '.join(sorted(BLOCKS))}); "
                        f"{type(backbone).__name__} has none of them (the toy MLP): use strategy=ddp.")
    return found


def shard_backbone(backbone, mesh, policy: MixedPrecisionPolicy) -> None:
    """Each block a unit (innermost first: fully_shard wants children before parents), then the
    backbone itself as the root holding what is left; its entry points go through FSDP's hooks."""
    classes = tuple(block_classes(backbone))
    for module in reversed(list(backbone.modules())):
        if isinstance(module, classes) and module is not backbone:
            fully_shard(module, mesh=mesh, mp_policy=policy)
    # the root reshards after each forward too (torch's default keeps a root gathered until its backward):
    # a no-grad forward (sampling, evaluation) would otherwise leave a gathered copy that the weight
    # average swapped into the shards (ema.applied), or a resumed checkpoint, never reaches
    fully_shard(backbone, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    for name in ENTRY_POINTS:
        register_fsdp_forward_method(backbone, name)


def shard_distill_models(module, mesh, policy: MixedPrecisionPolicy, fsdp_teacher: str) -> list[str]:
    """Shard a DistillModule's networks in place; returns the names of the roots.  With LoRA the three
    views share one base (``module.base``): it is the one root, and the views call through it."""
    base = getattr(module, "base", None)
    if base is not None:
        if fsdp_teacher == "replicate":
            raise UserError("fsdp_teacher=replicate keeps a whole teacher on every rank, but with LoRA the teacher "
                            "is the shared base the adapters live in: set fsdp_teacher=shard, or lora.rank=0.")
        shard_backbone(base, mesh, policy)
        # the views switch their adapters on by these tensors: fully_shard replaced each parameter by a DTensor
        adapters = {view.adapter for view in (module.generator, module.fake) if view is not None}
        module.generator.trainable[:] = [p for n, p in base.denoiser().named_parameters()
                                         if any(f".{a}." in n for a in adapters)]
        return ["base"]
    names = [n for n in MODELS if getattr(module, n, None) is not None and not (n == "teacher" and fsdp_teacher == "replicate")]
    for name in names:
        shard_backbone(getattr(module, name), mesh, policy)
    return names


def sharded_ids(module) -> set[int]:
    """Ids of the parameters held as shards (DTensors) in ``module`` (empty without FSDP)."""
    return {id(p) for p in module.parameters() if isinstance(p, DTensor)}


def clip_global(params: list, max_norm: float) -> Tensor:
    """torch.nn.utils.clip_grad_norm_ over parameters partly held as shards: the DTensor gradients'
    norm is taken over the mesh (torch's get_total_norm of DTensors, made whole by full_tensor),
    the replicated ones' (identical on every rank) once.  Returns the global norm, the same on
    every rank; the gradients are scaled in place, each rank its own part."""
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if isinstance(g, DTensor)]
    replicated = [g for g in grads if not isinstance(g, DTensor)]
    device = (sharded or replicated or [torch.zeros(())])[0].device
    squares = torch.zeros((), dtype=torch.float32, device=device)
    if sharded:
        squares = squares + torch.nn.utils.get_total_norm(sharded).full_tensor().float().square()
    if replicated:
        squares = squares + torch.nn.utils.get_total_norm(replicated).float().square()
    total = squares.sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:  # the local tensors: no collective, the coefficient is already global
        (g.to_local() if isinstance(g, DTensor) else g).mul_(coef.to(g.dtype))
    return total


class ShardedFSDP2(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy (process group, launcher, device mesh, setup order) with this
    harness's sharding (``shard``, called from DistillModule.configure_model), gradient reduction and
    sharded checkpoints (module docstring)."""

    evaluates_on_every_rank = True
    forwards_in_lockstep = True
    checkpoint_suffix = ".dcp"  # a folder of shards, not one .ckpt file (training/checkpointing.py)

    def __init__(self, fsdp_teacher: str = "shard", timeout_s: float = 1800.0):
        if fsdp_teacher not in ("shard", "replicate"):
            raise UserError(f"fsdp_teacher must be shard or replicate, got {fsdp_teacher!r}.")
        super().__init__(save_distributed_checkpoint=True, timeout=timedelta(seconds=timeout_s))
        self.fsdp_teacher = fsdp_teacher
        self.shard_mesh = None

    def setup_environment(self) -> None:
        super().setup_environment()  # the process group, and Lightning's (nodes, devices) mesh
        # one flat mesh over every rank: each tensor is split world-size ways
        self.shard_mesh = init_device_mesh(self.root_device.type, (self.world_size,), mesh_dim_names=("shard",))

    def mixed_precision_policy(self) -> MixedPrecisionPolicy:
        """bf16-mixed: gathered weights in bfloat16, gradients reduced in float32, inputs and buffers
        untouched.  Otherwise the weights' own dtype throughout."""
        if self.precision_plugin.precision == "bf16-mixed":
            return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)
        return MixedPrecisionPolicy(cast_forward_inputs=False)

    def shard(self, module) -> None:
        """Shard the DistillModule's networks (its configure_model hook calls this once per fit)."""
        if any(isinstance(m, FSDPModule) for m in module.modules()):
            return  # a second fit of the same module: already sharded
        shard_distill_models(module, self.shard_mesh, self.mixed_precision_policy(), self.fsdp_teacher)

    def reduce_and_clip(self, params: list, max_norm: float) -> Tensor:
        """After a manual backward: FSDP reduce-scattered the DTensor gradients; average the rest
        (the discriminator head) as ddp does, then clip by the global norm."""
        average_gradients([p for p in params if not isinstance(p, DTensor)], self.world_size)
        return clip_global(params, max_norm)

    # ---- checkpoints: each rank its own shards (parallel/dcp_state.py) ----------------------------
    def lightning_module_state_dict(self) -> dict:
        """The module's state as it is held: DTensor shards (no gather), replicated tensors whole."""
        return self.model.state_dict()

    def optimizer_state(self, optimizer) -> dict:
        return get_optimizer_state_dict(self.model, getattr(optimizer, "_optimizer", optimizer))

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        save_sharded(checkpoint, self.broadcast(str(filepath)), self.global_rank)

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        return load_sharded(self.broadcast(str(checkpoint_path)), self.model, self.optimizers)
