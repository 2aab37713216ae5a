"""The papers' evaluation protocols, pinned transform by transform: DMD2's COCO-10k (8 bits, Lanczos,
patch-FID crops, the CLIP prefix splice and 256-Lanczos), HPSv2.1 (its ResizeMaxSize preprocessing
and x100 benchmark), colour metrics, diversity; and the whole CLI on a tiny SDXL student."""
import json
import math
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from ddmd_lab.errors import UserError
from ddmd_lab.eval.protocols import dmd2
from ddmd_lab.eval.clip_score import ClipScorer, prefixed_tokens
from ddmd_lab.eval.fid import InceptionFeatures as RealInception

from .tiny_coco import make_coco, save_tiny_clip

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def tokenizer():
    import open_clip

    return open_clip.get_tokenizer("ViT-g-14")  # no weights: the BPE ships with open_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


# ----------------------------------------------------------------------------- CLIP score: text

def test_prefix_splice_gives_dmd2s_token_sequences(tokenizer):
    """The expected rows are written out from the BPE pieces: [start, a, photo, depicts, caption..., end, 0...],
    cut to 77 with the last kept position forced to end-of-text."""
    prefix = tokenizer.encode("a photo depicts")
    assert prefix == [320, 1125, 29340]  # 3 tokens: DMD2 takes [1:4] of the prefix's tokenisation
    cat = tokenizer.encode("cat")[0]
    captions = ["A cat on a sofa.", "Two dogs playing in the snow", "cat " * 70, "cat " * 72, "cat " * 73,
                "a very long caption " * 30]
    got = prefixed_tokens(tokenizer, captions, dmd2.PREFIX)
    assert got.shape == (6, 77) and got.dtype == torch.long

    def row(body):
        r = [SOT, *prefix, *body, EOT]
        return r + [0] * (77 - len(r))

    assert got[0].tolist() == row(tokenizer.encode("a cat on a sofa."))
    assert got[1].tolist() == row(tokenizer.encode("two dogs playing in the snow"))
    assert got[2].tolist() == row([cat] * 70)  # 75 tokens: fits, padding after
    assert got[3].tolist() == [SOT, *prefix, *[cat] * 72, EOT]  # exactly 77: the end token lands on position 76
    assert got[4].tolist() == [SOT, *prefix, *[cat] * 72, EOT]  # one word too many: cut, end token kept at 76
    long = tokenizer.encode("a very long caption " * 30)
    assert len(long) > 77 and got[5].tolist() == [SOT, *prefix, *long[:72], EOT]
    plain = tokenizer(captions)
    assert (got[:, 0] == SOT).all() and not torch.equal(got, plain)  # the prefix is there
    assert ((got == EOT).sum(1) == 1).all()  # one end token per row: encode_text pools there


def test_dmd2_clip_score_matches_an_independent_computation(tiny_clip, tokenizer):
    import open_clip

    config, weights = tiny_clip
    scorer = ClipScorer(config, weights=weights, batch_size=3, prefix=dmd2.PREFIX, resize=256)
    plain = ClipScorer(config, weights=weights)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (90, 130, 3), dtype=np.uint8) for _ in range(4)]
    u8 = np.stack(images)
    captions = ["a cat", "a dog on a sofa", "two birds", "a red car " * 20]

    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip-test")
    model.load_state_dict(torch.load(weights))
    model.eval()
    with torch.no_grad():
        # DMD2: CenterCropLongEdge (torchvision center_crop to the short side), PIL Lanczos to 256, then preprocess
        pix = torch.stack([preprocess(TF.center_crop(Image.fromarray(x), 90).resize((256, 256), Image.LANCZOS))
                           for x in images])
        tok = tokenizer(captions)
        spliced = torch.cat([tok[:, :1], tokenizer(["A photo depicts "])[:, 1:4].expand(4, -1), tok[:, 1:]], 1)[:, :77]
        spliced[:, 76][spliced[:, 76] > 0] = EOT
        cos = torch.nn.functional.cosine_similarity(model.encode_image(pix), model.encode_text(spliced), dim=-1)
    torch.testing.assert_close(scorer.cosines(u8, captions), cos, atol=1e-5, rtol=0)
    assert scorer.scores(u8, captions).mean().item() == pytest.approx(100 * cos.mean().item(), abs=1e-3)
    assert not torch.allclose(plain.cosines(u8, captions), cos, atol=1e-4)  # prefix + 256 Lanczos change the number
    feats = scorer.image_features(u8)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(4))


