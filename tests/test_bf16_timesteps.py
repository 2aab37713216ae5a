"""Timesteps reach every denoiser in float32 whatever the weights' dtype, as diffusers' pipelines
pass them: with a bfloat16 teacher a timestep cast to the weights' dtype is rounded before the
model's float32 sinusoids see it (DDPM 999 -> 1000, 749 -> 748; Z-Image's t to 2^-9 near 0.25).

The float32 parity tests (test_parity.py) cannot see that rounding; these run the tiny pipelines
of the real classes loaded in bfloat16, as a recipe's teacher.dtype loads them."""
import pytest
import torch

from ddmd_lab.backbones.pipelines import load_pipeline
from ddmd_lab.core.flow import t_from_ddpm_timestep, vp_scale

PROMPT = "a photo of a cat"
RES = 32
FAMILIES = ("zimage", "lumina2", "sdxl")


@pytest.fixture(scope="module")
def bf16_pipelines(pipeline_folders):
    """Each family's tiny pipeline in bfloat16 (weights and text encoders) with our adapter on it."""
    from ddmd_lab.backbones import lumina2, sdxl, zimage

    loaded = {}
    for family, adapter in (("zimage", zimage), ("lumina2", lumina2), ("sdxl", sdxl)):
        pipe = load_pipeline(str(pipeline_folders[family]), family, "bfloat16")
        pipe.set_progress_bar_config(disable=True)
        loaded[family] = pipe, adapter.from_pipeline(pipe, RES)
    return loaded


def record_calls(net) -> tuple[list, object]:
    """Every forward of ``net`` as (args, kwargs, output), and the hook's handle."""
    calls = []
    handle = net.register_forward_hook(lambda m, args, kwargs, out: calls.append((args, kwargs, out)), with_kwargs=True)
    return calls, handle


def timestep_of(family: str, args, kwargs):
    """The timestep argument of a recorded denoiser call (positional in the pipelines' Z-Image / SDXL calls)."""
    return kwargs["timestep"] if family == "lumina2" else args[1]


def model_times(family: str, backbone, steps: list[int]) -> torch.Tensor:
    """The paper's times of DDPM-style timesteps: SDXL through its scheduler's table, the flow models
    as their pipelines convert them ((1000 - timestep) / 1000, in float32)."""
    if family == "sdxl":
        return t_from_ddpm_timestep(torch.tensor(steps), backbone.alphas_cumprod)
    return (1000 - torch.tensor(steps, dtype=torch.float32)) / 1000


@pytest.mark.parametrize("family", FAMILIES)
def test_the_timestep_reaching_a_bf16_denoiser_is_float32_and_unrounded(bf16_pipelines, family):
    _, model = bf16_pipelines[family]
    backbone, net = model.backbone, model.backbone.denoiser()
    assert next(net.parameters()).dtype == torch.bfloat16
    t = model_times(family, backbone, [999, 749])  # DMD2's first two; both change when rounded to bfloat16
    x = torch.randn(2, *backbone.sample_shape)
    calls, handle = record_calls(net)
    try:
        with torch.no_grad():
            backbone.x0(x, t, model.encode([PROMPT, PROMPT]))
    finally:
        handle.remove()
    timestep = timestep_of(family, *calls[0][:2])
    assert timestep.dtype == torch.float32
    if family == "sdxl":  # the UNet counts DDPM timesteps: exactly 999 and 749, not 1000 and 748
        assert timestep.tolist() == [999.0, 749.0]
    else:  # the flow transformers take t itself: the very float32 values given
        assert torch.equal(timestep, t)
    assert not torch.equal(timestep.to(torch.bfloat16).float(), timestep)  # what the old cast made of them


def ours_on_the_pipelines_inputs(family: str, backbone, args, kwargs):
    """Our adapter's x0 call on the inputs one recorded pipeline call gave the denoiser, converted to
    the paper's convention (the conversions are exact: bfloat16 values survive float32 / float64)."""
    from ddmd_lab.backbones.lumina2 import PaddedText
    from ddmd_lab.backbones.sdxl import SDXLCondition
    from ddmd_lab.backbones.zimage import Captions

    if family == "zimage":
        latents, timestep, captions = args[:3]
        x_t = torch.stack([z.squeeze(1) for z in latents]).float()
        return backbone.x0(x_t, timestep, Captions([c.float() for c in captions]))
    if family == "lumina2":
        cond = PaddedText(kwargs["encoder_hidden_states"].float(), kwargs["encoder_attention_mask"])
        return backbone.x0(kwargs["hidden_states"].float(), kwargs["timestep"], cond)
    sample, timestep = args[:2]
    t = t_from_ddpm_timestep(timestep.reshape(-1).expand(sample.shape[0]), backbone.alphas_cumprod)
    extra = kwargs["added_cond_kwargs"]
    cond = SDXLCondition(kwargs["encoder_hidden_states"].float(), extra["text_embeds"].float(), extra["time_ids"].float())
    # the UNet's input is x_vp = x_t * vp_scale(t); the pipeline's sample is that x_vp
    return backbone.x0(sample.double() / vp_scale(t).view(-1, 1, 1, 1), t, cond)


def as_tensor(out) -> torch.Tensor:
    """A denoiser's output (Z-Image's is a list per sample) as one float tensor."""
    out = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
    return torch.stack([o.float() for o in out]) if isinstance(out, list) else out.float()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_bf16_teacher_equals_the_bf16_pipelines_own_denoiser_calls(bf16_pipelines, family):
    """The pipeline at bfloat16 (its default CFG call, 4 steps): every denoiser call it makes, repeated
    through our adapter on the same inputs, gives the same output -- the cast timestep did not."""
    pipe, model = bf16_pipelines[family]
    net = model.backbone.denoiser()
    calls, handle = record_calls(net)
    try:
        with torch.no_grad():
            pipe(PROMPT, height=RES, width=RES, num_inference_steps=5, latents=torch.randn(
                1, *model.backbone.sample_shape, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16),
                output_type="latent")
            theirs = list(calls)
            ours = []
            for args, kwargs, _ in theirs:
                calls.clear()
                ours_on_the_pipelines_inputs(family, model.backbone, args, kwargs)
                ours.append(calls[0])
    finally:
        handle.remove()
    assert len(theirs) >= 5
    pairs = list(zip(theirs, ours))
    diffs = [(round(timestep_of(family, *call[:2]).reshape(-1)[0].item(), 4),
              (as_tensor(mine[2]) - as_tensor(call[2])).abs().max().item()) for call, mine in pairs]
    # the same bf16 arithmetic on the same inputs: equal to the bit (the cast timestep: 0.01-0.15 off)
    assert all(d == 0 for _, d in diffs), f"{family}: max |ours - pipeline| per call (timestep, difference): {diffs}"
    for (args, kwargs, _), (our_args, our_kwargs, our_out) in pairs:
        # the same float32 timestep (SDXL's goes through the paper's time and back: a few float32 ulps)
        ts = timestep_of(family, args, kwargs)
        torch.testing.assert_close(timestep_of(family, our_args, our_kwargs), ts.expand(as_tensor(our_out).shape[0]),
                                   rtol=1e-6, atol=2e-6)
