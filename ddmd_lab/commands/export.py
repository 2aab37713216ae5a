"""A distilled student as a diffusers pipeline folder (``make export RUN=<run> [OUT=folder]``).

The folder is the teacher's pipeline with the student's denoiser weights (LoRA runs: the
generator's adapter merged into the base; its adapter alone is written as well, loadable
with ``load_lora_weights`` on the teacher), the scheduler that reproduces the harness's
student sampler, and a README.md model card that says how to call it.  Sampling the
export with the card's arguments equals ``make sample RUN=<run>`` (tests/test_parity.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ddmd_lab.config import RunConfig, read_config
from ddmd_lab.core.flow import ddpm_timestep_from_t, unshift_time
from ddmd_lab.core.rollout import student_times, times_for_model
from ddmd_lab.errors import UserError


def student_scheduler(family: str, scheduler, sampler: str, shift: float, num_steps: int):
    """The diffusers scheduler whose steps are the student's (``scheduler``: the teacher's, for
    its training config).  SDXL renoise: LCMScheduler (DMD2's inference), its default schedule
    made the student's 4 DDPM steps by original_inference_steps = N; SDXL euler: Euler (DDIM);
    flow families: FlowMatchEulerDiscreteScheduler with the student's static shift, stochastic
    for renoise."""
    import diffusers  # deferred: diffusers, only an export writes a pipeline

    if family == "sdxl":
        if sampler == "renoise":
            return diffusers.LCMScheduler.from_config(scheduler.config, original_inference_steps=num_steps)
        return diffusers.EulerDiscreteScheduler.from_config(scheduler.config)
    return diffusers.FlowMatchEulerDiscreteScheduler.from_config(
        scheduler.config, shift=shift, use_dynamic_shifting=False, stochastic_sampling=sampler == "renoise")


def pipeline_call_args(family: str, times: torch.Tensor, shift: float, alphas_cumprod=None) -> dict:
    """The ``pipe(...)`` arguments that run the student at its own times without CFG."""
    n = len(times)
    if family == "sdxl":
        steps = ddpm_timestep_from_t(times, alphas_cumprod)
        if (steps - steps.round()).abs().max() > 1e-3:
            raise UserError(f"student times {times.tolist()} are not integer DDPM timesteps; diffusers' schedulers take "
                            "integers: set student_times from DDPM timesteps (SDXL's defaults are).")
        return {"num_inference_steps": n, "timesteps": [int(s) for s in steps.round().tolist()], "guidance_scale": 0.0}
    args = {"num_inference_steps": n, "guidance_scale": 0.0 if family == "zimage" else 1.0}
    if not torch.allclose(times, student_times(n, shift), atol=1e-6):
        # the pipelines shift the sigmas they are given: pass the unshifted ones
        args["sigmas"] = (1 - unshift_time(times.double(), shift)).tolist()
    return args


def export_student(run_dir: Path, out: Path | None = None) -> Path:
    from ddmd_lab.training.restore import (load_pipeline_student, require_text_scale,  # deferred: Lightning
                                           run_checkpoint)

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml); pass RUN=runs/<scale>/<arm>/<run-id>.")
    out = Path(out) if out else run_dir / "export"
    if out.exists():
        raise UserError(f"{out} already exists; an export never overwrites a folder -- pass another OUT.")
    cfg = read_config(run_dir / "config.yaml")
    require_text_scale(cfg)
    family = cfg.teacher["family"]
    model, student = load_pipeline_student(cfg, run_checkpoint(run_dir))
    pipe, backbone = model.pipeline, model.backbone
    times = times_for_model(backbone, cfg.student.student_steps, cfg.student.shift, cfg.student.student_times)
    call = pipeline_call_args(family, times, cfg.student.shift, getattr(backbone, "alphas_cumprod", None))
    out.mkdir(parents=True)
    lora = int(cfg.optimisation.lora.get("rank", 0)) > 0
    if lora:
        _write_lora(pipe, backbone, out / "student_lora")
        net = backbone.denoiser()
        net.fuse_lora(adapter_names=["generator"])
        net.unload_lora()  # plain diffusers layers holding the merged weights
    # one dtype for the whole folder, as diffusers pipelines expect (Lumina2's and SDXL's pass the text
    # features on uncast); a run's bfloat16 text encoders (teacher.text_dtype) are saved in the denoiser's dtype
    dtype = next(backbone.parameters()).dtype
    for encoder in model.text_encoders:
        encoder.to(dtype)
    pipe.scheduler = student_scheduler(family, pipe.scheduler, cfg.student.student_sampler, cfg.student.shift, cfg.student.student_steps)
    pipe.save_pretrained(out)
    (out / "README.md").write_text(model_card(cfg, run_dir, call, lora))
    (out / "ddmd_export.json").write_text(json.dumps({"run": str(run_dir), "call": call, "lora": lora}, indent=2))
    return out


def _write_lora(pipe, backbone, folder: Path) -> None:
    from peft.utils import get_peft_model_state_dict  # deferred: peft

    layers = get_peft_model_state_dict(backbone.denoiser(), adapter_name="generator")
    type(pipe).save_lora_weights(folder, **{f"{backbone.denoiser_attr}_lora_layers": layers})


def model_card(cfg: RunConfig, run_dir: Path, call: dict, lora: bool) -> str:
    family, arm = cfg.teacher["family"], cfg.arm
    summary = run_dir / "summary.json"
    metrics = json.loads(summary.read_text()) if summary.is_file() else {}
    coco = run_dir / "coco10k" / "results.json"
    if coco.is_file():
        metrics.update({f"coco10k_{k}": v for k, v in json.loads(coco.read_text()).items() if isinstance(v, (int, float))})
    kwargs = ", ".join(f"{k}={v!r}" for k, v in call.items())
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    lora_note = ("\nThe generator's LoRA adapter alone is in `student_lora/`: "
                 f"`pipe = DiffusionPipeline.from_pretrained(\"{cfg.teacher['source']}\"); "
                 "pipe.load_lora_weights(\"<this folder>/student_lora\")` (then use the call above with this "
                 "folder's scheduler).\n" if lora else "")
    return f"""---
library_name: diffusers
tags: [ddmd_lab, decoupled-dmd, distillation, {family}]
---
# {cfg.student.student_steps}-step student of {cfg.teacher['source']} ({arm.name})

Distilled with ddmd_lab (Decoupled DMD, Liu et al. 2025), run `{run_dir.name}`.

```python
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("<this folder>")
image = pipe("a photo of a cat", {kwargs}).images[0]
```
The scheduler saved here reproduces the harness's student sampler (`student_sampler: {cfg.student.student_sampler}`):
guidance is built in (distilled with alpha = {cfg.objective.alpha:g}), so the call above switches the pipeline's CFG off.
{lora_note}
| setting | value |
|---|---|
| arm | {arm.name}: CA weight {arm.ca_weight:g} (tau {arm.tau_ca.kind} [{arm.tau_ca.lo:g}, {arm.tau_ca.hi:g}]), DM weight {arm.dm_weight:g} (tau {arm.tau_dm.kind} [{arm.tau_dm.lo:g}, {arm.tau_dm.hi:g}]), shared draw {arm.shared_draw}, normaliser {arm.normaliser} |
| student | {cfg.student.student_steps} steps, sampler {cfg.student.student_sampler}, shift {cfg.student.shift:g} |
| recipe | scale {cfg.run.scale}, alpha {cfg.objective.alpha:g}, {cfg.schedule.steps} critic steps at TTUR {cfg.schedule.ttur}, lr {cfg.optimisation.lr_generator:g} / {cfg.optimisation.lr_fake:g}, batch {cfg.schedule.batch_size}, LoRA rank {cfg.optimisation.lora.get('rank', 0)}, seed {cfg.run.seed} |

## Metrics of the run
| metric | value |
|---|---|
{rows or '| (none recorded) | |'}
"""


def cmd_export(args) -> None:
    if not args.run:
        raise UserError("no run to export: RUN=runs/<scale>/<arm>/<run-id> [OUT=<new folder>].")
    out = export_student(args.run, args.out)
    print(f"diffusers pipeline written: {out} (how to call it: {out / 'README.md'})")


def register(sub) -> None:
    p = sub.add_parser("export", help="a run's student as a diffusers pipeline folder with its scheduler and a model card")
    p.add_argument("--run", help="a text-to-image run folder")
    p.add_argument("--out", default=None, help="a new folder (default: <run>/export)")
    p.set_defaults(func=cmd_export)
