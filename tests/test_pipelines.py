"""Real checkpoints end to end on CPU: tiny pipelines of each family saved as diffusers
folders, loaded by the code users point at real ones, two decoupled_hybrid steps and a
few-step sample from the command line, COCO-10k evaluation of the student."""
import json
import shutil

import pytest
import torch

from ddmd_lab.commands.cli import main
from ddmd_lab.errors import UserError
from ddmd_lab.backbones.pipelines import load_pipeline

from .tiny_coco import make_coco, save_tiny_clip


@pytest.fixture(scope="module")
def folders(tmp_path_factory, pipeline_folders):
    root = tmp_path_factory.mktemp("pipelines")
    prompts = root / "prompts.txt"
    prompts.write_text("a photo of a cat\na red bus on a street\n\na bowl of fruit\ntwo dogs playing in the snow\n")
    return pipeline_folders, prompts, root


def _sets(folders, family, *extra):
    paths, prompts, root = folders
    # float32 throughout (the recipes hold the frozen teacher in bfloat16): exports are compared with make sample exactly
    items = [f"teacher.source={paths[family]}", "teacher.resolution=32", "teacher.dtype=float32", "teacher.text_dtype=float32", f"data.prompts={prompts}", "accelerator=cpu",
             "precision=32-true", "wandb=disabled", "batch_size=2", "eval_every=1", "ttur=1", "eval_samples=4",
             "gradient_checkpointing=false", f"runs_dir={root / 'runs'}", f"cache_dir={root / 'cache'}",
             "progress_bar=false", "checkpoint_every=0", *extra]
    return [a for item in items for a in ("--set", item)]


def _only_run(root, family):
    runs = sorted((root / "runs" / family / "decoupled_hybrid").iterdir())
    return runs[-1]


# text encoders in float32 here (the recipes' bfloat16 is tested in test_text_encoders_in_their_own_dtype): an
# export saves them in the denoiser's dtype, and the export test compares it with make sample exactly
# zimage / lumina2 full fine-tuning (the recipes use LoRA), sdxl LoRA
@pytest.mark.parametrize("family,extra", [("zimage", ["lora.rank=0"]), ("lumina2", ["data.precompute=true", "lora.rank=0"]),
                                          ("sdxl", ["lora.rank=2"])])
def test_two_decoupled_hybrid_steps_and_a_sample_from_a_saved_folder(folders, family, extra, capsys):
    root = folders[2]
    assert main(["ablation", "--scale", family, "--steps", "2", *_sets(folders, family, *extra)]) == 0
    run = _only_run(root, family)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["generator_steps"] == 2 and summary["skipped_steps"] == 0
    assert all(torch.isfinite(torch.tensor(summary[k])) for k in ("out_std", "saturated", "latent_std"))
    assert (run / "samples" / "step_0000002.png").is_file() and (run / "checkpoints" / "final.ckpt").is_file()
    out = root / f"{family}-samples"
    assert main(["sample", "--run", str(run), "--prompt", "a cat", "--prompt", "a red bus", "--out", str(out)]) == 0
    meta = json.loads((out / "prompts.json").read_text())
    default_steps = {"zimage": 8, "lumina2": 4, "sdxl": 4}[family]  # the recipes' student step counts
    assert meta["steps"] == default_steps and meta["alpha"] == 1.0 and meta["student"]
    assert (out / "0000.png").is_file() and (out / "0001.png").is_file() and (out / "grid.png").is_file()
    # a second sample into the same folder is refused, the first kept
    assert main(["sample", "--run", str(run), "--prompt", "a cat", "--out", str(out)]) == 2
    assert "never overwrite" in capsys.readouterr().err


