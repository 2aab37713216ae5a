"""DMD2's full recipe on the text-to-image scales: the real backbones' features() for the
discriminator head, the cached real latents it reads, the dmd2 / decoupled_hybrid_gan arms
end to end on tiny saved pipelines, and the fake model's training tau at the run's shift."""
import csv
import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from ddmd_lab.core.arms import REGISTRY
from ddmd_lab.backbones import feature_tap
from ddmd_lab.backbones.toy import ToyFlowMLP
from ddmd_lab.commands.cli import main
from ddmd_lab.config import RunConfig
from ddmd_lab.data.image_files import uint8_to_signed
from ddmd_lab.data.real_latents import cached_latents, coco_images, encode_latents
from ddmd_lab.errors import UserError
from ddmd_lab.eval.protocols.coco import reference_image
from ddmd_lab.core.flow import expand_like, shift_time, unshift_time, vp_scale
from ddmd_lab.training.module import CRITIC_TAU, DistillModule
from ddmd_lab.scales import text2image
from ddmd_lab.core.tau import sample_tau

from .tiny_coco import make_coco

FAMILIES = ("sdxl", "zimage", "lumina2")
# (channels, h, w) of features() at teacher.resolution=32 (tiny VAEs halve: 16 x 16 latents): SDXL's mid
# block after one downsample (widths (2, 4)); the transformers' 2 x 2 patch grids (dims 16 and 24)
FEATURES = {"sdxl": (4, 8, 8), "zimage": (16, 8, 8), "lumina2": (24, 8, 8)}


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = make_coco(tmp_path_factory.mktemp("dmd2") / "coco", n_images=6)
    return root / "annotations" / "captions_val2014.json"


def _cfg(pipeline_folders, family, tmp_path=None, arm="dmd2", **data) -> RunConfig:
    return RunConfig.of(scale=family, arm=REGISTRY[arm], batch_size=2, steps=2, wandb="disabled",
                     cache_dir=str(tmp_path or "unused"),
                     teacher={"family": family, "source": str(pipeline_folders[family]), "resolution": 32,
                              "text_dtype": "float32"}, data=data)


def _model(pipeline_folders, family):
    return text2image.load_model(_cfg(pipeline_folders, family))


def _conds(model, n=2):
    return model.encode(["a photo of a cat", "a red bus on a street"][:n])


# ----------------------------------------------------------------------------- features()

def _calls(module, counter, key, done=False):
    """Count ``module``'s forwards: started (pre-hook) or, with ``done``, finished."""
    count = lambda *_: counter.__setitem__(key, counter.get(key, 0) + 1)
    return module.register_forward_hook(count) if done else module.register_forward_pre_hook(count)


@pytest.mark.parametrize("family", FAMILIES)
def test_features_shape_gradient_and_one_stopped_call(pipeline_folders, family):
    backbone = _model(pipeline_folders, family).backbone
    cond = _conds(_model(pipeline_folders, family))
    torch.manual_seed(0)
    x = torch.randn(2, *backbone.sample_shape, requires_grad=True)
    t = torch.tensor([0.3, 0.8])
    net = backbone.denoiser()
    after = {"sdxl": lambda: net.up_blocks[0], "zimage": lambda: next(iter(net.all_final_layer.values())),
             "lumina2": lambda: net.norm_out}[family]()
    calls: dict = {}
    handles = [_calls(net, calls, "net"), _calls(after, calls, "after", done=True)]
    try:
        feats = backbone.features(x, t, cond)
    finally:
        for h in handles:
            h.remove()
    assert tuple(feats.shape) == (2, *FEATURES[family]) == (2, *backbone.feature_shape)
    assert calls == {"net": 1}  # one network call, stopped before what follows the features
    assert not net._forward_pre_hooks and not after._forward_pre_hooks and not after._forward_hooks  # hooks gone
    # the generator's GAN loss backpropagates through the fake's features into its sample
    feats.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()  # every sample's own gradient


