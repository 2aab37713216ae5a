"""Real-model inputs that would fail late or unclearly: each stops (or warns) with one sentence naming
the fix, before any weights load or any long work starts.  Tiny saved pipelines stand in for the real
checkpoints (tests/tiny_pipelines.py); loading one is refused here (``no_loading``) wherever the check
must come first."""
import pickle
import warnings

import numpy as np
import pytest
from PIL import Image

from ddmd_lab.commands.cli import main
from ddmd_lab.config import load_config, parse_overrides
from ddmd_lab.errors import UserError
from ddmd_lab.training.run import check_run_inputs
from ddmd_lab.scales import text2image

from .tiny_coco import make_coco


def cfg_of(pipeline_folders, tmp_path, family="zimage", arm="decoupled_hybrid", prompts=None, *extra):
    items = [f"teacher.source={pipeline_folders[family]}", "teacher.resolution=32", "teacher.dtype=float32",
             "teacher.text_dtype=float32", f"cache_dir={tmp_path / 'cache'}", f"runs_dir={tmp_path / 'runs'}",
             "wandb=disabled", "accelerator=cpu", *([f"data.prompts={prompts}"] if prompts else []), *extra]
    return load_config(family, arm, parse_overrides(items))


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a pipeline's weights fails the test: the check under test must have stopped before."""
    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline's weights were loaded before the input was checked")

    monkeypatch.setattr(text2image, "load_pipeline", refuse)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a photo of a cat\na red bus on a street\n")
    return path


