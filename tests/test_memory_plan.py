"""The memory plan (make plan): full-size architectures on the meta device match their
published parameter counts, the byte arithmetic matches a small DistillModule measured
on the CPU (the transient terms: test_memory_terms.py), and every shipped GPU recipe fits
one 80 GB GPU as configured."""
import json

import pytest
import torch

from ddmd_lab.config import RunConfig, load_config
from ddmd_lab.planning.architectures import Facts, build_meta, count, denoiser_facts, family_specs
from ddmd_lab.planning.memory_plan import (GIB, Settings, components, memory_plan, peak_bytes, step_bytes, training_bytes,
                                           write_run_plan)
from ddmd_lab.training.run import plan_run

from .tiny_models import tiny_zimage_transformer

# Published counts. Exact where the number is known to the parameter (the checkpoints' safetensors
# metadata); otherwise the model card's rounded figure, with a tolerance of half its last digit.
EXACT = {
    ("sdxl", "denoiser"): 2_567_463_684,  # SDXL base UNet
    ("sdxl", "vae"): 83_653_863,  # SDXL VAE
    ("sdxl", "CLIPTextModel"): 123_060_480,  # CLIP ViT-L/14 text tower
    ("sdxl", "CLIPTextModelWithProjection"): 694_659_840,  # OpenCLIP bigG text tower + projection
    ("lumina2", "Gemma2Model"): 2_614_341_888,  # Gemma-2-2B without the (tied) LM head
}
ROUNDED = {  # (published, tolerance): cards say "6B / 6.15B", "2.6B", "4.0B", FLUX VAE "83.8M"
    ("zimage", "denoiser"): (6.15e9, 0.005e9),
    ("lumina2", "denoiser"): (2.61e9, 0.005e9),
    ("zimage", "Qwen3Model"): (4.02e9, 0.005e9),  # Qwen3-4B card: 4.0B total, 3.6B non-embedding
    ("zimage", "vae"): (83.8e6, 0.05e6),
    ("lumina2", "vae"): (83.8e6, 0.05e6),
}


@pytest.mark.parametrize("family", ["sdxl", "zimage", "lumina2"])
def test_full_size_architectures_on_meta_match_published_parameter_counts(family):
    specs = family_specs(family)
    counted = {(family, "denoiser"): count(build_meta(specs["denoiser"])), (family, "vae"): count(build_meta(specs["vae"]))}
    for spec in specs["text_encoders"]:
        counted[(family, spec["_class_name"])] = count(build_meta(spec))
    assert all("_source" in s for s in [specs["denoiser"], specs["vae"], *specs["text_encoders"]])
    for key, n in counted.items():
        if key in EXACT:
            assert n == EXACT[key], key
        else:
            published, tol = ROUNDED[key]
            assert abs(n - published) <= tol, (key, n)
    if family == "zimage":  # the card's non-embedding count too
        qwen = build_meta(specs["text_encoders"][0])
        assert abs(count(qwen) - qwen.embed_tokens.weight.numel() - 3.6e9) <= 0.05e9


def _tiny_zimage_module_after_a_step(rank: int, dtype: torch.dtype, master: torch.dtype):
    """A DistillModule on a tiny Z-Image teacher (``dtype``) with ``master`` trained weights, after one backward
    and AdamW step of each trained model; the gradient bytes each update held at its step."""
    from ddmd_lab.backbones.zimage import Captions, ZImageBackbone
    from ddmd_lab.training.module import DistillModule

    torch.manual_seed(0)
    teacher = ZImageBackbone(tiny_zimage_transformer(), torch.randn(2, 16), (16, 8, 8)).to(dtype)
    module = DistillModule(teacher, RunConfig.of(scale="zimage", lora={"rank": rank}, student_steps=2,
                                              master_dtype=str(master).removeprefix("torch.")))
    opts = module.configure_optimizers()
    cond = Captions([torch.randn(3, 16), torch.randn(5, 16)])
    grads = []
    for net, opt in zip((module.generator, module.fake), opts):
        opt.zero_grad(set_to_none=True)
        net.x0(torch.randn(2, 16, 8, 8), torch.tensor([0.3, 0.7]), cond).float().square().mean().backward()
        grads.append(sum(p.grad.numel() * p.grad.element_size() for p in module.parameters() if p.grad is not None))
        opt.step()
        opt.zero_grad(set_to_none=True)  # as DistillModule._update ends
    return module, opts, grads