# ----------------------------------------------------------------------------- FID transforms

def _structured(h, w, seed):
    """Smooth colour gradients plus fine detail: what downsampling filters treat differently."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(x / (3 + c) + y / (5 + c) + c) for c in range(3)], -1) * 100 + 128
    return np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)


def test_fid_transform_is_a_centre_square_then_lanczos_and_changes_the_statistics():
    from .test_coco import LeadingFeatures

    img = _structured(161, 232, 0)
    out = dmd2.fid_transform(img, 64)
    # torchvision's centre offset: int(round((232 - 161) / 2)) = int(round(35.5)) = 36 (a floor division gives 35)
    square = Image.fromarray(img[:, 36:36 + 161])
    assert np.array_equal(out, np.array(square.resize((64, 64), Image.LANCZOS)))
    assert not np.array_equal(out, np.array(square.resize((64, 64), Image.BICUBIC)))
    assert np.array_equal(dmd2.fid_transform(img[:, :161], 161), img[:, :161])  # square at size: unchanged
    # what FID sees: Inception statistics of Lanczos- and bicubic-resized sets differ
    images = [_structured(200 + 7 * k, 150 + 3 * k, k) for k in range(6)]
    feats = LeadingFeatures(256)
    lanczos = feats.of_uint8([dmd2.fid_transform(x, 48) for x in images])
    bicubic = feats.of_uint8([np.array(dmd2.center_crop_long_edge(Image.fromarray(x)).resize((48, 48), Image.BICUBIC))
                              for x in images])
    assert np.abs(lanczos.mean(0) - bicubic.mean(0)).max() > 1e-3


def test_patch_fid_crops_299_without_resizing():
    img = np.random.default_rng(1).integers(0, 256, (350, 400, 3), dtype=np.uint8)
    patch = dmd2.patch_transform(img)
    # offsets int(round(51 / 2)) = 26 (rows), int(round(101 / 2)) = 50 (columns)
    assert patch.shape == (299, 299, 3) and np.array_equal(patch, img[26:26 + 299, 50:50 + 299])
    small = img[:250]  # a side under 299: passed whole, as DMD2's code does
    assert np.array_equal(dmd2.patch_transform(small), small)
    exact = img[:299, :299]
    assert np.array_equal(dmd2.patch_transform(exact), exact)


def test_dmd2_eight_bits_truncate():
    x = torch.tensor([100.7, 0.2, 254.9, 255.0, -3.0, 300.0]) / 127.5 - 1
    u8 = dmd2.to_uint8_truncated(x.view(1, 1, 1, 6).expand(1, 3, 1, 6))
    assert u8.shape == (1, 1, 6, 3) and u8[0, 0, :, 0].tolist() == [100, 0, 254, 255, 0, 255]


# ----------------------------------------------------------------------------- DMD2's files

def make_dmd2(root, n=6, seed=0, prompts=None):
    """A small folder in DMD2's coco10k layout: subset/ (JPEGs of mixed sizes, one above 299) and all_prompts.pkl."""
    (root / "coco10k" / "subset").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        h, w = (320, 340) if k == 0 else (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
        Image.fromarray(_structured(h, w, 100 + k)).save(root / "coco10k" / "subset" / f"{k:012d}.jpg", quality=95)
    prompts = prompts or [f"a photo number {k} of a cat" for k in range(n)]
    (root / "coco10k" / "all_prompts.pkl").write_bytes(pickle.dumps(prompts))
    return root


def test_dmd2_layout_is_detected_and_errors_name_what_is_missing(tmp_path):
    from ddmd_lab.commands.evaluate import choose_protocol

    root = make_dmd2(tmp_path / "ckpt", n=3, prompts=["a", None, "b c"])
    data = dmd2.resolve_dmd2(root)  # the folder above coco10k
    assert data.prompts == ["a", "", "b c"] and len(data.reference_files) == 3
    assert dmd2.resolve_dmd2(root / "coco10k").reference_hash() == data.reference_hash()
    assert choose_protocol(root, None) == "dmd2"
    assert choose_protocol(make_coco(tmp_path / "coco", n_images=2), None) == "val2014-seeded"
    with pytest.raises(UserError, match="neither DMD2's COCO-10k files"):
        choose_protocol(tmp_path, None)
    txt = tmp_path / "captions.txt"
    txt.write_text("one\n\n  two  \n")
    assert dmd2.resolve_dmd2(root, txt).prompts == ["one", "two"]  # SDTextDataset: stripped, blanks skipped
    (root / "coco10k" / "all_prompts.pkl").unlink()
    with pytest.raises(UserError, match="all_prompts.pkl is missing"):
        dmd2.resolve_dmd2(root)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps([Image.new("RGB", (1, 1))]))
    with pytest.raises(UserError, match="not DMD2's prompts pickle"):
        dmd2.read_prompts_file(evil)
    with pytest.raises(UserError, match="no DMD2 reference folder"):
        dmd2.resolve_dmd2(tmp_path / "coco")


