"""LoRA + gradient checkpointing: the same gradients as without checkpointing.

The generator, the fake model and the teacher share one diffusers network; a
checkpointed block is recomputed during backward, when another adapter (or
none) is on, so it must be recomputed with the adapter its forward had.  LoRA's
B starts at zero (every view is then the teacher and the bug invisible), so the
adapters get random B here.
"""
import copy

import pytest
import torch

from ddmd_lab.core.arms import REGISTRY
from ddmd_lab.config import RunConfig
from ddmd_lab.training.module import DistillModule

from .tiny_models import sdxl_alphas_cumprod, tiny_lumina2_transformer, tiny_sdxl_unet, tiny_zimage_transformer

ATOL, RTOL = 1e-6, 1e-5


def _zimage():
    from ddmd_lab.backbones.zimage import Captions, ZImageBackbone

    net = ZImageBackbone(tiny_zimage_transformer(), torch.randn(3, 16), (16, 8, 8))
    return net, lambda: Captions([torch.randn(3, 16), torch.randn(5, 16)]), {}


def _lumina2():
    from ddmd_lab.backbones.lumina2 import Lumina2Backbone, PaddedText

    null = PaddedText(torch.randn(1, 3, 32), torch.ones(1, 3, dtype=torch.bool))
    net = Lumina2Backbone(tiny_lumina2_transformer(), null, (4, 16, 16))
    return net, lambda: PaddedText(torch.randn(2, 4, 32), torch.ones(2, 4, dtype=torch.bool)), {}


def _sdxl():
    from ddmd_lab.backbones.sdxl import SDXLBackbone, SDXLCondition

    ids = torch.tensor([[32.0, 32, 0, 0, 32, 32]])
    null = SDXLCondition(torch.zeros(1, 7, 64), torch.zeros(1, 32), ids)
    net = SDXLBackbone(tiny_sdxl_unet(), sdxl_alphas_cumprod(), null, (4, 32, 32))
    return net, lambda: SDXLCondition(torch.randn(2, 7, 64), torch.randn(2, 32), ids.repeat(2, 1)), {}


_BASES = {}


def _base(family):
    """One teacher per family (built once); each run gets a copy."""
    if family not in _BASES:
        torch.manual_seed(0)
        _BASES[family] = family()
    return _BASES[family]


def _module(family, arm, checkpointing: bool) -> tuple[DistillModule, object]:
    teacher, make_cond, lora = _base(family)
    teacher = copy.deepcopy(teacher)
    times = []
    if family is _sdxl:  # VP models cannot start at t = 0
        from ddmd_lab.core.flow import t_from_ddpm_timestep

        times = t_from_ddpm_timestep(torch.tensor([999, 499]), sdxl_alphas_cumprod()).tolist()
    cfg = RunConfig.of(arm=arm, ttur=1, batch_size=2, student_steps=2, alpha=4.0, wandb="disabled", grad_clip=1e9,
                    lora={"rank": 2, **lora}, gradient_checkpointing=checkpointing, student_times=times)
    torch.manual_seed(1)  # the discriminator head's initialisation
    module = DistillModule(teacher, cfg).train()
    torch.manual_seed(2)
    with torch.no_grad():  # adapters that matter: B != 0 (peft starts it at zero)
        for name, p in module.base.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    module.manual_backward = lambda loss: loss.backward()  # no trainer here
    return module, make_cond


class _Recorder:
    """Stands in for an optimiser: zero_grad as AdamW's; step records every trainable gradient."""

    def __init__(self, module: DistillModule, params: list, phase: str, out: dict):
        self.module, self.params, self.phase, self.out = module, params, phase, out

    def zero_grad(self, set_to_none: bool = True):
        for p in self.params:
            p.grad = None

    def step(self):
        for n, p in self.module.named_parameters():
            if not ("lora_" in n or n.startswith("disc.")):
                continue
            self.out[f"{self.phase}/{n}"] = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()


