"""Loading never runs code: a checkpoint or cache whose pickle would create a file when unpickled is
refused, with one sentence, by every load path (RESUME=, make sample / export / spectra RUN=, Lightning's
own resume, the teacher / classifier / real-latent caches), and the file is never created."""
import ast
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from ddmd_lab.commands.cli import main
from ddmd_lab.config import load_config, parse_overrides, save_config
from ddmd_lab.errors import UserError
from ddmd_lab.training.run import run_ablation

SMALL = ["teacher={steps: 60, data_size: 2048, hidden: 32}", "batch_size=32", "ttur=2", "eval_every=4",
         "eval_samples=64", "checkpoint_every=2", "progress_bar=false", "wandb=disabled", "steps=4"]


class Payload:
    """Unpickling this calls open(marker, "w"): the file appears only if a loader ran pickled code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def poison(path: Path, obj, marker: Path) -> None:
    """``obj`` (a checkpoint or cache as ddmd_lab writes it) with a payload beside its real content."""
    torch.save({**obj, "extra": Payload(marker)} if isinstance(obj, dict) else [obj, Payload(marker)], path)


def refused(capsys, argv, marker) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert not marker.exists(), "the pickle's code ran"
    assert err.count("\n") == 0 and "could run code when loaded, so it was refused unread" in err, err
    assert "refers to io.open" in err  # names what the pickle would have called
    return err


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("safe")
    cfg = load_config("toy2d", "decoupled_hybrid",
                      parse_overrides(SMALL + [f"runs_dir={root / 'runs'}", f"cache_dir={root / 'cache'}"]))
    return run_ablation(cfg), cfg


def test_every_torch_load_in_the_package_is_weights_only():
    """What `grep weights_only=False` checks, kept by a test: every torch.load call, and every Trainer.fit
    given a checkpoint, passes weights_only=True."""
    package = Path(__file__).parents[1] / "ddmd_lab"
    seen = 0
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            kwargs = {k.arg: k.value for k in node.keywords}
            loads = node.func.attr == "load" and getattr(node.func.value, "id", None) == "torch"
            fits = node.func.attr == "fit" and "ckpt_path" in kwargs
            if loads or fits:
                seen += 1
                flag = kwargs.get("weights_only")
                assert isinstance(flag, ast.Constant) and flag.value is True, f"{path}:{node.lineno}"
    assert seen >= 2  # io.safe_torch_load and run._fit at least


def _poisoned_copy(toy_run, tmp_path):
    """(a copy of the toy run, its last.ckpt poisoned, the file the payload would create)."""
    run, _ = toy_run
    victim = tmp_path / "run"
    shutil.copytree(run, victim)
    last = victim / "checkpoints" / "last.ckpt"
    marker = tmp_path / "pwned"
    poison(last, torch.load(last, weights_only=True), marker)
    return victim, last, marker


def test_resume_refuses_a_poisoned_checkpoint(toy_run, tmp_path, capsys):
    victim, last, marker = _poisoned_copy(toy_run, tmp_path)
    before = last.read_bytes()
    err = refused(capsys, ["ablation", "--resume", str(victim)], marker)
    assert "resume from another checkpoint of the run" in err
    refused(capsys, ["ablation", "--resume", str(last)], marker)  # a .ckpt path: the same
    assert last.read_bytes() == before  # nothing rewritten


def test_lightnings_own_resume_reads_with_weights_only(toy_run, tmp_path, monkeypatch):
    """Past our own read (patched away here), Lightning's restore refuses the payload as well."""
    import ddmd_lab.training.run as run_module

    victim, last, marker = _poisoned_copy(toy_run, tmp_path)
    monkeypatch.setattr(run_module, "safe_torch_load", lambda *a, **k: {"ddmd_counters": {"step_count": 2}})
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        run_module.resume_ablation(str(victim))
    assert not marker.exists()


def test_sample_export_and_spectra_refuse_a_poisoned_run(toy_run, pipeline_folders, tmp_path, capsys):
    """make sample / export RUN=<a text-to-image run>, make spectra RUN=<an image run>: the checkpoint
    is read (and refused) before any model loads."""
    marker = tmp_path / "pwned"
    t2i = tmp_path / "t2i_run"
    (t2i / "checkpoints").mkdir(parents=True)
    cfg = load_config("zimage", "decoupled_hybrid",
                      parse_overrides([f"teacher.source={pipeline_folders['zimage']}", f"cache_dir={tmp_path}"]))
    save_config(cfg, t2i / "config.yaml")
    poison(t2i / "checkpoints" / "final.ckpt", {"state_dict": {"generator.w": torch.zeros(2)}}, marker)
    err = refused(capsys, ["sample", "--run", str(t2i), "--prompt", "a cat", "--out", str(tmp_path / "s")], marker)
    assert "sample from a checkpoint ddmd_lab wrote" in err
    assert not (tmp_path / "s").exists()
    refused(capsys, ["export", "--run", str(t2i)], marker)
    assert not (t2i / "export").exists()

    from ddmd_lab.training.restore import load_run

    run, _ = toy_run
    victim = tmp_path / "toy_run"
    shutil.copytree(run, victim)
    final = victim / "checkpoints" / "final.ckpt"
    poison(final, torch.load(final, weights_only=True), marker)
    with pytest.raises(UserError, match="could run code when loaded"):
        load_run(victim)
    assert not marker.exists()


def test_caches_refuse_a_poisoned_file(toy_run, tmp_path):
    """The toy teacher's weights, the image classifier and the real-latent cache: refused, never unpickled."""
    from ddmd_lab.data.real_latents import cached_latents, cache_path
    from ddmd_lab.eval.classifier import load_classifier
    from ddmd_lab.scales import toy2d

    marker = tmp_path / "pwned"
    _, cfg = toy_run
    teacher = toy2d.teacher_dir(cfg) / "teacher.pt"
    kept = teacher.read_bytes()
    try:
        poison(teacher, torch.load(teacher, weights_only=True), marker)
        with pytest.raises(UserError, match=r"teacher weights file .* could run code.*--retrain"):
            toy2d.load_teacher(cfg)
    finally:
        teacher.write_bytes(kept)
    assert not marker.exists()

    poison(tmp_path / "classifier.pt", {"w": torch.zeros(1)}, marker)
    with pytest.raises(UserError, match="classifier file .* could run code.*make classifier"):
        load_classifier(tmp_path, 10)

    vae = torch.nn.Linear(2, 2)  # what the cache key reads of a VAE: its config and weights
    vae.config = {"scaling_factor": 1.0}
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    path = cache_path(tmp_path, vae, [image], 32)
    path.parent.mkdir(parents=True, exist_ok=True)
    poison(path, {"latents": torch.zeros(1, 4, 4, 4), "files": ["a.png"]}, marker)
    with pytest.raises(UserError, match="real-latent cache .* could run code.*rebuilt"):
        cached_latents(tmp_path, vae, [image], 32)
    assert not marker.exists()


def test_a_truncated_checkpoint_is_unreadable_not_unsafe(toy_run, tmp_path, capsys):
    run, _ = toy_run
    victim = tmp_path / "run"
    shutil.copytree(run, victim)
    last = victim / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    assert main(["ablation", "--resume", str(victim)]) == 2
    err = capsys.readouterr().err
    assert "cannot be read (RuntimeError)" in err and "resume from another checkpoint" in err