# ----------------------------------------------------------------------------- HPSv2.1

def test_hps_preprocess_is_hpsv2s_resize_max_size():
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from ddmd_lab.eval.protocols.hps import hps_preprocess

    img = _structured(150, 300, 2)  # wide: the longest side goes to 224, 112 rows, padded to 224 centred
    x = hps_preprocess(Image.fromarray(img))
    assert x.shape == (3, 224, 224)
    black = (-torch.tensor(OPENAI_DATASET_MEAN) / torch.tensor(OPENAI_DATASET_STD)).view(3, 1)
    torch.testing.assert_close(x[:, :56].flatten(1), black.expand(3, 56 * 224))
    torch.testing.assert_close(x[:, 168:].flatten(1), black.expand(3, 56 * 224))
    resized = TF.resize(TF.to_tensor(img), [112, 224], interpolation=TF.InterpolationMode.BICUBIC)  # on the tensor
    torch.testing.assert_close(x[:, 56:168], TF.normalize(resized, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD))
    square = hps_preprocess(Image.fromarray(_structured(448, 448, 3)))
    assert not torch.isclose(square[:, :2], black.view(3, 1, 1)).all()  # square: no padding


@pytest.fixture(scope="module")
def tiny_hps(tmp_path_factory, tiny_clip):
    """The tiny open_clip model with other random weights, saved as HPSv2 saves its checkpoints."""
    import open_clip

    torch.manual_seed(1)
    model = open_clip.create_model("tiny-clip-test")
    path = tmp_path_factory.mktemp("hps") / "HPS_tiny.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return tiny_clip[0], path


def test_hps_score_and_benchmark_table(tiny_hps):
    import open_clip

    from ddmd_lab.eval.protocols.hps import HpsScorer, benchmark_scores, hps_preprocess

    config, weights = tiny_hps
    scorer = HpsScorer(config, weights, batch_size=2)
    u8 = np.stack([_structured(64, 96, k) for k in range(3)])
    prompts = ["a cat", "a painting of a dog", "an anime girl"]
    model = open_clip.create_model("tiny-clip-test")
    model.load_state_dict(torch.load(weights)["state_dict"])
    model.eval()
    with torch.no_grad():
        img = model.encode_image(torch.stack([hps_preprocess(Image.fromarray(x), 32) for x in u8]), normalize=True)
        txt = model.encode_text(open_clip.get_tokenizer("tiny-clip-test")(prompts), normalize=True)
    torch.testing.assert_close(scorer.cosines(u8, prompts), torch.diagonal(img @ txt.T), atol=1e-5, rtol=0)
    cos = np.array([0.30] * 80 + [0.32] * 80 + [0.28] * 10)
    table = benchmark_scores(cos, ["anime"] * 160 + ["photo"] * 10)
    assert table["hpsv21_anime"] == pytest.approx(31.0) and table["hpsv21_anime_chunk_std"] == pytest.approx(1.0)
    assert table["hpsv21_photo"] == pytest.approx(28.0) and table["hpsv21"] == pytest.approx(100 * cos.mean())
    with pytest.raises(UserError, match="HPS_WEIGHTS="):
        HpsScorer(config, weights.parent / "absent.pt")
    with pytest.raises(UserError, match="do not fit"):
        HpsScorer("ViT-B-32", weights)