def test_an_empty_or_unreadable_prompts_file(pipeline_folders, tmp_path, no_loading, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n\n")
    with pytest.raises(UserError, match=r"prompt file .*empty.txt holds no prompts .* write one prompt per line"):
        check_run_inputs(cfg_of(pipeline_folders, tmp_path, prompts=empty))
    binary = tmp_path / "prompts.bin.txt"
    binary.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(UserError, match=r"cannot be read as UTF-8 text \(UnicodeDecodeError\)"):
        check_run_inputs(cfg_of(pipeline_folders, tmp_path, prompts=binary))
    captions = tmp_path / "captions.json"
    captions.write_text('{"annotations": []}')
    with pytest.raises(UserError, match="holds no prompts"):
        check_run_inputs(cfg_of(pipeline_folders, tmp_path, prompts=captions))
    # from the command line: one line, exit 2, no run folder
    args = ["ablation", "--scale", "zimage", "--steps", "1"]
    for item in [f"teacher.source={pipeline_folders['zimage']}", "teacher.resolution=32", f"data.prompts={empty}",
                 f"runs_dir={tmp_path / 'runs'}", f"cache_dir={tmp_path / 'cache'}", "wandb=disabled"]:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: prompt file") and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_coco_captions_naming_missing_or_unreadable_images(pipeline_folders, tmp_path, no_loading):
    """A GAN arm's real images (checked by check_run_inputs, before the VAE encodes any), and both
    eval-coco protocols' reference images (checked before any Inception feature is computed)."""
    from ddmd_lab.eval.protocols.coco import coco_subset, resolve_coco
    from ddmd_lab.eval.protocols.dmd2 import resolve_dmd2

    root = make_coco(tmp_path / "coco", n_images=5)
    captions, images = resolve_coco(root)
    files = sorted(images.iterdir())
    files[1].write_bytes(b"")  # an interrupted download
    files[3].write_bytes(b"<html>404</html>")  # not an image
    with pytest.raises(UserError, match=r"2 of 5 real images cannot be read, e\.g\. .*jpg; replace or remove them"):
        check_run_inputs(cfg_of(pipeline_folders, tmp_path, "zimage", "decoupled_hybrid_gan", captions))
    with pytest.raises(UserError, match=r"2 of 5 COCO images cannot be read as images, e\.g\. .*; re-download them"):
        coco_subset(captions, images, n=5)
    files[0].unlink()
    with pytest.raises(UserError, match=r"1 of the 5 images captions_val2014.json names are missing"):
        check_run_inputs(cfg_of(pipeline_folders, tmp_path, "zimage", "decoupled_hybrid_gan", captions))

    subset = tmp_path / "coco10k" / "subset"
    subset.mkdir(parents=True)
    for k in range(3):
        Image.fromarray(np.full((40, 50, 3), 60 * k, np.uint8)).save(subset / f"{k:012d}.jpg")
    (tmp_path / "coco10k" / "all_prompts.pkl").write_bytes(pickle.dumps(["a", "b", "c"]))
    (subset / "000000000001.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(UserError, match=r"1 of 3 reference images in .*subset cannot be read as images, "
                                        r"e\.g\. 000000000001.jpg; re-extract DMD2's coco10k.zip"):
        resolve_dmd2(tmp_path)


def test_a_resolution_the_vae_and_patching_cannot_take(pipeline_folders, tmp_path, prompts, no_loading):
    """Tiny checkpoints: VAE factor 2 (two blocks), transformers patch 2 (so multiples of 4), SDXL's UNet any."""
    with pytest.raises(UserError, match=r"resolution 34 does not fit this checkpoint: it must be a multiple of 4 "
                                        r"\(VAE factor 2 x patch 2\); set teacher.resolution, e\.g\. 32 or 36"):
        check_run_inputs(cfg_of(pipeline_folders, tmp_path, "zimage", "decoupled_hybrid", prompts, "teacher.resolution=34"))
    with pytest.raises(UserError, match="resolution 34 does not fit"):  # sampling and export check it first too
        text2image.load_model(cfg_of(pipeline_folders, tmp_path, "lumina2", "decoupled_hybrid", prompts,
                                     "teacher.resolution=34"))
    with pytest.raises(UserError, match=r"multiple of 2 \(VAE factor 2 x patch 1\)"):
        check_run_inputs(cfg_of(pipeline_folders, tmp_path, "sdxl", "decoupled_hybrid", prompts, "teacher.resolution=33"))
    check_run_inputs(cfg_of(pipeline_folders, tmp_path, "sdxl", "decoupled_hybrid", prompts, "teacher.resolution=34"))


def test_a_folder_of_another_family(pipeline_folders, tmp_path, prompts, no_loading):
    cfg = cfg_of(pipeline_folders, tmp_path, "zimage", "decoupled_hybrid", prompts,
                 f"teacher.source={pipeline_folders['sdxl']}")
    with pytest.raises(UserError, match=r"holds a StableDiffusionXLPipeline, not the ZImagePipeline of family "
                                        r"'zimage'; set teacher.family to match"):
        check_run_inputs(cfg)
    with pytest.raises(UserError, match="holds a StableDiffusionXLPipeline"):
        text2image.load_model(cfg)


def test_a_lora_target_that_matches_no_module(pipeline_folders, tmp_path, prompts, no_loading):
    """Checked on the checkpoint's denoiser built from its config on the meta device; one unmatched
    name among matching ones is refused too (peft would skip it and leave those layers frozen)."""
    for family, net in (("zimage", "ZImageTransformer2DModel"), ("sdxl", "UNet2DConditionModel")):
        cfg = cfg_of(pipeline_folders, tmp_path, family, "decoupled_hybrid", prompts,
                     "lora={rank: 2, targets: [to_q, to_qq]}")
        with pytest.raises(UserError, match=rf"lora.targets \['to_qq'\] match no module of {net} \(its linear / conv "
                                            r"layers end in e\.g\. .*to_q.*\); name those"):
            check_run_inputs(cfg)
    check_run_inputs(cfg_of(pipeline_folders, tmp_path, "zimage", "decoupled_hybrid", prompts,
                        "lora={rank: 2, targets: [to_q, to_out.0]}"))


def test_the_lora_target_check_on_the_loaded_network(pipeline_folders, tmp_path, prompts):
    from ddmd_lab.training.module import DistillModule

    cfg = cfg_of(pipeline_folders, tmp_path, "lumina2", "decoupled_hybrid", prompts, "lora={rank: 2, targets: [nope]}")
    with pytest.raises(UserError, match=r"lora.targets \['nope'\] match no module of Lumina2Transformer2DModel"):
        DistillModule(text2image.load_model(cfg, fresh=True).backbone, cfg)


@pytest.mark.parametrize("family", ["zimage", "lumina2", "sdxl"])
def test_prompts_longer_than_the_text_window_say_what_is_cut(pipeline_folders, tmp_path, family):
    """A warning before encoding: how many, what one of them loses, and the setting that widens the
    window (Z-Image and Lumina2: teacher.max_length; SDXL's CLIP: fixed, here 32 tokens)."""
    long = "a photo of a cat " * 12 + "THE END"
    path = tmp_path / "prompts.txt"
    path.write_text(f"a photo of a cat\n{long}\na red bus on a street\n")
    # windows the short prompts fit (Lumina2's default system prompt takes ~150 of the tiny tokenizer's tokens)
    window = {"zimage": 40, "lumina2": 200, "sdxl": None}[family]
    extra = [f"teacher.max_length={window}"] if window else []
    cfg = cfg_of(pipeline_folders, tmp_path, family, "decoupled_hybrid", path, *extra)
    model = text2image.load_model(cfg, fresh=True)
    cut = model.truncated([long, "a photo of a cat"])
    assert list(cut) == [long] and cut[long].endswith("THE END") and long.endswith(cut[long])
    fix = rf"raise teacher.max_length \(now {window}\)" if window else "this encoder's 32 tokens are fixed"
    with pytest.warns(UserWarning, match=rf"1 of 3 training prompts are longer than the text encoder's window of "
                                         rf"\d+ tokens .* loses '.*THE END'; shorten them.*{fix}"):
        text2image.condition_loader(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # once per model and prompt list: the loader's model again, with the same prompts
        text2image.warn_truncated(text2image.load_model(cfg, training=True), text2image.read_prompts(str(path)))


def test_alpha_below_one_with_the_ca_term_warns(tmp_path):
    cfg = load_config("toy2d", "decoupled_hybrid", parse_overrides(["alpha=0.5"]))
    with pytest.warns(UserWarning, match=r"alpha=0.5 is below 1, and arm 'decoupled_hybrid' uses the CA term: its "
                                         r"\(alpha - 1\) factor turns negative"):
        check_run_inputs(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_run_inputs(load_config("toy2d", "dm_only", parse_overrides(["alpha=0.5"])))  # no CA: nothing to say
        check_run_inputs(load_config("toy2d", "decoupled_hybrid", parse_overrides(["alpha=1"])))


def test_clip_weights_of_another_model_are_refused_before_sampling(pipeline_folders, tmp_path, monkeypatch, capsys):
    """eval-coco with a CLIP_WEIGHTS file of another open_clip model: one sentence, before the reference
    features, the teacher's images or the student load (tests/test_coco.py covers the scorer itself)."""
    from ddmd_lab.config import save_config
    from ddmd_lab.commands import evaluate

    from .tiny_coco import save_tiny_clip

    def refuse(*args, **kwargs):
        raise AssertionError("sampling started before the CLIP weights were checked")

    monkeypatch.setattr(evaluate, "_teacher", refuse)
    monkeypatch.setattr(evaluate, "sampler_from_args", refuse)
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg_of(pipeline_folders, tmp_path), run / "config.yaml")
    _, weights = save_tiny_clip(tmp_path / "clip")  # a tiny model's weights, not ViT-B-32's
    coco = make_coco(tmp_path / "coco", n_images=3)
    assert main(["eval-coco", "--run", str(run), "--coco", str(coco), "--n", "3", "--clip-model", "ViT-B-32",
                 "--clip-weights", str(weights)]) == 2
    err = capsys.readouterr().err.strip()
    assert "do not fit open_clip model ViT-B-32" in err and "pass the checkpoint that matches the model" in err
    assert "\n" not in err and not (run / "coco10k").exists()
