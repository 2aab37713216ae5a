"""Two decoupled_hybrid steps and a few-step sample through DistillModule with
tiny models built from the real diffusers classes (conditions are lists or
dataclasses, not label tensors)."""
import pytest
import pytorch_lightning as pl
import torch

from ddmd_lab.core.arms import REGISTRY
from ddmd_lab.config import RunConfig
from ddmd_lab.training.module import DistillModule

from .tiny_models import sdxl_alphas_cumprod, tiny_lumina2_transformer, tiny_sdxl_unet, tiny_zimage_transformer


class _Conditions(torch.utils.data.Dataset):
    def __init__(self, make, steps):
        self.make, self.steps = make, steps

    def __len__(self):
        return self.steps

    def __getitem__(self, i):
        torch.manual_seed(i)
        return self.make()


def _zimage():
    from ddmd_lab.backbones.zimage import Captions, ZImageBackbone

    return ZImageBackbone(tiny_zimage_transformer(), torch.randn(2, 16), (16, 8, 8)), lambda: Captions([torch.randn(3, 16), torch.randn(5, 16)])


def _lumina2():
    from ddmd_lab.backbones.lumina2 import Lumina2Backbone, PaddedText

    net = tiny_lumina2_transformer()
    null = PaddedText(torch.randn(1, 3, 32), torch.ones(1, 3, dtype=torch.bool))
    return Lumina2Backbone(net, null, (4, 16, 16)), lambda: PaddedText(torch.randn(2, 4, 32), torch.ones(2, 4, dtype=torch.bool))


def _sdxl(widths=(2, 4)):
    from ddmd_lab.backbones.sdxl import SDXLBackbone, SDXLCondition

    unet = tiny_sdxl_unet(widths)
    ac = sdxl_alphas_cumprod()
    ids = torch.tensor([[32.0, 32, 0, 0, 32, 32]])
    null = SDXLCondition(torch.zeros(1, 7, 64), torch.zeros(1, 32), ids)
    return SDXLBackbone(unet, ac, null, (4, 32, 32)), lambda: SDXLCondition(torch.randn(2, 7, 64), torch.randn(2, 32), ids.repeat(2, 1))



@pytest.mark.parametrize("family", [_zimage, _lumina2, _sdxl], ids=["zimage", "lumina2", "sdxl"])
def test_two_decoupled_hybrid_steps_and_a_sample(family):
    from ddmd_lab.core.flow import t_from_ddpm_timestep

    torch.manual_seed(0)
    teacher, make_cond = family()
    times = []
    if family is _sdxl:  # VP models cannot start at t = 0: DMD2's DDPM timesteps 999, 499 in the paper's time
        times = t_from_ddpm_timestep(torch.tensor([999, 499]), sdxl_alphas_cumprod()).tolist()
    cfg = RunConfig.of(arm=REGISTRY["decoupled_hybrid"], steps=2, ttur=1, batch_size=2, student_steps=2, alpha=4.0,
                    wandb="disabled", student_times=times)
    module = DistillModule(teacher, cfg)
    before = [p.clone() for p in module.generator.parameters()]
    loader = torch.utils.data.DataLoader(_Conditions(make_cond, 2), batch_size=None, collate_fn=lambda b: b)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    assert module.generator_step_count == 2 and module.critic_step_count == 2 and module.skipped_steps == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, module.generator.parameters()))
    sample = module.sample(torch.randn(2, *teacher.sample_shape), make_cond())
    assert sample.shape == (2, *teacher.sample_shape) and torch.isfinite(sample).all()