def test_hps_prompt_files(tmp_path):
    from ddmd_lab.eval.protocols.hps import read_hps_prompts

    bench = tmp_path / "benchmark"
    bench.mkdir()
    (bench / "anime.json").write_text(json.dumps(["a", "b"]))
    (bench / "photo.txt").write_text("c\n\nd\n")
    assert read_hps_prompts(bench) == {"anime": ["a", "b"], "photo": ["c", "d"]}
    (tmp_path / "all.json").write_text(json.dumps({"paintings": ["x"], "photo": ["y", "z"]}))
    assert read_hps_prompts(tmp_path / "all.json") == {"paintings": ["x"], "photo": ["y", "z"]}
    assert read_hps_prompts(bench / "photo.txt") == {"all": ["c", "d"]}
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="none of the HPSv2 benchmark files"):
        read_hps_prompts(tmp_path / "empty")
    with pytest.raises(UserError, match="not found"):
        read_hps_prompts(tmp_path / "absent")


# ----------------------------------------------------------------------------- colour, diversity

def test_colour_metrics_on_known_colours():
    from ddmd_lab.eval.colour import colour_stats, mean_stats, relative

    red = np.zeros((1, 4, 4, 3), np.uint8)
    red[..., 0] = 255
    grey = np.full((1, 4, 4, 3), 128, np.uint8)
    halves = np.zeros((1, 4, 4, 3), np.uint8)
    halves[:, :2] = 255
    yellowish = np.full((1, 4, 4, 3), (140, 130, 100), np.uint8)
    s = colour_stats(np.concatenate([red, grey, halves, yellowish]))
    assert s["hsv_saturation"][:3] == pytest.approx([1.0, 0.0, 0.0], abs=1e-4)
    assert [s[f"clipped_{c}"][0] for c in "rgb"] == [1.0, 1.0, 1.0] and s["clipped"][1] == 0.0
    assert s["lab_a"][0] == pytest.approx(80.1, abs=0.2) and s["lab_b"][0] == pytest.approx(67.2, abs=0.2)  # sRGB red
    assert abs(s["lab_a"][1]) < 0.05 and abs(s["lab_b"][1]) < 0.05  # neutral grey: no cast
    assert s["lab_b"][3] > 10  # a yellow cast is b* > 0
    assert s["rms_contrast"][2] == pytest.approx(0.5 * math.sqrt(16 / 15), abs=1e-4)  # half black, half white
    grey_model = torch.zeros(2, 1, 8, 8)
    grey_model[0, :, :4] = 1.0
    g = colour_stats(grey_model)  # one channel (the image scales): clipped and contrast only
    assert set(g) == {"clipped", "rms_contrast"} and g["clipped"][0] == 0.5
    a, b = mean_stats(colour_stats(np.concatenate([red, yellowish]))), mean_stats(colour_stats(yellowish))
    rel = relative(a, b, "vs_teacher")
    assert rel["hsv_saturation_vs_teacher"] == pytest.approx(a["hsv_saturation"] / b["hsv_saturation"])
    assert rel["lab_b_vs_teacher"] == pytest.approx(a["lab_b"] - b["lab_b"])


def test_pairwise_diversity():
    from ddmd_lab.eval.protocols.prompt_eval import Plan, keyed_noise, mean_pairwise

    f = np.array([[0, 0], [3, 4], [1, 0], [1, 0]], float)  # prompt 1: two images 5 apart; prompt 2: identical
    assert mean_pairwise(f, 2, "l2") == pytest.approx(2.5)
    assert mean_pairwise(np.array([[1, 0], [0, 1], [1, 0], [-1, 0]], float), 2, "cosine") == pytest.approx(1.5)
    plan = Plan.make(10, 3, 2, 3)
    assert plan.teacher_index == [0, 4, 9] and plan.div_keys == [(0, 1), (0, 2), (0, 3), (9, 1), (9, 2), (9, 3)]
    a = keyed_noise((2, 3), 7, [(0,), (5,)])
    assert torch.equal(a[1], keyed_noise((2, 3), 7, [(5,)])[0])  # an image's noise does not depend on its batch
    assert not torch.equal(a[0], keyed_noise((2, 3), 8, [(0,)])[0]) and not torch.equal(a[0], a[1])


