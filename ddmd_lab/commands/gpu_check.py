"""``make gpu-check``: the real-model path on one GPU, measured against the plan in minutes.

Full-size SDXL and Z-Image denoisers with random weights (no download: the published configs
in experiments/architectures/), a few ``decoupled_hybrid`` steps of each recipe as configured,
with LoRA and with full fine-tuning wherever the memory plan says it fits this GPU.  Per case:
measured peak memory against the plan's training part (``plan_training_gib``: what this script
allocates -- no text encoders, no VAE; ``plan_peak_gib`` is the whole run's), step time against the
network-evaluation floor (bench.step_floor, the step's own generator timed in the run's precision),
and how far one generator update in bf16 autocast is from the same update in float32.  Each case
starts from an empty GPU: the previous case's module is collected first (its memory would count in
this case's peak otherwise; ``resident_at_start_gib`` says what was left).  ``--tiny`` runs the same
code on tiny configs of the same classes (its CPU test).
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import time
from pathlib import Path

import diffusers
import torch

from ddmd_lab.backbones.sdxl import SDXLBackbone, SDXLCondition, time_ids
from ddmd_lab.backbones.zimage import Captions, ZImageBackbone
from ddmd_lab.commands.bench import step_floor
from ddmd_lab.config import load_config
from ddmd_lab.data.steps import condition_of, step_loader
from ddmd_lab.method.update import draw, generator_update
from ddmd_lab.planning.architectures import family_specs
from ddmd_lab.planning.memory_plan import memory_plan
from ddmd_lab.training.bench_fit import evaluation_costs, timed_fit
from ddmd_lab.training.run import allow_tf32

CASES = (("sdxl", 64), ("sdxl", 0), ("zimage", 64), ("zimage", 0))  # (family, LoRA rank; 0 = full fine-tuning)
SCALES = {"sdxl": "sdxl", "zimage": "zimage"}
TEXT_TOKENS = {"sdxl": 77, "zimage": 512}  # CLIP's context; the Z-Image adapter's max_length (the plan's too)
TINY = {  # diffusers' own tiny test configs (STACK_NOTES), latent side 16
    "sdxl": {"_class_name": "UNet2DConditionModel", "block_out_channels": [2, 4], "layers_per_block": 2,
             "sample_size": 16, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "attention_head_dim": [2, 4],
             "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
             "transformer_layers_per_block": [1, 2], "projection_class_embeddings_input_dim": 80,
             "cross_attention_dim": 64, "norm_num_groups": 1, "in_channels": 4, "out_channels": 4},
    "zimage": {"_class_name": "ZImageTransformer2DModel", "all_patch_size": [2], "all_f_patch_size": [1],
               "in_channels": 16, "dim": 16, "n_layers": 1, "n_refiner_layers": 1, "n_heads": 1, "n_kv_heads": 2,
               "qk_norm": True, "cap_feat_dim": 16, "rope_theta": 256.0, "t_scale": 1000.0, "axes_dims": [8, 4, 4],
               "axes_lens": [256, 32, 32]},
}


def build_denoiser(spec: dict, device: torch.device, dtype: torch.dtype):
    """The spec's diffusers class, randomly initialised directly on ``device``."""
    kwargs = {k: v for k, v in spec.items() if not k.startswith("_")}
    with torch.device(device):
        net = getattr(diffusers, spec["_class_name"])(**kwargs)
    if dtype != torch.float32:  # constructed in float32
        net = net.to(dtype)
    return net.eval().requires_grad_(False)


def random_teacher(family: str, spec: dict, side: int, resolution: int, device, dtype):
    """A Backbone around a random full-size denoiser, with a null condition of the real shapes."""
    net = build_denoiser(spec, device, dtype)
    if family == "sdxl":
        pooled = spec["projection_class_embeddings_input_dim"] - 6 * spec["addition_time_embed_dim"]
        null = SDXLCondition(torch.zeros(1, 77, spec["cross_attention_dim"]), torch.zeros(1, pooled), time_ids(resolution))
        sched = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        model = SDXLBackbone(net, sched.alphas_cumprod, null, (spec["in_channels"], side, side))
    else:
        model = ZImageBackbone(net, torch.zeros(16, spec["cap_feat_dim"]), (spec["in_channels"], side, side))
    return model.to(device)


def condition_maker(family: str, spec: dict, batch: int, resolution: int, tokens: int):
    """make_batch(generator) -> a random condition of the family's real shapes (prompt-embedding scale ~1)."""
    def make(g: torch.Generator):
        if family == "sdxl":
            pooled = spec["projection_class_embeddings_input_dim"] - 6 * spec["addition_time_embed_dim"]
            return SDXLCondition(torch.randn(batch, 77, spec["cross_attention_dim"], generator=g),
                                 torch.randn(batch, pooled, generator=g), time_ids(resolution).repeat(batch, 1))
        return Captions([torch.randn(tokens, spec["cap_feat_dim"], generator=g) for _ in range(batch)])

    return make


def update_agreement(module, cond) -> dict:
    """One generator update (same x, draws, networks) in float32 and under bf16 autocast."""
    device = module.device
    with torch.no_grad():
        x_t, t = module._student_input(cond, len(cond))
        x = module.generator.x0(x_t, t, cond).float()
    draws = draw(module.arm, x, t, module.settings)
    full, _ = generator_update(module.arm, x, cond, t, module.teacher, module.fake, module.settings, draws)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        half, _ = generator_update(module.arm, x, cond, t, module.teacher, module.fake, module.settings, draws)
    half = half.float()
    return {"bf16_rel_diff": float((half - full).norm() / full.norm()),
            "bf16_cosine": float(torch.nn.functional.cosine_similarity(half.flatten(), full.flatten(), dim=0))}