@pytest.mark.parametrize("rank,dtype,master", [(0, torch.float32, torch.float32), (2, torch.float32, torch.float32),
                                                (2, torch.bfloat16, torch.bfloat16), (0, torch.bfloat16, torch.float32),
                                                (2, torch.bfloat16, torch.float32)],
                         ids=["full-float32", "lora-float32", "lora-bfloat16", "full-bf16-teacher-fp32-master",
                              "lora-bf16-base-fp32-master"])
def test_plan_bytes_equal_a_tiny_distill_module_measured_on_cpu(rank, dtype, master):
    from ddmd_lab.backbones.lora import DEFAULT_TARGETS

    module, opts, grads = _tiny_zimage_module_after_a_step(rank, dtype, master)
    params = list({id(p): p for p in module.parameters()}.values())
    weights = sum(p.numel() * p.element_size() for p in params)
    opt_bytes = sum(t.numel() * t.element_size() for opt in opts for state in opt.state.values()
                    for k, t in state.items() if k in ("exp_avg", "exp_avg_sq"))  # 'step': a scalar on the CPU

    with torch.device("meta"):
        meta = tiny_zimage_transformer()
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16"}
    facts = denoiser_facts(meta, "zimage", rank, DEFAULT_TARGETS)
    c = components(facts, Settings(teacher_dtype=name[dtype], trained_dtype=name[master], precision="32-true",
                                   lora_rank=rank, text_on_gpu=False))
    assert c["teacher"] + c["generator"] + c["fake"] == weights
    assert grads == [c["gradients"]] * 2  # each update holds its own model's, in the trained dtype
    assert c["optimizer"] == opt_bytes
    if rank:  # the adapters in master_dtype (peft would give them the base's), rank * (in + out) per targeted linear
        adapters = [p for n, p in module.base.named_parameters() if "lora_" in n]
        assert {p.dtype for p in adapters} == {master}
        assert sum(p.numel() for p in adapters) == 2 * facts.adapter_params


def test_strategies_divide_what_they_shard():
    f = Facts(denoiser_params=1000, adapter_params=10, largest_block_params=100, text_encoder_params=(("enc", 500),),
              vae_params=50)
    single = components(f, Settings(precision="bf16-mixed"))
    assert single["teacher"] == single["generator"] == single["fake"] == 4000
    # one model's gradients and AdamW foreach temporary; both models' states; no autocast cache (Lightning's is off)
    assert single["gradients"] == single["adamw_step"] == 4000 and single["optimizer"] == 16000
    assert "autocast_cache" not in single and single["ddp_buckets"] == 0
    assert single["text_encoders"] == 500 * 2 and single["vae"] == 50 * 4
    assert components(f, Settings(adamw="fused"))["adamw_step"] == 0
    ddp = components(f, Settings(strategy="ddp", gpus=8))
    assert ddp["gradients"] == 4000 and ddp["ddp_buckets"] == 4000  # one model's gradients, flattened (< 25 MiB)
    fsdp = components(f, Settings(strategy="fsdp", gpus=8))
    assert (fsdp["teacher"], fsdp["generator"], fsdp["gradients"], fsdp["optimizer"], fsdp["adamw_step"]) == (
        500, 500, 500, 2000, 500)
    assert fsdp["fsdp_gathered"] == 3 * 100 * 2
    assert components(f, Settings(strategy="fsdp", gpus=8, fsdp_teacher="replicate"))["teacher"] == 4000
    lora = components(f, Settings(lora_rank=4, teacher_dtype="bfloat16", trained_dtype="float32"))
    assert (lora["teacher"], lora["generator"], lora["gradients"], lora["optimizer"]) == (2000, 40, 40, 160)
    assert components(f, Settings(precision="bf16-true"))["generator"] == 2000  # Lightning casts the module
    assert components(f, Settings(text_on_gpu=False))["text_encoders"] == 0
    assert components(f, Settings(train_fake=False))["optimizer"] == 8000  # the generator's states only