# ----------------------------------------------------------------------------- the CLI, end to end

class Leading:
    """The real Inception network, its first 64 features: the Frechet distance of 2048-d covariances takes
    ~30 s per FID on 2 cores; patched into the CLI for these tests."""

    def __init__(self, device="cpu", batch_size=8, progress=False):
        self.inner, self.batch_size = RealInception(device, batch_size=8), 8

    def of_uint8(self, u8):
        return self.inner.of_uint8(u8)[:, :64]


@pytest.fixture(scope="module")
def sdxl_run(pipeline_folders, tmp_path_factory):
    from ddmd_lab.commands.cli import main

    root = tmp_path_factory.mktemp("sdxl_eval")
    prompts = root / "prompts.txt"
    prompts.write_text("a photo of a cat\na red bus on a street\n")
    sets = [f"teacher.source={pipeline_folders['sdxl']}", "teacher.resolution=32", "teacher.text_dtype=float32",
            f"data.prompts={prompts}", "accelerator=cpu", "precision=32-true", "wandb=disabled", "batch_size=2",
            "eval_every=1", "ttur=1", "eval_samples=4", "gradient_checkpointing=false", f"runs_dir={root / 'runs'}",
            f"cache_dir={root / 'cache'}", "progress_bar=false", "checkpoint_every=0", "lora.rank=2"]
    assert main(["ablation", "--scale", "sdxl", "--steps", "1", *[a for s in sets for a in ("--set", s)]]) == 0
    return next((root / "runs" / "sdxl" / "decoupled_hybrid").iterdir())


def test_eval_coco_dmd2_of_a_student_from_the_cli(sdxl_run, tiny_clip, tiny_hps, tmp_path, monkeypatch):
    import ddmd_lab.eval.fid as fid
    import ddmd_lab.training.generate as generate
    from ddmd_lab.commands.cli import main

    monkeypatch.setattr(fid, "InceptionFeatures", Leading)
    data = make_dmd2(tmp_path / "dmd2", n=6)
    config, weights = tiny_clip
    common = ["--coco", str(data), "--resolution", "48", "--batch", "4", "--clip-model", str(config),
              "--clip-weights", str(weights), "--hps-model", str(tiny_hps[0]), "--hps-weights", str(tiny_hps[1])]
    args = ["eval-coco", "--run", str(sdxl_run), "--n", "5", "--teacher-images", "3", "--teacher-steps", "6",
            "--diversity", "2", "--diversity-seeds", "2", *common]
    assert main(args) == 0
    r = json.loads((sdxl_run / "coco10k" / "results.json").read_text())
    assert r["protocol"] == "dmd2" and r["n"] == 5 and r["data"]["n_reference"] == 6 and r["resolution"] == 48
    assert set(r["transforms"]) >= {"uint8", "fid", "patch_fid", "clip_image", "clip_text", "clip_score"}
    assert r["fid"] > 0 and r["patch_fid"] > 0 and r["fid"] != r["patch_fid"]
    assert -1 <= r["clip_score"] <= 1 and r["clip_score_x100"] == pytest.approx(100 * r["clip_score"])
    assert r["clip_prefix"] == "A photo depicts " and -100 <= r["hpsv21"] <= 100
    for k in ("hsv_saturation", "clipped_r", "lab_a", "lab_b", "rms_contrast", "hsv_saturation_vs_teacher",
              "lab_b_vs_teacher", "rms_contrast_vs_teacher", "clipped_vs_teacher", "diversity_inception",
              "diversity_clip", "diversity_clip_vs_teacher", "teacher_hsv_saturation"):
        assert math.isfinite(r[k]), k
    assert r["teacher"]["compared_prompts"] == 3 and r["teacher"]["steps"] == 6
    assert r["diversity"] == {**r["diversity"], "prompts": 2, "seeds": 2}
    assert len(list((sdxl_run / "coco10k" / "images").glob("*.png"))) == 5
    assert r["image_shape"] == [32, 32, 3]  # full resolution kept (patch-FID reads it)

    # again: the teacher's images come from the cache (loading the teacher would fail now)
    def no_teacher(*a, **k):
        raise AssertionError("the teacher was loaded although its images are cached")

    monkeypatch.setattr(generate, "teacher_sampler", no_teacher)
    assert main(args) == 0
    again = json.loads((sdxl_run / "coco10k" / "results.json").read_text())
    for k in ("fid", "patch_fid", "clip_score", "hpsv21", "hsv_saturation_vs_teacher", "diversity_clip"):
        assert again[k] == pytest.approx(r[k], rel=1e-6), k  # the same noise, the same images
    assert len(list(sdxl_run.glob("coco10k.replaced-*"))) == 1

    # the reference set scored as if generated: FID and patch-FID ~0 through the same command
    out = tmp_path / "self"
    assert main(["eval-coco", "--images", str(data / "coco10k" / "subset"), "--out", str(out), "--n", "6",
                 "--set", f"cache_dir={tmp_path / 'cache'}", *common]) == 0
    assert len(list((tmp_path / "cache" / "coco").glob("dmd2_ref_*.npz"))) == 2  # FID and patch-FID references
    own = json.loads((out / "coco10k" / "results.json").read_text())
    assert abs(own["fid"]) < 1e-3 and abs(own["patch_fid"]) < 1e-3 and own["fid"] * 1e3 < r["fid"]
    assert own["teacher"] is None and own["diversity"] is None and own["source"]["images"]