# SDXL's tiny test UNet has 2 and 4 channels, where a rank-2 adapter is half a layer; 32 / 64 keep
# the layer shapes' proportions closer to the real ones (LoRA's share falls with width)
@pytest.mark.parametrize("family", [_zimage, _lumina2, lambda: _sdxl((32, 64))], ids=["zimage", "lumina2", "sdxl"])
def test_lora_on_one_shared_base_holds_one_copy_and_keeps_the_teacher(family):
    import copy

    from ddmd_lab.backbones.lora import held_parameters

    torch.manual_seed(0)
    teacher, make_cond = family()
    original = copy.deepcopy(teacher).eval()
    base = held_parameters(teacher)
    full = held_parameters(DistillModule(copy.deepcopy(teacher), RunConfig.of(arm=REGISTRY["decoupled_hybrid"], wandb="disabled")))
    cfg = RunConfig.of(arm=REGISTRY["decoupled_hybrid"], steps=2, ttur=1, batch_size=2, student_steps=1, alpha=4.0,
                    wandb="disabled", lora={"rank": 2}, student_times=[0.02] if hasattr(teacher, "unet") else [])
    module = DistillModule(teacher, cfg)
    assert full == 3 * base and held_parameters(module) <= 1.1 * base
    gen, fake = set(map(id, module.generator.parameters())), set(map(id, module.fake.parameters()))
    assert gen and fake and not gen & fake and not list(module.teacher.parameters())
    x, t, c = torch.randn(2, *teacher.sample_shape), torch.tensor([0.3, 0.7]), make_cond()
    with torch.no_grad():  # LoRA's B starts at zero: all three views are the teacher at step 0
        ref = original.x0(x, t, c)
        torch.testing.assert_close(module.generator.x0(x, t, c), ref)
        torch.testing.assert_close(module.fake.x0(x, t, c), ref)
    loader = torch.utils.data.DataLoader(_Conditions(make_cond, 2), batch_size=None, collate_fn=lambda b: b)
    pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(module, loader)
    assert module.generator_step_count == 2 and module.skipped_steps == 0
    with torch.no_grad():
        torch.testing.assert_close(module.teacher.x0(x, t, c), ref)  # adapters off: the frozen teacher
        assert not torch.allclose(module.generator.x0(x, t, c), ref)


def test_bf16_autocast_with_gradient_checkpointing_and_lora_trains():
    torch.manual_seed(0)
    teacher, make_cond = _zimage()
    cfg = RunConfig.of(arm=REGISTRY["decoupled_hybrid"], steps=2, ttur=1, batch_size=2, student_steps=2, alpha=4.0,
                    wandb="disabled", lora={"rank": 2}, precision="bf16-mixed", gradient_checkpointing=True)
    module = DistillModule(teacher, cfg)
    assert teacher.transformer.gradient_checkpointing
    before = [p.clone() for p in module.generator.parameters()]
    loader = torch.utils.data.DataLoader(_Conditions(make_cond, 2), batch_size=None, collate_fn=lambda b: b)
    pl.Trainer(max_epochs=1, accelerator="cpu", precision=cfg.parallel.precision, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(module, loader)
    assert module.generator_step_count == 2 and module.skipped_steps == 0
    assert all(p.dtype == torch.float32 for p in module.generator.parameters())  # master weights stay float32
    assert any(not torch.equal(a, b) for a, b in zip(before, module.generator.parameters()))


@pytest.mark.parametrize("lora", [0, 2])
def test_bfloat16_teacher_with_float32_master_weights(lora):
    """master_dtype: what is trained (and its AdamW states) in float32 while the frozen teacher / LoRA base is
    bfloat16; a step moves the master weights, the teacher's stay bit for bit."""
    torch.manual_seed(0)
    teacher, make_cond = _zimage()
    teacher.to(torch.bfloat16)
    frozen = {n: p.clone() for n, p in teacher.named_parameters()}
    cfg = RunConfig.of(arm=REGISTRY["decoupled_hybrid"], steps=2, ttur=1, batch_size=2, student_steps=2, alpha=4.0,
                    wandb="disabled", lora={"rank": lora}, precision="bf16-mixed", master_dtype="float32")
    module = DistillModule(teacher, cfg)
    trained = [p for m in (module.generator, module.fake) for p in m.parameters()]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    teacher_params = list(module.base.parameters() if lora else module.teacher.parameters())
    assert any(p.dtype == torch.bfloat16 for p in teacher_params)
    before = [p.clone() for p in module.generator.parameters()]
    loader = torch.utils.data.DataLoader(_Conditions(make_cond, 2), batch_size=None, collate_fn=lambda b: b)
    pl.Trainer(max_epochs=1, accelerator="cpu", precision=cfg.parallel.precision, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(module, loader)
    assert module.generator_step_count == 2 and module.skipped_steps == 0
    state = [s for m in module.optimizers() for s in m.optimizer.state.values()]
    assert state and all(s["exp_avg"].dtype == torch.float32 for s in state)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.generator.parameters()))
    net = module.base if lora else module.teacher
    now = {n.replace(".base_layer", ""): p for n, p in net.named_parameters() if ".lora_" not in n}
    assert now.keys() == frozen.keys() and all(torch.equal(now[n], frozen[n]) for n in frozen)