def test_student_defaults_and_warnings(folders):
    from ddmd_lab.training.generate import alpha_from_guidance, student_sampler

    root = folders[2]
    run = _only_run(root, "zimage")
    sampler = student_sampler(run)
    assert len(sampler.times) == 8 and sampler.alpha == 1.0
    # full fine-tuning: one network in memory, holding the generator's trained weights
    state = torch.load(run / "checkpoints" / "final.ckpt", weights_only=True)["state_dict"]
    for name, p in sampler.student.named_parameters():
        torch.testing.assert_close(p, state[f"generator.{name}"])
    # the checkpoint holds no frozen teacher (it is teacher.source); the generator trained away from it
    assert not [k for k in state if k.startswith("teacher.")]
    from ddmd_lab.scales.text2image import load_teacher

    teacher = load_teacher(sampler.cfg).state_dict()
    name = "transformer.t_embedder.mlp.0.weight"
    assert not torch.equal(state[f"generator.{name}"].float(), teacher[name].float())
    with pytest.warns(UserWarning, match="guidance built in"):
        assert student_sampler(run, guidance=2.0).alpha == 3.0  # Z-Image's offset form: alpha = g + 1
    with pytest.warns(UserWarning, match="trained for 8 evaluations"):
        assert len(student_sampler(run, steps=4).times) == 4
    # both CFG conventions: Z-Image offset (CFG when g > 0), Lumina2 / SDXL standard (CFG when g > 1)
    assert [alpha_from_guidance("zimage", g) for g in (0, 1, 5)] == [1.0, 2.0, 6.0]
    assert [alpha_from_guidance(f, g) for f in ("sdxl", "lumina2") for g in (0, 1, 8)] == [1.0, 1.0, 8.0] * 2