def test_eval_hps_and_dpg_from_the_cli(sdxl_run, tiny_hps, tmp_path, monkeypatch, capsys):
    import ddmd_lab.eval.fid as fid
    from ddmd_lab.commands.cli import main

    monkeypatch.setattr(fid, "InceptionFeatures", Leading)
    bench = tmp_path / "benchmark"
    bench.mkdir()
    for style in ("anime", "photo"):
        (bench / f"{style}.json").write_text(json.dumps([f"{style} {k}: a cat" for k in range(4)]))
    args = ["eval-hps", "--run", str(sdxl_run), "--prompts", str(bench), "--per-style", "3", "--hps-model",
            str(tiny_hps[0]), "--hps-weights", str(tiny_hps[1]), "--teacher-images", "2", "--teacher-steps", "6",
            "--diversity", "0", "--batch", "4"]
    assert main(args) == 0
    r = json.loads((sdxl_run / "hpsv21" / "results.json").read_text())
    assert r["per_style"] == {"anime": 3, "photo": 3} and r["n"] == 6
    assert r["hpsv21"] == pytest.approx((r["hpsv21_anime"] + r["hpsv21_photo"]) / 2)
    assert math.isfinite(r["hsv_saturation_vs_teacher"]) and r["teacher"]["compared_prompts"] == 2
    assert sorted(p.name for p in (sdxl_run / "hpsv21" / "images" / "photo").iterdir()) == \
        ["00000.png", "00001.png", "00002.png"]
    assert main(["eval-dpg"]) == 2 and "mPLUG" in capsys.readouterr().err
    # the teacher itself (no RUN: the scale's checkpoint), few steps: Table 1's reference row
    from ddmd_lab.config import read_config

    cfg = read_config(sdxl_run / "config.yaml")
    sets = [f"teacher.source={cfg.teacher['source']}", "teacher.resolution=32", "teacher.text_dtype=float32",
            f"runs_dir={cfg.run.runs_dir}", f"cache_dir={cfg.run.cache_dir}"]
    assert main(["eval-hps", "--scale", "sdxl", *[a for s in sets for a in ("--set", s)], "--sample-steps", "4",
                 "--prompts", str(bench), "--per-style", "2", "--hps-model", str(tiny_hps[0]), "--hps-weights",
                 str(tiny_hps[1]), "--diversity", "0", "--device", "cpu"]) == 0
    teacher = json.loads((sdxl_run.parents[2] / "sdxl" / "teacher" / "hpsv21" / "results.json").read_text())
    assert teacher["n"] == 4 and teacher["teacher"] is None and teacher["source"]["run"] is None