def _step_gradients(family, arm, checkpointing: bool) -> dict:
    """Every trainable gradient of one generator step and one critic step (same seeds)."""
    module, make_cond = _module(family, arm, checkpointing)
    grads: dict = {}
    torch.manual_seed(4)  # on Z-Image: the student's step k = 1 (a rollout first, tau_CA above t > 0)
    cond = make_cond()
    real = torch.randn(len(cond), *module.generator.sample_shape)
    logs: dict = {}
    gen_opt = _Recorder(module, list(module.generator.parameters()), "generator", grads)
    sample = module._generator_step(cond, gen_opt, logs)
    if module.fake is not None:
        module._critic_step(cond, sample, _Recorder(module, module._critic_params(), "critic", grads), logs, real)
    assert module.skipped_steps == 0
    return grads


def _assert_same(on: dict, off: dict) -> None:
    assert on.keys() == off.keys() and on
    worst = max((on[k] - off[k]).abs().max().item() for k in on)
    for k in on:
        torch.testing.assert_close(on[k], off[k], atol=ATOL, rtol=RTOL,
                                   msg=lambda m: f"{k}: {m} (max diff {worst:.3g})")
    assert any(v.abs().max() > 0 for k, v in off.items() if ".generator." in k)  # the generator's adapter learns


# GAN arms read the fake's features() (the hidden states after the main blocks, the forward stopped
# there); the generator's GAN loss then goes through the fake's adapter
CASES = [(_zimage, name) for name in REGISTRY]
CASES += [(_lumina2, "decoupled_hybrid"), (_sdxl, "decoupled_hybrid"), (_sdxl, "ca_only"), (_lumina2, "dmd2"),
          (_sdxl, "dmd2")]


@pytest.mark.parametrize("family,arm", CASES, ids=[f"{f.__name__[1:]}-{a}" for f, a in CASES])
def test_one_step_gradients_do_not_depend_on_checkpointing(family, arm):
    off = _step_gradients(family, REGISTRY[arm], False)
    on = _step_gradients(family, REGISTRY[arm], True)
    _assert_same(on, off)


def test_two_adapters_and_the_teacher_in_one_graph():
    """The generator's output through the fake model and the teacher, with grad, one graph
    (backpropagated twice: a second backward recomputes the blocks again)."""

    def grads(checkpointing):
        module, make_cond = _module(_zimage, REGISTRY["decoupled_hybrid"], checkpointing)
        torch.manual_seed(3)
        cond = make_cond()
        x = torch.randn(len(cond), *module.generator.sample_shape)
        t, tau = torch.tensor([0.2, 0.6]), torch.tensor([0.5, 0.9])
        g = module.generator.x0(x, t, cond)
        loss = module.fake.x0(g, tau, cond).square().mean() + module.teacher.x0(g, tau, cond).square().mean()
        loss.backward(retain_graph=True)
        loss.backward()
        return {n: p.grad.clone() for n, p in module.base.named_parameters() if "lora_" in n}

    _assert_same(grads(True), grads(False))


@pytest.mark.parametrize("family", [_sdxl, _zimage], ids=["sdxl", "zimage"])
def test_a_generator_step_switches_adapters_per_view_call_not_per_recomputed_block(family):
    """A switch walks the whole network in Python (diffusers' enable_adapters / set_adapter: ~0.1-0.4 s on
    SDXL's 9,200 modules), so its count must not grow with the checkpointed blocks: recomputing each block
    with its adapter and switching back after it made two per block in every generator step's backward."""
    from ddmd_lab.planning.architectures import checkpointed_blocks

    module, make_cond = _module(family, REGISTRY["decoupled_hybrid"], True)
    net = module.base.denoiser()
    blocks = len(checkpointed_blocks(net, {_sdxl: "sdxl", _zimage: "zimage"}[family]))
    switches, calls = [], []
    for name in ("set_adapter", "disable_adapters"):
        original = getattr(net, name)
        setattr(net, name, lambda *a, _f=original, _n=name, **k: (switches.append(_n), _f(*a, **k))[1])
    for view in (module.generator, module.fake, module.teacher):
        view_x0 = view.x0
        view.x0 = lambda *a, _f=view_x0, **k: (calls.append(1), _f(*a, **k))[1]
    torch.manual_seed(4)
    cond = make_cond()
    module._generator_step(cond, _Recorder(module, list(module.generator.parameters()), "generator", {}), {})
    # the views' calls: the rollout's generator calls, the generator, the teacher, the fake; then the backward's
    # recomputation switches back to the generator once
    assert blocks >= 3 and len(calls) >= 3
    assert len(switches) <= len(calls) + 1, (switches, blocks)