def check_case(family: str, rank: int, tiny: bool, device: torch.device, steps: int | None, repeats: int) -> dict:
    gpu = device.type == "cuda"
    release(device)  # anything an earlier case left behind would count in this case's peak
    overrides = {"teacher": {"source": "random-weights"}, "lora": {"rank": rank, "alpha": max(rank, 1)},
                 "accelerator": "gpu" if gpu else "cpu", "devices": 1, "strategy": "auto", "wandb": "disabled",
                 "progress_bar": False, "checkpoint_every": 0}
    cfg = load_config(SCALES[family], "decoupled_hybrid", overrides)
    cfg = cfg.replace(steps=steps or 2 * cfg.schedule.ttur + 1)  # two generator steps after the first (warm-up) step
    if tiny:
        spec, resolution, side, tokens = TINY[family], 128, 16, 8
        cfg = cfg.replace(batch_size=2, precision="32-true" if not gpu else cfg.parallel.precision)
        plan_gib = training_gib = None
    else:
        spec, resolution = {"_library": "diffusers", **family_specs(family)["denoiser"]}, int(cfg.teacher["resolution"])
        side, tokens = resolution // 8, TEXT_TOKENS[family]
        gib = torch.cuda.get_device_properties(device).total_memory / 2**30 if gpu else None
        plan = memory_plan(cfg, gpu_gib=gib)
        plan_gib, training_gib = plan["peak_gib"], plan["training_gib"]
        if not plan["fits"]:
            return {"family": family, "lora_rank": rank, "skipped": f"plan: {plan_gib} GiB does not fit {gib:.0f} GiB"}
    result = {"family": family, "lora_rank": rank, "batch": cfg.schedule.batch_size, "resolution": resolution,
              "precision": cfg.parallel.precision, "plan_peak_gib": plan_gib, "plan_training_gib": training_gib}
    if gpu:
        result["resident_at_start_gib"] = round(torch.cuda.memory_allocated(device) / 2**30, 2)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.teacher.get("dtype", "float32")]
    t0 = time.perf_counter()
    teacher = random_teacher(family, spec, side, resolution, device, dtype)
    result["build_s"] = round(time.perf_counter() - t0, 1)
    make = condition_maker(family, spec, cfg.schedule.batch_size, resolution, tokens)
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    fit = timed_fit(teacher, cfg, step_loader(make, cfg.run.seed, 0, cfg.schedule.steps), warmup=1)
    module = fit.module
    if gpu:
        result["measured_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if training_gib:  # like with like: the plan's components this script allocates
            result["measured_over_plan"] = round(result["measured_peak_gib"] / training_gib, 3)
    module.to(device)  # Lightning's teardown moved the module back to the CPU
    cond = condition_of(next(iter(step_loader(make, 99, 0, 1))))
    cond = fit.batch_to_device(cond, device)
    result.update(update_agreement(module, cond))
    # the floor: each network evaluation timed alone, in the run's precision (after training: its gradients
    # would otherwise count in the peak), on the step's own generator: LoRA its view (adapter on, base frozen,
    # checkpointed as in the step), full fine-tuning its trained copy.  (The raw teacher of a LoRA run is the
    # shared base: its fwd_bwd would compute every base weight's gradient, which no step does.)
    with fit.forward_context():
        costs = evaluation_costs(module.generator, cond, cfg.schedule.batch_size, repeats, gan=False)
    for p in module.parameters():
        p.grad = None
    step = sum(fit.step_times) / len(fit.step_times)
    floor = step_floor(cfg.arm, costs, cfg.schedule.ttur, cfg.student.student_steps)
    result.update(step_ms=round(step * 1e3, 1), floor_ms=round(floor * 1e3, 1), step_over_floor=round(step / floor, 2))
    return result  # main releases what the case held (release(), once this frame is gone)


def release(device: torch.device) -> None:
    """Free what an ended case held.  Its DistillModule and Trainer refer to each other (Lightning keeps
    references both ways), so they outlive ``del`` and the case's frame until Python's cycle collector
    runs, which may be much later: the module (moved back to the GPU after fit) and the gradients its floor
    timing left then counted in the next case's peak.  The likely cause of Z-Image LoRA's 47.49 GiB on the
    H200 (plan's training part 22.25): the SDXL full fine-tuning case before it left ~29 GiB (teacher and
    its gradients in bf16, float32 generator and fake)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m ddmd_lab.commands.gpu_check", description=__doc__)
    p.add_argument("--tiny", action="store_true", help="tiny configs of the same classes (runs on a CPU)")
    p.add_argument("--cases", default="", help="e.g. sdxl:64,zimage:64 (default: all four)")
    p.add_argument("--steps", type=int, default=None, help="training steps per case (default 2 x ttur + 1)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="JSON file for the results (default: runs/gpu_check-<time>.json)")
    args = p.parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        allow_tf32()
        print(f"device: {torch.cuda.get_device_name(device)}, "
              f"{torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB")
    elif not args.tiny:
        print("no GPU: running the tiny configs instead (--tiny)")
        args.tiny = True
    cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases.split(",") if c] or list(CASES)
    results = []
    for family, rank in cases:
        t0 = time.perf_counter()
        r = check_case(family, rank, args.tiny, device, args.steps, args.repeats)
        release(device)
        r["wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(r), flush=True)
        results.append(r)
    out = Path(args.out or f"runs/gpu_check-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written: {out}")
    return results


if __name__ == "__main__":
    main()