def test_training_evaluator_colour_vs_the_teacher(sdxl_run):
    import csv

    from ddmd_lab.config import read_config
    from ddmd_lab.report.dashboard import SECTIONS
    from ddmd_lab.scales.text2image import reference_rows

    summary = json.loads((sdxl_run / "summary.json").read_text())
    for k in ("hsv_saturation", "lab_a", "lab_b", "rms_contrast", "clipped", "hsv_saturation_vs_teacher",
              "lab_b_vs_teacher", "rms_contrast_vs_teacher", "clipped_vs_teacher"):
        assert math.isfinite(summary[k]), k
    rows = reference_rows(read_config(sdxl_run / "config.yaml"))  # the cached teacher samples: nothing sampled now
    (name, teacher), = rows.items()
    assert name == "teacher, 50-step CFG, alpha=8" and teacher["hsv_saturation"] > 0
    assert summary["hsv_saturation_vs_teacher"] == pytest.approx(summary["hsv_saturation"] / teacher["hsv_saturation"])
    with open(next(sdxl_run.glob("logs/version_*/metrics.csv"))) as f:
        logged = set(next(csv.reader(f))) | {f"final_{k}" for k in summary}
    colour = SECTIONS["Colour and contrast vs the teacher (oversaturation, colour cast)"]
    wanted = set(colour["lines"]) | {f"final_{k}" for k in colour["bars"]}
    assert wanted <= logged, wanted - logged


def test_tables_and_report_show_the_evaluations_beside_the_paper(sdxl_run, tmp_path, capsys):
    """After the two CLI tests above: make tables / make report of the sdxl runs."""
    from ddmd_lab.commands.cli import main
    from ddmd_lab.commands.report import scale_facts
    from ddmd_lab.report.report import findings
    from ddmd_lab.report.runs import require_runs
    from ddmd_lab.report.tables import paper_tables

    runs_dir = sdxl_run.parents[2]
    coco = json.loads((sdxl_run / "coco10k" / "results.json").read_text())
    hps = json.loads((sdxl_run / "hpsv21" / "results.json").read_text())
    tables = {t.title.split(":")[0]: t for t in paper_tables(runs_dir, "sdxl", scale_facts(runs_dir, "sdxl"))}
    t2, t1 = tables["Table 2"], tables["Table 1"]
    row = dict(zip(t2.columns, next(r for r in t2.rows if r[0] == "decoupled_hybrid")))
    assert row["protocol"] == "dmd2" and row["FID"] == coco["fid"] and row["patch-FID"] == coco["patch_fid"]
    assert row["CLIP x100"] == coco["clip_score_x100"] and row["HPSv2.1"] == coco["hpsv21"]
    assert row["sat. vs teacher (x)"] == coco["hsv_saturation_vs_teacher"] and row["paper FID"] == 17.80
    assert row["paper CLIP x100"] == 33.62 and row["paper HPSv2.1"] == 30.34
    four = dict(zip(t1.columns, t1.rows[4]))
    assert four["arm"] == "decoupled_hybrid" and four["HPSv2.1"] == hps["hpsv21"] and four["photo"] == hps["hpsv21_photo"]
    assert four["paper HPSv2.1"] == 32.29 and four["paper DPG"] == 85.85 and four["anime"] == hps["hpsv21_anime"]
    assert dict(zip(t1.columns, t1.rows[1]))["HPSv2.1"] is None  # coupled was not run: missing, never invented
    ref = dict(zip(t1.columns, t1.rows[0]))
    assert ref["arm"] == "teacher" and ref["HPSv2.1"] is not None and ref["paper HPSv2.1"] == 30.20
    results = tables["Every arm after the same number of generator steps"]
    assert {"hsv_saturation_vs_teacher", "lab_b_vs_teacher"} <= set(results.columns)
    assert "clipped_r" not in results.columns and any(str(r[0]).startswith("teacher, 50-step") for r in results.rows)
    lines = findings(require_runs(runs_dir, "sdxl"))
    assert any("(COCO-10k): saturation x" in line for line in lines)
    assert main(["tables", "--scale", "sdxl", "--runs-dir", str(runs_dir)]) == 0
    out = capsys.readouterr().out
    assert "| decoupled_hybrid | 4 | dmd2 |" in out and "patch-FID" in out and "paper HPSv2.1" in out
