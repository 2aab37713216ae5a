"""Parity with the diffusers pipelines we wrap: the teacher's reference sample equals the
family pipeline's default ``__call__``, and the student's sample equals the pipeline run
with the scheduler a user pairs it with, on tiny pipelines of the real classes saved as
diffusers folders (identical latents, prompts, step counts and generator seeds)."""
import pytest
import torch

from ddmd_lab.commands.export import pipeline_call_args, student_scheduler
from ddmd_lab.backbones.pipelines import load_pipeline
from ddmd_lab.core.rollout import sample_student, times_for_model

PROMPT = "a photo of a cat"
RES = 32


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _loaded(pipeline_folders, family):
    from ddmd_lab.backbones import lumina2, sdxl, zimage

    pipe = load_pipeline(str(pipeline_folders[family]), family)
    model = {"zimage": zimage, "lumina2": lumina2, "sdxl": sdxl}[family].from_pipeline(pipe, RES)
    pipe.set_progress_bar_config(disable=True)
    return pipe, model


def _noise(model, seed=0):
    return torch.randn(1, *model.backbone.sample_shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family,guidance", [("zimage", 5.0), ("lumina2", 4.0), ("sdxl", 5.0)])
def test_teacher_sample_equals_the_pipelines_default_call(pipeline_folders, family, guidance):
    # the pipelines' default CFG options (Lumina2 renormalises) and grid (SDXL: the scheduler's 'leading'
    # timesteps from x_vp = noise); 20 steps keep it quick on the CPU, every other argument is the default
    from ddmd_lab.training.generate import alpha_from_guidance

    pipe, model = _loaded(pipeline_folders, family)
    noise, steps = _noise(model), 20
    with torch.no_grad():
        ours = model.teacher_sample(noise, model.encode([PROMPT]), alpha_from_guidance(family, guidance), steps)
        theirs = pipe(PROMPT, height=RES, width=RES, num_inference_steps=steps, guidance_scale=guidance,
                      latents=noise.clone(), output_type="latent").images
    print(f"{family}: relative difference {rel_err(ours, theirs):.1e}")
    assert rel_err(ours, theirs) < 1e-4, rel_err(ours, theirs)


def test_lumina2_teacher_follows_the_pipelines_cfg_options(pipeline_folders):
    from ddmd_lab.backbones.pipeline_sampling import PipelineCFG

    pipe, model = _loaded(pipeline_folders, "lumina2")
    noise, cond = _noise(model, 1), model.encode([PROMPT])
    model.guidance = PipelineCFG.pipeline_default("lumina2", normalization=False, truncation=0.5)
    with torch.no_grad():
        ours = model.teacher_sample(noise, cond, 4.0, 10)
        theirs = pipe(PROMPT, height=RES, width=RES, num_inference_steps=10, cfg_normalization=False,
                      cfg_trunc_ratio=0.5, latents=noise.clone(), output_type="latent").images
    assert rel_err(ours, theirs) < 1e-4


def _student_pipe(pipe, model, family, sampler, shift, n):
    """The pipeline with the scheduler export writes, and the call arguments it documents."""
    pipe.scheduler = student_scheduler(family, pipe.scheduler, sampler, shift, n)
    times = times_for_model(model.backbone, n, shift)
    return times, pipeline_call_args(family, times, shift, getattr(model.backbone, "alphas_cumprod", None))


@pytest.mark.parametrize("family,sampler,shift,n", [
    ("sdxl", "renoise", 1.0, 4), ("sdxl", "renoise", 1.0, 1), ("sdxl", "euler", 1.0, 4),
    ("zimage", "euler", 3.0, 8), ("zimage", "renoise", 3.0, 4), ("lumina2", "euler", 3.16, 4),
    ("lumina2", "renoise", 3.16, 4)])
def test_student_sample_equals_the_pipeline_with_its_scheduler(pipeline_folders, family, sampler, shift, n):
    # the teacher's own network stands in for a student: what is compared is the sampler
    pipe, model = _loaded(pipeline_folders, family)
    times, call = _student_pipe(pipe, model, family, sampler, shift, n)
    if family == "sdxl":
        assert call["timesteps"] == ([399] if n == 1 else [999, 749, 499, 249])  # DMD2's
    else:
        assert "sigmas" not in call  # the plain default call reproduces the student's times
    noise = _noise(model, 2)
    # SDXL's pipeline hands its generator to LCMScheduler.step; ZImagePipeline and Lumina2Pipeline do not,
    # so their stochastic steps draw from torch's global RNG (our sampler does too without a generator)
    gen = (lambda: torch.Generator().manual_seed(7)) if family == "sdxl" else (lambda: torch.manual_seed(7) and None)
    with torch.no_grad():
        cond = model.encode([PROMPT])
        ours = sample_student(model.backbone, noise, cond, times, sampler, gen())
        theirs = pipe(PROMPT, height=RES, width=RES, latents=noise.clone(), generator=gen(), output_type="latent",
                      **call).images
    print(f"{family}: relative difference {rel_err(ours, theirs):.1e}")
    assert rel_err(ours, theirs) < 1e-4, rel_err(ours, theirs)


def test_sdxl_starts_at_unit_variance_in_the_unets_scale(pipeline_folders):
    """The first state of a VP trajectory is x_vp = noise (diffusers' init_noise_sigma, DMD2's LCM
    inference), i.e. x_t = noise * sqrt(t0^2 + (1 - t0)^2) in flow time; flow models start at noise."""
    from ddmd_lab.core.flow import vp_scale
    from ddmd_lab.core.rollout import backward_simulate

    _, model = _loaded(pipeline_folders, "sdxl")
    times = times_for_model(model.backbone, 4, 1.0)
    noise = _noise(model)
    x_t = backward_simulate(model.backbone, noise, model.encode([PROMPT]), times, 0)
    torch.testing.assert_close(x_t.double() * vp_scale(times[0]), noise.double())


def test_default_sdxl_lcm_schedule_is_dmd2s_four_steps(pipeline_folders):
    # the exported LCMScheduler's own default for num_inference_steps=4 is DMD2's 999, 749, 499, 249
    pipe, model = _loaded(pipeline_folders, "sdxl")
    lcm = student_scheduler("sdxl", pipe.scheduler, "renoise", 1.0, 4)
    lcm.set_timesteps(4)
    assert lcm.timesteps.tolist() == [999, 749, 499, 249]
