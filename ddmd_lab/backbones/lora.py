"""One frozen base, two LoRA adapters (peft): the memory plan for real models.

Three full copies (teacher, generator, fake) of a 6B-parameter transformer do
not fit where one does.  Here the teacher's diffusers network gets two LoRA
adapters, ``generator`` and ``fake``; the teacher is that network with the
adapters switched off.  LoRA's B matrices start at zero, so at step 0 all
three views compute exactly the teacher, as the full-copy recipe does.

Each view activates its adapter right before each call, so the order of
calls in a step never matters; autograd keeps what each call computed.  With
gradient checkpointing a block's forward runs again during backward, when
another adapter (or none) is on: ``AdapterSwitch.checkpoint`` recomputes each
block with the adapter its forward had.

Switching is host time: diffusers' enable_adapters / set_adapter walk every
module of the network (SDXL's UNet: ~9,200 modules, 0.1-0.4 s per switch on a
CPU core), so a view switches only when another view is on (``AdapterSwitch.active``
knows), and a recomputed block leaves its adapter on: the next block recomputed
in the same backward needs the same one, and every view call switches to itself.
Restoring after each block made two switches per checkpointed block in every
generator step's backward (SDXL: 87 blocks, ~175 switches: seconds per step).
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from ddmd_lab.errors import UserError

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # diffusers' attention projections (UNets and DiTs)


class AdapterSwitch:
    """Which view has the shared network now (the last one activated), and the
    gradient checkpointing function that network needs."""

    def __init__(self):
        self.active: AdapterView | None = None

    def checkpoint(self, block, *args, **kwargs):
        """diffusers' ``gradient_checkpointing_func``: non-reentrant checkpointing whose
        recomputation (during backward) runs with the adapter that was on in the forward
        (and leaves it on)."""
        context = _RecomputeWith(self, self.active)
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False,
                                                 context_fn=lambda: (contextlib.nullcontext(), context), **kwargs)


class _RecomputeWith:
    """A reusable context (a second backward through one graph recomputes again).  ``owner`` None: the
    forward ran before any view switched the network (a direct call of the backbone): nothing to switch."""

    def __init__(self, switch: AdapterSwitch, owner: "AdapterView | None"):
        self.switch, self.owner = switch, owner

    def __enter__(self):
        if self.owner is not None:
            self.owner._activate()  # no switch when its adapter is on already

    def __exit__(self, *exc):
        return False


class AdapterView:
    """The backbone interface with one adapter active (``None``: all off, the teacher).

    Not an nn.Module: the shared base is registered once (as DistillModule.base),
    so checkpoints hold one copy of it; ``parameters()`` yields this adapter's
    weights only, which is what its optimiser and gradient clipping need.
    """

    def __init__(self, backbone: nn.Module, adapter: str | None, trainable: list | None = None,
                 switch: AdapterSwitch | None = None):
        self.backbone, self.adapter, self.trainable = backbone, adapter, trainable or []
        self.switch = switch or AdapterSwitch()

    def _activate(self) -> None:
        if self.switch.active is not self:  # every switch of the shared network goes through here
            net = self.backbone.denoiser()
            if self.adapter is None:
                net.disable_adapters()
            else:
                net.enable_adapters()
                net.set_adapter(self.adapter)
            self.switch.active = self
        # peft's switches also set requires_grad (inactive adapters off); autograd then drops the
        # gradients of a graph built earlier in the step, so every adapter stays trainable here
        # (each call: DistillModule._frozen turns the idle model's off for a step; cheap)
        for p in self.trainable:
            p.requires_grad_(True)

    def x0(self, *args, **kwargs):
        self._activate()
        return self.backbone.x0(*args, **kwargs)

    def features(self, *args, **kwargs):
        self._activate()
        return self.backbone.features(*args, **kwargs)

    def parameters(self):
        if self.adapter is None:
            return iter(())
        return (p for n, p in self.backbone.denoiser().named_parameters() if f".{self.adapter}." in n)

    # the module's mode and gradient switches concern the shared base: handled by DistillModule
    def train(self, mode: bool = True):
        return self

    def eval(self):
        return self

    def requires_grad_(self, flag: bool = True):
        return self

    def __getattr__(self, name):  # sample_shape, null_condition, cat_conditions, ...
        return getattr(self.backbone, name)


@dataclass(frozen=True)
class LoraPlan:
    rank: int
    alpha: float
    targets: tuple[str, ...]


def shared_base_views(backbone: nn.Module, plan: LoraPlan, adapters: tuple[str, ...]) -> dict[str, AdapterView]:
    """Add one LoRA adapter per name to the backbone's diffusers network (frozen base) and
    return a view per adapter plus ``teacher`` (adapters off)."""
    from peft import LoraConfig  # deferred: peft pulls in transformers; only LoRA paths need it

    net = backbone.denoiser()
    check_targets(net, plan.targets)
    backbone.requires_grad_(False)
    for name in adapters:
        net.add_adapter(LoraConfig(r=plan.rank, lora_alpha=plan.alpha, target_modules=list(plan.targets),
                                   init_lora_weights=True), adapter_name=name)
    trainable = [p for name in adapters for p in AdapterView(backbone, name).parameters()]
    switch = AdapterSwitch()
    views = {name: AdapterView(backbone, name, trainable, switch) for name in (*adapters, None)}
    views["teacher"] = views.pop(None)
    for p in trainable:
        p.requires_grad_(True)
    return views


def check_targets(net: nn.Module, targets) -> None:
    """Every lora.targets name must match a module of ``net`` as peft matches them (the full name, or
    its end after a dot): peft skips a name that matches nothing, and that layer would silently stay frozen."""
    names = [n for n, _ in net.named_modules() if n]
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        counts = Counter(n.rsplit(".", 1)[-1] for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
        leaves = [name for name, _ in counts.most_common() if not name.isdigit()]
        raise UserError(f"lora.targets {unmatched} match no module of {type(net).__name__} (its linear / conv layers "
                        f"end in e.g. {', '.join(leaves[:8])}); name those, e.g. "
                        "SET=\"lora={rank: 16, targets: [to_q, to_k, to_v, to_out.0]}\".")


def held_parameters(module: nn.Module) -> int:
    """Distinct parameters a module holds (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