@pytest.mark.parametrize("family", FAMILIES)
def test_features_are_what_the_full_forward_computes_at_x0s_inputs(pipeline_folders, family):
    """features() reads the network exactly as x0() runs it (VP scale, timestep, conditions), and
    the image tokens it picks are those the network unpatchifies into its output, in grid order."""
    backbone = _model(pipeline_folders, family).backbone
    cond = _conds(_model(pipeline_folders, family))
    torch.manual_seed(1)
    x, t = torch.randn(2, *backbone.sample_shape), torch.tensor([0.25, 0.7])
    net = backbone.denoiser()
    seen = {}
    if family == "sdxl":
        h = net.mid_block.register_forward_hook(lambda m, a, out: seen.setdefault("mid", out))
    else:
        tail = next(iter(net.all_final_layer.values())) if family == "zimage" else net.norm_out
        h = tail.register_forward_hook(lambda m, a, out: seen.update(inp=a[0], out=out))
    with torch.no_grad():
        try:
            if family == "sdxl":
                backbone._unet(x.double() * expand_like(vp_scale(t), x.double()), t, cond)
            else:
                out = backbone._net(x, t, cond)
        finally:
            h.remove()
        feats = backbone.features(x, t, cond)
    if family == "sdxl":
        torch.testing.assert_close(feats, seen["mid"])
        return
    hh, ww = FEATURES[family][1:]
    p = 2
    starts = [0, 0] if family == "zimage" else cond.mask.sum(1).tolist()
    # the final layer's per-token outputs at the tokens features() reads, unpatchified by hand,
    # are the network's output: so those tokens are the image grid, row-major
    tokens = torch.stack([seen["out"][i, s:s + hh * ww] for i, s in enumerate(starts)])
    c = backbone.sample_shape[0]  # each token: (pH, pW, C) values (Z-Image's frame patch is 1)
    img = tokens.reshape(2, hh, ww, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(2, c, hh * p, ww * p)
    torch.testing.assert_close(img, torch.stack(list(out)).squeeze(2) if family == "zimage" else out)
    picked = torch.stack([seen["inp"][i, s:s + hh * ww] for i, s in enumerate(starts)])
    torch.testing.assert_close(feats, picked.reshape(2, hh, ww, -1).permute(0, 3, 1, 2))


def test_large_token_grids_are_average_pooled(pipeline_folders, monkeypatch):
    backbone = _model(pipeline_folders, "zimage").backbone
    cond = _conds(_model(pipeline_folders, "zimage"))
    x, t = torch.randn(2, *backbone.sample_shape), torch.tensor([0.5, 0.5])
    full = backbone.features(x, t, cond)
    monkeypatch.setattr(feature_tap, "FEATURE_GRID", 4)
    small = backbone.features(x, t, cond)
    assert small.shape == (2, 16, 4, 4) and backbone.feature_shape == (16, 4, 4)
    torch.testing.assert_close(small, torch.nn.functional.avg_pool2d(full, 2))


# ----------------------------------------------------------------------------- real latents

def test_real_latents_are_encoded_once_and_equal_a_direct_encode(pipeline_folders, coco, tmp_path, monkeypatch):
    vae = _model(pipeline_folders, "zimage").vae  # a VAE with a shift factor
    real = coco_images(coco, None, None)
    assert len(real.files) == 6 and all(f.parent.name == "val2014" for f in real.files)
    assert all(2 <= len(c) <= 3 for c in real.captions) and len(real.prompts) == sum(map(len, real.captions))
    assert all(real.prompts[i] == real.prompts[i].strip() for c in real.captions for i in c)
    first = cached_latents(tmp_path, vae, real.files, 32)
    assert first.shape == (6, 16, 16, 16) and first.dtype == torch.float16
    direct = encode_latents(vae, uint8_to_signed(np.stack([reference_image(f, 32) for f in real.files])))
    torch.testing.assert_close(first.float(), direct.half().float())
    z = vae.encode(uint8_to_signed(np.stack([reference_image(real.files[0], 32)]))).latent_dist.mean
    # one image alone through the VAE: float32 sums in another order can round a value to the neighbouring
    # float16 (seen: 6e-5 on 3 of 4096), so compared at float16's resolution
    torch.testing.assert_close(first[:1].float(), ((z - vae.config.shift_factor) * vae.config.scaling_factor).float(),
                               rtol=1e-3, atol=1e-4)

    def no_encode(*a, **k):
        raise AssertionError("the VAE ran again")

    monkeypatch.setattr(vae, "encode", no_encode)
    again = cached_latents(tmp_path, vae, real.files, 32)
    assert torch.equal(again, first) and len(list((tmp_path / "real_latents").iterdir())) == 1
    # another resolution or image list is another cache entry
    with pytest.raises(AssertionError, match="ran again"):
        cached_latents(tmp_path, vae, real.files[:3], 32)
    capped = coco_images(coco, None, 4)
    assert len(capped.files) == 4 and capped.files == sorted(capped.files)


def test_gan_arm_data_errors_name_the_fix(pipeline_folders, coco, tmp_path):
    cfg = _cfg(pipeline_folders, "sdxl", tmp_path)
    text = tmp_path / "prompts.txt"
    text.write_text("a cat\n")
    with pytest.raises(UserError, match="COCO captions .json"):
        text2image.condition_loader(cfg.replace(data={"prompts": str(text)}))
    copy = tmp_path / "coco"
    shutil.copytree(coco.parent.parent, copy)
    captions = copy / "annotations" / "captions_val2014.json"
    images = sorted((copy / "val2014").iterdir())
    images[0].unlink()
    with pytest.raises(UserError, match=rf"1 of the 6 images .* missing .* e\.g\. {images[0].name}"):
        text2image.condition_loader(cfg.replace(data={"prompts": str(captions)}))
    for f in images[:3]:
        f.write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"3 of 6 real images cannot be read, e\.g\. .*jpg"):
        text2image.condition_loader(cfg.replace(data={"prompts": str(captions)}))
    shutil.rmtree(copy / "val2014")
    with pytest.raises(UserError, match="set data.images="):
        text2image.condition_loader(cfg.replace(data={"prompts": str(captions)}))
    assert not (tmp_path / "real_latents").exists() or not list((tmp_path / "real_latents").glob("*.pt"))