def test_sdxl_uses_dmd2_times_and_its_null_is_the_pipelines_negative(folders):
    from ddmd_lab.backbones.sdxl import from_pipeline
    from ddmd_lab.core.flow import ddpm_timestep_from_t

    pipe = load_pipeline(str(folders[0]["sdxl"]), "sdxl")
    model = from_pipeline(pipe, 32)
    ac = pipe.scheduler.alphas_cumprod
    four, one = model.backbone.default_student_times(4), model.backbone.default_student_times(1)
    torch.testing.assert_close(ddpm_timestep_from_t(four, ac), torch.tensor([999.0, 749, 499, 249]).double(), atol=1e-2, rtol=0)
    torch.testing.assert_close(ddpm_timestep_from_t(one, ac), torch.tensor([399.0]).double(), atol=1e-2, rtol=0)
    assert model.backbone.min_time == pytest.approx(float(four[0]))
    assert torch.equal(model.backbone.null_tokens, torch.zeros_like(model.backbone.null_tokens))  # force_zeros_for_empty_prompt
    cond = model.encode(["a cat"])
    tokens, _, pooled, _ = pipe.encode_prompt(["a cat"], device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(cond.tokens, tokens) and torch.testing.assert_close(cond.text_embeds, pooled)
    assert cond.time_ids.tolist() == [[32.0, 32, 0, 0, 32, 32]]


def test_text_encoders_in_their_own_dtype(folders):
    from ddmd_lab.config import load_config
    from ddmd_lab.scales.text2image import load_model

    cfg = load_config("zimage", "decoupled_hybrid", {"teacher": {"source": str(folders[0]["zimage"]), "resolution": 32,
                                                                 "dtype": "float32", "text_dtype": "bfloat16"}})
    model = load_model(cfg, fresh=True)
    assert next(model.text_encoders[0].parameters()).dtype == torch.bfloat16
    assert next(model.backbone.parameters()).dtype == torch.float32  # the denoiser keeps teacher.dtype
    assert model.encode(["a cat"]).features[0].dtype == torch.float32


def test_zimage_text_path_of_the_loaded_pipeline(folders):
    from ddmd_lab.backbones.zimage import encode_prompts, from_pipeline

    pipe = load_pipeline(str(folders[0]["zimage"]), "zimage")
    plain = from_pipeline(pipe, 32).encode(["a cat"]).features[0]
    thought = from_pipeline(pipe, 32, thinking="fur").encode(["a cat"]).features[0]
    direct = pipe.encode_prompt(["a cat"], device="cpu", do_classifier_free_guidance=False)[0][0]
    torch.testing.assert_close(plain, direct)  # our path == ZImagePipeline's own (hidden_states[-2], no padding)
    assert thought.shape[0] > plain.shape[0]
    null = from_pipeline(pipe, 32, system_prompt="be vivid").backbone.null_features
    torch.testing.assert_close(null, encode_prompts(pipe.tokenizer, pipe.text_encoder, [""], 512, "be vivid")[0])


def test_loading_errors_name_the_fix(folders, tmp_path, monkeypatch):
    paths = folders[0]
    with pytest.raises(UserError, match="does not exist"):
        load_pipeline(str(tmp_path / "absent"), "zimage")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no model_index.json"):
        load_pipeline(str(tmp_path / "empty"), "zimage")
    with pytest.raises(UserError, match="holds a StableDiffusionXLPipeline.*teacher.family"):
        load_pipeline(str(paths["sdxl"]), "zimage")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        load_pipeline("nobody/not-in-the-cache", "zimage")
    broken = tmp_path / "broken"
    shutil.copytree(paths["lumina2"], broken)
    for f in (broken / "transformer").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(UserError, match="cannot load the Lumina2Pipeline"):
        load_pipeline(str(broken), "lumina2")
    assert main(["ablation", "--scale", "zimage", "--steps", "1", "--set", "wandb=disabled"]) == 2  # no source: told how


def test_eval_coco_of_a_student(folders, tmp_path):
    root = folders[2]
    run = _only_run(root, "zimage")
    coco = make_coco(tmp_path / "coco", n_images=6)
    config, weights = save_tiny_clip(tmp_path / "clip")
    args = ["eval-coco", "--run", str(run), "--coco", str(coco), "--n", "5", "--resolution", "64", "--batch", "3",
            "--clip-model", str(config), "--clip-weights", str(weights), "--teacher-images", "2", "--teacher-steps", "4",
            "--diversity", "0"]  # COCO's own layout: the val2014-seeded protocol (DMD2's: tests/test_eval_protocols.py)
    assert main(args) == 0
    results = json.loads((run / "coco10k" / "results.json").read_text())
    assert results["protocol"] == "val2014-seeded" and results["n"] == 5 and results["fid"] > 0
    assert -1 <= results["clip_score"] <= 1 and results["teacher"]["compared_prompts"] == 2
    assert results["hsv_saturation_vs_teacher"] > 0  # a full fine-tuning student: its teacher loaded on its own
    assert len(list((run / "coco10k" / "images").glob("*.png"))) == 5


@pytest.mark.parametrize("family", ["zimage", "lumina2", "sdxl", "zimage-lora"])
def test_export_samples_like_make_sample_in_plain_diffusers(folders, family, tmp_path, capsys):
    """zimage / lumina2: full fine-tuning, euler students (their recipes); sdxl and zimage-lora: LoRA (sdxl: renoise,
    LCMScheduler)."""
    from diffusers import DiffusionPipeline

    from ddmd_lab.training.generate import student_sampler

    if family == "zimage-lora":  # a LoRA run of a transformer family, exported through its own LoRA loader
        family = "zimage"
        runs = tmp_path / "lora-runs"
        assert main(["ablation", "--scale", "zimage", "--steps", "1", *_sets(folders, "zimage", "lora.rank=2",
                                                                               f"runs_dir={runs}")]) == 0
        run = next((runs / "zimage" / "decoupled_hybrid").iterdir())
    else:
        run = _only_run(folders[2], family)
    out = tmp_path / "export"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert main(["export", "--run", str(run), "--out", str(out)]) == 2  # never over an existing folder
    assert "already exists" in capsys.readouterr().err
    call = json.loads((out / "ddmd_export.json").read_text())["call"]
    card = (out / "README.md").read_text()
    assert "decoupled_hybrid" in card and all(k in card for k in call)
    pipe = DiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    sampler = student_sampler(run, device="cpu")
    # the size that gives our latents (Lumina2Pipeline assumes the real VAE's factor 8; the tiny VAE's is 2)
    side = sampler.model.backbone.sample_shape[-1] * pipe.vae_scale_factor
    with torch.no_grad():  # make sample's seed: the pipeline draws its latents (and LCM's noise) from the same generator
        ours = sampler(["a cat"], generator=torch.Generator().manual_seed(3))
        theirs = pipe("a cat", height=side, width=side, generator=torch.Generator().manual_seed(3), output_type="pt",
                      **call).images
    torch.testing.assert_close(ours, theirs * 2 - 1, atol=2e-4, rtol=0)
    if (out / "student_lora").is_dir():  # the adapter alone, on the teacher, with the export's scheduler
        base = DiffusionPipeline.from_pretrained(folders[0][family])
        base.set_progress_bar_config(disable=True)
        base.load_lora_weights(out / "student_lora")
        base.scheduler = pipe.scheduler
        with torch.no_grad():
            lora = base("a cat", height=side, width=side, generator=torch.Generator().manual_seed(3), output_type="pt",
                        **call).images
        torch.testing.assert_close(lora, theirs, atol=2e-4, rtol=0)