def test_a_models_update_adds_its_gradients_and_the_largest_of_its_phases():
    c = {"teacher": 1, "generator": 10, "fake": 10, "optimizer": 40, "text_encoders": 3, "vae": 2, "gradients": 10,
         "activations": 6, "fsdp_gathered": 0, "ddp_buckets": 0, "adamw_step": 10, "vae_decode": 5}
    assert step_bytes(c) == 10 + 10  # the step's temporary outgrows the backward's activations
    assert training_bytes(c) == 1 + 10 + 10 + 40 + 20 and peak_bytes(c) == training_bytes(c) + 3 + 2
    assert step_bytes({**c, "adamw_step": 0}) == 10 + 6  # fused: the backward's activations are the larger
    assert step_bytes({**c, "adamw_step": 0, "fsdp_gathered": 5}) == 10 + 6 + 5  # gathered while the graph runs
    # an evaluation's decode comes between steps, with no gradients
    assert peak_bytes({**c, "vae_decode": 100}) == 1 + 10 + 10 + 40 + 3 + 2 + 100
    with pytest.raises(Exception, match="adamw 'sgd'.*pick one of them"):
        components(Facts(denoiser_params=1), Settings(adamw="sgd"))


def test_sdxl_full_fine_tuning_plans_what_an_h200_measured():
    """The H200 gpu-check (reports/gpu_check/gpu_check_h200.json): SDXL full fine-tuning, batch 4, bf16-mixed,
    82.12 GiB at its peak (possibly with the LoRA case's ~9.6 GiB left over). The plan's training part: a bf16
    teacher 4.78 + two float32 trained copies 19.13 + their AdamW states 38.26 + one model's gradients 9.56 + the
    foreach temporary 9.56 (above the 3.91 of activations): 81.3 GiB (94.77 when it counted both models'
    gradients and an autocast cache)."""
    plan = memory_plan(load_config("sdxl", "decoupled_hybrid", {"lora": {"rank": 0}, "batch_size": 4}))
    assert plan["training_gib"] == pytest.approx(81.3, abs=0.05) and plan["settings"]["adamw"] == "foreach"
    assert abs(plan["training_gib"] - 82.12) / 82.12 < 0.10
    fused = memory_plan(load_config("sdxl", "decoupled_hybrid", {"lora": {"rank": 0}, "batch_size": 4}), adamw="fused")
    assert fused["training_gib"] == pytest.approx(81.3 - 9.56 + 3.91, abs=0.05)  # the activations are the update's peak


@pytest.mark.parametrize("scale", ["sdxl", "zimage", "lumina2"])
def test_every_shipped_recipe_fits_one_80_gib_gpu_as_configured(scale):
    plan = memory_plan(load_config(scale, "decoupled_hybrid"))
    assert plan["gpu_gib"] == 80 and plan["fits"], plan["gib"]
    assert plan["architecture"] == f"experiments/architectures/{scale}"
    assert plan["gib"]["activations"] > 0 and plan["gib"]["vae_decode"] > 0
    assert plan["peak_gib"] <= 0.9 * 80


