import torch

from ddmd_lab.core import flow


from .tiny_models import sdxl_alphas_cumprod as _alphas_cumprod
from .tiny_models import tiny_sdxl_unet


def test_vp_and_flow_samples_are_the_same_up_to_scale():
    x0, eps, t = torch.randn(4, 3).double(), torch.randn(4, 3).double(), torch.tensor([0.05, 0.3, 0.6, 0.95]).double()
    x_flow = flow.renoise(x0, eps, t)
    ab = flow.alpha_bar_from_t(t)[:, None]
    torch.testing.assert_close(x_flow * flow.vp_scale(t)[:, None], ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    torch.testing.assert_close(flow.t_from_alpha_bar(flow.alpha_bar_from_t(t)), t)


def test_ddpm_timesteps_round_trip_and_dmd2_times():
    ac = _alphas_cumprod()
    steps = torch.tensor([999, 749, 499, 249, 20])
    t = flow.t_from_ddpm_timestep(steps, ac)
    assert torch.all(t.diff() > 0)  # later DDPM steps are noisier
    torch.testing.assert_close(flow.ddpm_timestep_from_t(t, ac), steps.double(), atol=1e-3, rtol=0)


def test_sdxl_adapter_recovers_x0_from_epsilon(tmp_path):
    from diffusers import UNet2DConditionModel

    from ddmd_lab.backbones.sdxl import SDXLBackbone, SDXLCondition

    torch.manual_seed(0)
    unet = tiny_sdxl_unet()
    unet.save_pretrained(tmp_path / "unet")
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
    ac = _alphas_cumprod()
    null = SDXLCondition(torch.zeros(1, 7, 64), torch.zeros(1, 32), torch.tensor([[32.0, 32, 0, 0, 32, 32]]))
    model = SDXLBackbone(unet, ac, null, (4, 32, 32))
    cond = SDXLCondition(torch.randn(2, 7, 64), torch.randn(2, 32), torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2))
    t = flow.t_from_ddpm_timestep(torch.tensor([999, 249]), ac)
    x_t = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        x0 = model.x0(x_t, t, cond)
        # the same through diffusers' own conventions at the integer timesteps
        x_vp = x_t.double() * flow.vp_scale(t)[:, None, None, None]
        eps = unet(x_vp.float(), torch.tensor([999, 249]), encoder_hidden_states=cond.tokens,
                   added_cond_kwargs={"text_embeds": cond.text_embeds, "time_ids": cond.time_ids}).sample
        a = ac[[999, 249]].double()[:, None, None, None]
        expected = ((x_vp - (1 - a).sqrt() * eps.double()) / a.sqrt()).float()
    torch.testing.assert_close(x0, expected, atol=1e-3, rtol=1e-3)