def test_gan_batches_pair_real_latents_with_their_own_captions(pipeline_folders, coco, tmp_path, monkeypatch):
    cfg = _cfg(pipeline_folders, "lumina2", tmp_path).replace(batch_size=3, steps=4)
    model = text2image.load_model(cfg)
    real = coco_images(coco, None, None)
    latents = cached_latents(tmp_path, model.vae, real.files, 32)
    seen = []
    monkeypatch.setattr(model, "encode", lambda prompts: seen.append(list(prompts)) or len(prompts))
    batches = list(text2image.condition_loader(cfg.replace(data={"prompts": str(coco)})))
    assert len(batches) == 4
    for (cond, lat), prompts in zip(batches, seen):
        assert cond == 3 and lat.shape == (3, 4, 16, 16) and lat.dtype == torch.float32
        for row, prompt in zip(lat, prompts):
            image = next(i for i in range(len(real.files)) if torch.equal(latents[i].float(), row))
            assert prompt in [real.prompts[k] for k in real.captions[image]]


# ----------------------------------------------------------------------------- the arms end to end

def test_dmd2_arms_are_their_schedules_plus_dmd2s_gan():
    gan = {"gan_weight": 5e-3, "gan_disc_weight": 1e-2}
    for name, base in (("dmd2", "coupled"), ("decoupled_hybrid_gan", "decoupled_hybrid")):
        arm = REGISTRY[name]
        assert replace(REGISTRY[base], name=name, description=arm.description, **gan) == arm
    from ddmd_lab.report.tables import _paper_row, paper_numbers

    table2 = paper_numbers()["table2"]
    assert _paper_row(table2, "dmd2")["name"] == _paper_row(table2, "coupled")["name"] == "DMD2"
    assert _paper_row(table2, "decoupled_hybrid_gan")["fid"] == 17.80


def _sets(paths, family, coco, root):
    extra = ["data.precompute=true"] if family == "lumina2" else []  # the captions' conditions cached up front
    items = [*extra, f"teacher.source={paths[family]}", "teacher.resolution=32", "teacher.text_dtype=float32",
             f"data.prompts={coco}", "accelerator=cpu", "precision=32-true", "wandb=disabled", "batch_size=2",
             "eval_every=2", "ttur=1", "eval_samples=4", "gradient_checkpointing=false", "log_every=1",
             f"runs_dir={root / 'runs'}", f"cache_dir={root / 'cache'}", "progress_bar=false", "checkpoint_every=0"]
    return [a for item in items for a in ("--set", item)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("arm", ["dmd2", "decoupled_hybrid_gan"])
def test_two_steps_of_a_gan_arm_from_the_cli(pipeline_folders, coco, tmp_path, family, arm):
    assert main(["ablation", "--scale", family, "--arm", arm, "--steps", "2",
                 *_sets(pipeline_folders, family, coco, tmp_path)]) == 0
    run = next((tmp_path / "runs" / family / arm).iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["generator_steps"] == 2 and summary["critic_steps"] == 2 and summary["skipped_steps"] == 0
    rows = [r for f in run.glob("logs/*/metrics.csv") for r in csv.DictReader(f.open())]
    logged = [r for r in rows if r.get("loss_discriminator")]
    assert len(logged) == 2
    for r in logged:
        for key in ("loss_discriminator", "loss_gan_generator", "loss_critic", "loss_generator"):
            assert math.isfinite(float(r[key])), key
    assert len(list((tmp_path / "cache" / "real_latents").glob("*.pt"))) == 1


# ----------------------------------------------------------------------------- the fake's tau

def _taus(shift: float, n: int = 20000) -> torch.Tensor:
    torch.manual_seed(0)
    module = DistillModule(ToyFlowMLP(num_classes=3, hidden=8, depth=1),
                           RunConfig.of(arm=REGISTRY["coupled"], shift=shift, wandb="disabled"))
    torch.manual_seed(5)
    _, tau = module._renoised(torch.zeros(n, 2), torch.full((n,), 0.5), "critic")
    return tau


def test_the_fakes_training_tau_uses_the_runs_shift():
    tau3 = _taus(3.0)
    # unshifted, the draw is U(0, 1) (clamped at the ends): the same law the DM term queries the fake at
    u = unshift_time(tau3, 3.0)
    inside = u[(u > 0.1) & (u < 0.9)]
    assert abs(len(inside) / len(u) - 0.8) < 0.02 and abs(inside.mean().item() - 0.5) < 0.01
    assert tau3.median().item() == pytest.approx(shift_time(torch.tensor(0.5), 3.0).item(), abs=0.01)  # 0.25: noisier
    assert tau3.mean() < 0.4
    # shift 1 (toy, image scales): exactly the draws of before
    tau1 = _taus(1.0)
    # the critic's tau stream of the run's seed (core/streams.py), at step 0
    from ddmd_lab.core.streams import Streams

    expected = sample_tau(CRITIC_TAU, torch.full((20000,), 0.5), 1.0, (0.02, 0.98), Streams(0).at("critic_tau", 0))
    assert torch.equal(tau1, expected) and abs(tau1.mean().item() - 0.5) < 0.01
