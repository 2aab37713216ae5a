"""Image scale end to end with a tiny teacher (mnist-5k: small and fast)."""
import json

import pytest
import torch

from ddmd_lab.training.run import run_ablation

from .tiny_images import TINY
from .tiny_images import image_cfg as _cfg


@pytest.fixture(scope="module")
def dirs(image_dirs):
    return image_dirs


@pytest.mark.parametrize("student_steps", [1, 4])
def test_image_run_end_to_end(dirs, student_steps):
    run = run_ablation(_cfg(dirs, "decoupled_hybrid", f"student_steps={student_steps}"))
    summary = json.loads((run / "summary.json").read_text())
    for key in ("fid", "class_adherence", "domain_fd", "out_std", "saturated", "hf_excess", "spectral_centroid"):
        assert key in summary and summary[key] == summary[key], key  # present and not NaN
    assert summary["generator_steps"] == 2 and summary["fid"] > 0
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000000.png", "step_0000003.png", "step_0000006.png"]
    import numpy as np

    spectra = np.load(run / "spectra.npz")
    assert spectra["generated"].shape == (3, 17) and list(spectra["steps"]) == [0, 3, 6]


def test_teacher_folder_is_a_diffusers_model_with_its_cfg_sweep(dirs):
    from diffusers import UNet2DModel

    from ddmd_lab.scales import images

    cfg = _cfg(dirs, "coupled")
    images.load_teacher(cfg)
    folder = images.teacher_dir(cfg)
    assert isinstance(UNet2DModel.from_pretrained(folder), UNet2DModel)
    sweep = json.loads((folder / "teacher.json").read_text())["cfg_sweep"]
    assert set(sweep) == {"alpha_1", "alpha_2"} and all("fid" in v and "class_adherence" in v for v in sweep.values())
    assert (folder / "samples_alpha_2.png").is_file()


def test_class_unet_adapter_converts_diffusers_flow_convention():
    """x0 = x_t - sigma * out, the UNet fed timestep = 1000 * sigma on 2x2-folded images."""
    import torch.nn.functional as F

    from ddmd_lab.backbones.class_unet import ClassUNet, build_unet

    torch.manual_seed(0)
    model = ClassUNet(build_unet("tiny", 3), 3).eval()
    x, t, c = torch.randn(2, 1, 32, 32), torch.tensor([0.25, 0.9]), torch.tensor([0, 3])
    with torch.no_grad():
        out = F.pixel_shuffle(model.unet(F.pixel_unshuffle(x, 2), torch.tensor([750.0, 100.0]), class_labels=c).sample, 2)
        expected = x - torch.tensor([0.75, 0.1]).view(2, 1, 1, 1) * out
        torch.testing.assert_close(model.x0(x, t, c), expected)
    assert model.null_condition(c).tolist() == [3, 3] and model.sample_shape == (1, 32, 32)


def test_term_spectra_and_observer_measure(dirs):
    from ddmd_lab.commands.inspect import run_spectra

    run = run_ablation(_cfg(dirs, "decoupled_hybrid"))
    result = run_spectra(run, samples=20)
    assert len(result["ca_centroid"]) == len(result["dm_centroid"]) == 6
    assert set(result["observer"]) >= {"generator_hf_excess", "teacher_x0_hf_excess", "fake_x0_hf_excess"}
    assert (run / "term_spectra.npz").is_file()


def test_gan_arm_on_images_uses_the_unet_bottleneck(dirs):
    run = run_ablation(_cfg(dirs, "ca_gan", "fid_samples=0"))
    ckpt = torch.load(run / "checkpoints" / "final.ckpt", weights_only=True)
    head = [k for k in ckpt["state_dict"] if k.startswith("disc.")]
    assert head and ckpt["ddmd_counters"]["critic_step_count"] == 6


def test_image_run_killed_mid_checkpoint_resumes_exactly_with_its_spectra(dirs):
    import os
    import signal
    import subprocess
    import sys

    import numpy as np

    from ddmd_lab.training.run import resume_ablation

    reference = run_ablation(_cfg(dirs, "coupled", "fid_samples=0"))
    cmd = [sys.executable, "-m", "ddmd_lab", "ablation", "--arm", "coupled", "--scale", "mnist"]
    for kv in TINY + dirs + ["fid_samples=0"]:
        cmd += ["--set", kv]
    # dies while writing its 2nd checkpoint (step 6); the step-3 checkpoint stays whole
    proc = subprocess.run(cmd, env={**os.environ, "DDMD_FAULT": "kill_during_write:2"}, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    run = next(p for p in reference.parent.iterdir() if p != reference and not (p / "summary.json").exists())
    resume_ablation(str(run))
    a = torch.load(reference / "checkpoints" / "final.ckpt", weights_only=True)["state_dict"]
    b = torch.load(run / "checkpoints" / "final.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert list(np.load(run / "spectra.npz")["steps"]) == [0, 3, 6]
    assert (run / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()
