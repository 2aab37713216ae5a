"""COCO-10k evaluation: the subset, reference processing, CLIP score (tiny open_clip model), end to end."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ddmd_lab.data.image_files import square_resize, uint8_to_signed
from ddmd_lab.errors import UserError
from ddmd_lab.eval.clip_score import ClipScorer
from ddmd_lab.eval.protocols.coco import (coco_subset, evaluate_coco, generated_batch, reference_images,
                                          reference_stats, resolve_coco)

from .tiny_coco import make_coco, save_tiny_clip


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return resolve_coco(make_coco(tmp_path_factory.mktemp("coco")))


def test_subset_is_deterministic_with_the_lowest_id_caption(coco):
    captions_json, images_dir = coco
    a, b = coco_subset(captions_json, images_dir, n=5, seed=0), coco_subset(captions_json, images_dir, n=5, seed=0)
    assert a == b and len(a) == 5
    assert coco_subset(captions_json, images_dir, n=5, seed=1) != a
    assert [p.image_id for p in a] == sorted(p.image_id for p in a)
    data = json.loads(captions_json.read_text())
    for p in a:
        anns = [x for x in data["annotations"] if x["image_id"] == p.image_id]
        assert p.caption == " ".join(min(anns, key=lambda x: x["id"])["caption"].split())
        assert p.image_file.is_file() and p.image_file.parent == images_dir
    everything = coco_subset(captions_json, images_dir, n=1000)
    assert len(everything) == 12 and len({p.image_id for p in everything}) == 12


def test_bad_coco_data_names_the_fix(tmp_path):
    root = make_coco(tmp_path / "coco", n_images=4)
    with pytest.raises(UserError, match="annotations/captions_val2014.json"):
        resolve_coco(tmp_path)
    captions_json, images_dir = resolve_coco(root)
    with pytest.raises(UserError, match="not found.*captions_val2014.json"):
        coco_subset(tmp_path / "nope.json", images_dir)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [{"file_name": "x.jpg"}], "annotations": []}')
    with pytest.raises(UserError, match="not a COCO captions file"):
        coco_subset(bad, images_dir)
    victim = sorted(images_dir.iterdir())[1]
    victim.unlink()
    with pytest.raises(UserError, match=f"1 of 4 COCO images are missing, e.g. .*{victim.name}"):
        coco_subset(captions_json, images_dir)


def test_square_resize_crops_the_centre():
    img = np.zeros((20, 60, 3), np.uint8)
    img[:, 20:40] = 255  # the centre square is white, the sides black
    assert (square_resize(Image.fromarray(img), 20) == 255).all()
    assert square_resize(Image.fromarray(img), 8).shape == (8, 8, 3)
    wide = torch.rand(2, 3, 24, 40) * 2 - 1
    assert generated_batch(wide, 16).shape == (2, 16, 16, 3) and generated_batch(wide[..., :24], 24).dtype == np.uint8
    u8 = np.random.default_rng(0).integers(0, 256, (3, 5, 5, 3), dtype=np.uint8)
    assert (generated_batch(uint8_to_signed(u8), 5) == u8).all()  # the [-1, 1] round trip is exact


# ----------------------------------------------------------------------------- CLIP score

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(config json, weights file) of a randomly initialised tiny open_clip model."""
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_clip_score_matches_an_independent_computation(tiny_clip):
    import open_clip

    config, weights = tiny_clip
    scorer = ClipScorer(config, weights=weights, batch_size=4)  # 2 batches
    images = np.random.default_rng(0).integers(0, 256, (6, 40, 48, 3), dtype=np.uint8)
    captions = ["a cat", "a dog on a sofa", "two birds", "a red car", "a bowl of soup", "mountains"]

    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip-test")
    model.load_state_dict(torch.load(weights))
    model.eval()
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(Image.fromarray(x)) for x in images]))
        txt = model.encode_text(open_clip.get_tokenizer("tiny-clip-test")(captions))
    cos = (img / img.norm(dim=-1, keepdim=True) * txt / txt.norm(dim=-1, keepdim=True)).sum(-1)
    expected = (100 * cos).mean().item()  # DMD2's protocol: mean cosine x 100

    score = scorer(images, captions)
    assert score == pytest.approx(expected, abs=1e-4) and -100.0 <= score <= 100.0
    assert (cos > 0).any()  # a random model: the check is not vacuous
    assert scorer(uint8_to_signed(images), captions) == pytest.approx(score, abs=1e-4)  # tensor input in [-1, 1]


