"""Each transient term of the memory plan against a tiny run measured on the CPU: one trained
model's gradients at a time (a real DistillModule fit), AdamW's step temporary (foreach: one
model's size; fused: none), and no autocast weight cache under Lightning's bf16-mixed.  Bytes
are counted from the tensors themselves or from torch's allocator (tests/memory_probe.py)."""
import pytest
import pytorch_lightning as pl
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ddmd_lab.config import RunConfig
from ddmd_lab.core.arms import REGISTRY
from ddmd_lab.planning.architectures import denoiser_facts
from ddmd_lab.planning.memory_plan import ADAMW_DEFAULT, Settings, adamw_variant, components

from .memory_probe import allocations, tensor_bytes
from .tiny_models import tiny_zimage_transformer


def _zimage_backbone():
    from ddmd_lab.backbones.zimage import ZImageBackbone

    torch.manual_seed(0)
    return ZImageBackbone(tiny_zimage_transformer(), torch.randn(2, 16), (16, 8, 8))


def _captions():
    from ddmd_lab.backbones.zimage import Captions

    return Captions([torch.randn(3, 16), torch.randn(5, 16)])


def _plan(**settings) -> dict[str, int]:
    """The plan's components for the tiny Z-Image transformer (full fine-tuning, float32)."""
    with torch.device("meta"):
        facts = denoiser_facts(tiny_zimage_transformer(), "zimage")
    return components(facts, Settings(**{"precision": "32-true", "text_on_gpu": False, **settings}))


class _Conditions(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        torch.manual_seed(i)
        return _captions()


def test_a_fit_holds_one_trained_models_gradients_at_a_time():
    """Every optimiser step of a real fit (the generator's update, then the fake's) finds only the stepped
    model's gradients: the idle model is frozen and each update sets its gradients to None."""
    from ddmd_lab.training.module import DistillModule

    cfg = RunConfig.of(arm=REGISTRY["decoupled_hybrid"], steps=2, ttur=1, batch_size=2, student_steps=2, alpha=4.0,
                       wandb="disabled")
    module = DistillModule(_zimage_backbone(), cfg)
    seen = []  # (the stepped optimiser's parameter bytes, live gradient bytes in the whole module)

    def before_step(opt, args, kwargs):
        stepped = [p for g in opt.param_groups for p in g["params"]]
        seen.append((tensor_bytes(stepped), tensor_bytes(p.grad for p in module.parameters())))

    handle = register_optimizer_step_pre_hook(before_step)  # every optimiser, as Lightning steps it
    try:
        loader = torch.utils.data.DataLoader(_Conditions(), batch_size=None, collate_fn=lambda b: b)
        pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False).fit(module, loader)
    finally:
        handle.remove()
    assert module.generator_step_count == 2 and module.critic_step_count == 2
    one_model = _plan()["gradients"]
    assert len(seen) == 4 and all(held == stepped == one_model for stepped, held in seen), (seen, one_model)
    assert tensor_bytes(p.grad for p in module.parameters()) == 0  # none held between steps


@pytest.mark.parametrize("variant", ["foreach", "fused"])
def test_adamws_step_temporary_is_the_plans(variant):
    """foreach: sqrt(exp_avg_sq) of every tensor at once, one model's size, freed at the step's end;
    fused: none.  (The CPU's default for-loop holds two of the largest tensor's size instead.)"""
    net = tiny_zimage_transformer()
    opt = torch.optim.AdamW(net.parameters(), **{variant: True})
    for step in range(2):  # the first step builds exp_avg / exp_avg_sq (the plan's "optimizer", held)
        for p in net.parameters():
            p.grad = torch.randn_like(p)
        with allocations() as step_memory:
            opt.step()
    assert step_memory.net == 0
    expected = _plan(adamw=variant)["adamw_step"]
    assert expected == (tensor_bytes(net.parameters()) if variant == "foreach" else 0)
    assert abs(step_memory.peak - expected) <= 64, (step_memory.peak, expected)  # 64: a few scalars


def test_the_plan_assumes_the_adamw_the_run_builds():
    """The plan's AdamW is the one DistillModule.configure_optimizers builds, as torch runs it on CUDA: an
    optimiser built with fused=True there makes this fail until ADAMW_DEFAULT says 'fused'."""
    from ddmd_lab.training.module import DistillModule

    module = DistillModule(_zimage_backbone(), RunConfig.of(scale="zimage", student_steps=2))
    opts = module.configure_optimizers()
    assert {adamw_variant(opt.defaults, "cuda") for opt in opts} == {ADAMW_DEFAULT} == {Settings().adamw}
    assert adamw_variant({"fused": True}) == "fused" and adamw_variant({"foreach": None}, "cpu") == "for-loop"


def test_lightnings_bf16_mixed_keeps_no_autocast_weight_cache():
    """Under Lightning's bf16-mixed forward context a forward and backward of float32 weights leave nothing
    behind; torch.autocast's default (cache_enabled=True) keeps the bf16 copy of every weight it cast until
    the context exits -- the term the plan no longer counts."""
    from pytorch_lightning.plugins.precision import MixedPrecision

    plugin = pl.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False).precision_plugin
    assert isinstance(plugin, MixedPrecision)  # the plugin a run's Trainer uses, whose forward context is measured
    backbone, cond = _zimage_backbone(), _captions()
    x, t = torch.randn(2, 16, 8, 8), torch.tensor([0.3, 0.7])

    def left_behind(context) -> int:
        with context:
            with allocations() as memory:
                backbone.x0(x, t, cond).float().square().mean().backward()
                backbone.zero_grad(set_to_none=True)
        return memory.net

    left_behind(plugin.forward_context())  # first calls build the model's lazy caches (rope frequencies)
    lightning, cached = left_behind(plugin.forward_context()), left_behind(torch.autocast("cpu", dtype=torch.bfloat16))
    linear = tensor_bytes(m.weight for m in backbone.modules() if isinstance(m, torch.nn.Linear))
    # measured: 0 B, and 587,072 B against 584,512 B of bf16 Linear weights (half their float32 bytes)
    assert lightning <= 0 and cached >= linear // 2, (lightning, cached, linear)
    assert "autocast_cache" not in _plan(precision="bf16-mixed")