def test_full_fine_tuning_does_not_fit_one_gpu_and_sharding_it_block_by_block_does():
    full = memory_plan(load_config("lumina2", "decoupled_hybrid", {"lora": {"rank": 0}}))
    assert not full["fits"] and full["gib"]["optimizer"] > 35  # 2 AdamW states of 2 float32 transformers
    fsdp = memory_plan(load_config("lumina2", "decoupled_hybrid", {"lora": {"rank": 0}, "devices": 8, "strategy": "fsdp"}))
    assert fsdp["fits"] and any("auto_wrap_policy" in n for n in fsdp["notes"])
    assert fsdp["settings"]["fsdp_teacher"] == "shard"  # the run's key (config.py), as the run shards it
    replicated = memory_plan(load_config("lumina2", "decoupled_hybrid", {"lora": {"rank": 0}, "devices": 8,
                                                                         "strategy": "fsdp", "fsdp_teacher": "replicate"}))
    assert replicated["settings"]["fsdp_teacher"] == "replicate" and replicated["gib"]["teacher"] > fsdp["gib"]["teacher"]
    # the recipe's bfloat16 teacher with float32 master weights, against an all-float32 one
    f32 = memory_plan(load_config("lumina2", "decoupled_hybrid", {"teacher": {"dtype": "float32"}, "lora": {"rank": 0}}))
    assert full["bytes"]["teacher"] * 2 == f32["bytes"]["teacher"] and full["settings"]["trained_dtype"] == "float32"
    assert full["bytes"]["optimizer"] == f32["bytes"]["optimizer"]  # float32 master weights: the same AdamW states


def test_make_plan_prints_the_table_and_writes_the_plan(tmp_path, capsys):
    from ddmd_lab.commands.cli import main

    args = ["plan", "--scale", "lumina2", "--set", f"runs_dir={tmp_path}", "--gpu-gib", "140"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "activations" in out and "optimizer" in out and "fits" in out
    assert "AdamW foreach" in out and "adamw: foreach, what the run builds" in out  # which AdamW it assumes
    assert main([*args, "--adamw", "fused"]) == 0 and "AdamW fused" in capsys.readouterr().out
    plan = json.loads((tmp_path / "lumina2" / "memory_plan.json").read_text())
    assert plan["gpu_gib"] == 140 and plan["fits"]
    assert main(args) == 0 and "replaced the previous one" in capsys.readouterr().out
    assert main(["plan", "--scale", "toy2d"]) == 2


@pytest.mark.parametrize("family", ["zimage", "lumina2", "sdxl"])
def test_a_run_writes_the_plan_of_the_checkpoint_it_loaded(family, pipeline_folders, tmp_path):
    from ddmd_lab.scales.text2image import load_model, load_teacher

    cfg = load_config(family, "decoupled_hybrid", {"teacher": {"source": str(pipeline_folders[family]), "resolution": 32},
                                                   "accelerator": "cpu", "precision": "32-true", "lora": {"rank": 2}})
    teacher = load_teacher(cfg)
    run = tmp_path / "run"
    run.mkdir()
    plan_run(cfg, run)
    plan = json.loads((run / "memory_plan.json").read_text())
    assert plan["architecture"] == "the run's checkpoint"
    assert plan["params"]["denoiser"] == count(teacher.denoiser())
    assert [e["params"] for e in plan["params"]["text_encoders"]] == [count(m) for m in load_model(cfg).text_encoders]
    held = next(teacher.denoiser().parameters()).element_size()  # the recipe's teacher.dtype (bfloat16)
    assert held == 2 and plan["bytes"]["teacher"] == held * count(teacher.denoiser()) and plan["bytes"]["activations"] > 0
    assert plan["params"]["lora_adapter"] > 0 and "error" not in plan
    (run / "memory_plan.json").write_text("{}")
    write_run_plan(cfg, run, load_model(cfg, training=True))  # once per run folder (ranks started later find it)
    assert (run / "memory_plan.json").read_text() == "{}"
    other = tmp_path / "toy"
    other.mkdir()
    plan_run(load_config("toy2d", "decoupled_hybrid"), other)  # text-to-image scales only
    assert not (other / "memory_plan.json").exists()
    assert GIB == 2 ** 30