def test_missing_clip_weights_name_the_fix(tmp_path, tiny_clip):
    with pytest.raises(UserError, match="CLIP_WEIGHTS=.*offline|offline.*CLIP_WEIGHTS="):
        ClipScorer("ViT-g-14", weights=tmp_path / "absent.bin")
    with pytest.raises(UserError, match="unknown open_clip model"):
        ClipScorer("no-such-model", weights=tiny_clip[1])
    with pytest.raises(UserError, match="do not fit"):
        ClipScorer("ViT-B-32", weights=tiny_clip[1])


# ----------------------------------------------------------------------------- end to end

class LeadingFeatures:
    """The real Inception network's features, only their first ``dims`` coordinates: scipy's sqrtm
    of a 2048 x 2048 covariance (clean-fid's Frechet distance) takes ~30 s on 2 cores, of 64 x 64 none."""

    def __init__(self, dims=64):
        from ddmd_lab.eval.fid import InceptionFeatures

        self.inner, self.dims = InceptionFeatures(batch_size=8), dims
        self.batch_size = self.inner.batch_size

    def of_uint8(self, u8):
        return self.inner.of_uint8(u8)[:, :self.dims]


@pytest.fixture(scope="module")
def inception():
    return LeadingFeatures()


def test_evaluate_coco_end_to_end(coco, tiny_clip, inception, tmp_path):
    from ddmd_lab.eval.protocols.coco import Protocol

    pairs = coco_subset(*coco, n=8, seed=0)
    ref = reference_images(pairs, 64)
    assert ref.shape == (8, 64, 64, 3) and ref.dtype == np.uint8
    clip = ClipScorer(tiny_clip[0], weights=tiny_clip[1])
    cache = tmp_path / "cache"
    protocol = Protocol("val2014-seeded", 64)
    captions = [p.caption for p in pairs]
    names = [f"{i:05d}_{p.image_id:012d}.png" for i, p in enumerate(pairs)]

    def itself(caps, keys):  # a perfect student: the reference images of these captions
        assert caps == [captions[k[0]] for k in keys]
        return uint8_to_signed(ref[[k[0] for k in keys]])

    def noise(caps, keys):  # torch's RNG is seeded per batch: 96x96 noise, resized to 64
        return torch.rand(len(caps), 3, 96, 96) * 2 - 1

    out = tmp_path / "out"
    reference = {"fid": reference_stats(pairs, 64, cache, inception)}
    same = evaluate_coco(itself, captions, names, out, protocol=protocol, reference=reference, batch_size=3, clip=clip,
                         features=inception)
    first = json.loads((out / "coco10k" / "results.json").read_text())
    assert first == same and same["n"] == 8 and same["resolution"] == 64 and same["clip_model"] == "tiny-clip-test"
    assert same["protocol"] == "val2014-seeded" and "patch_fid" not in same
    assert math.isfinite(same["fid"]) and -1.0 <= same["clip_score"] <= 1.0
    assert same["clip_score_x100"] == pytest.approx(clip(ref, captions), abs=1e-4)
    saved = sorted((out / "coco10k" / "images").glob("*.png"))
    assert len(saved) == 8 and (np.stack([np.asarray(Image.open(f)) for f in saved]) == ref).all()
    assert len(list(cache.glob("coco_ref_*_r64.npz"))) == 1
    mu, _ = reference_stats(pairs, 64, cache, inception)  # cached: no Inception pass
    assert mu.shape == (64,)

    noisy = evaluate_coco(noise, captions, names, out, protocol=protocol, reference=reference, batch_size=3, clip=None,
                          features=inception)
    assert noisy["clip_score"] is None and noisy["fid"] > 1.0
    assert abs(same["fid"]) < 1e-3 and noisy["fid"] > 1e3 * abs(same["fid"])  # self ~0 (8 samples: not exactly)
    assert json.loads((out / "coco10k" / "results.json").read_text())["fid"] == noisy["fid"]
    kept = list(out.glob("coco10k.replaced-*"))
    assert len(kept) == 1 and json.loads((kept[0] / "results.json").read_text()) == first
    assert len(list((kept[0] / "images").glob("*.png"))) == 8
    assert not list(out.glob(".coco10k.staging-*"))
