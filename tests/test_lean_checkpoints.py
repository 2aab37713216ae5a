"""Checkpoints hold what training changes, not the frozen teacher (full fine-tuning) or the
frozen LoRA base; on load that comes from the scale's teacher, and a checkpoint of another
teacher is refused.  (Resuming from a lean checkpoint exactly: tests/test_resume.py.)"""
import copy
import io

import pytest
import torch

from ddmd_lab.config import load_config, parse_overrides
from ddmd_lab.errors import UserError
from ddmd_lab.training.module import DistillModule
from ddmd_lab.training.run import resume_ablation, run_ablation
from ddmd_lab.scales.base import get_scale

from .test_resume import SMALL


def _saved_size(checkpoint: dict) -> int:
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getbuffer().nbytes


def _with_frozen(checkpoint: dict, module: DistillModule) -> dict:
    """The checkpoint as it was written before: with the frozen tensors."""
    state = copy.copy(checkpoint["state_dict"])  # an OrderedDict with its _metadata (per-module versions)
    state.update({k: v.detach() for k, v in module._frozen_state().items()})
    return {**checkpoint, "state_dict": state}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("lean")
    cfg = load_config("toy2d", "decoupled_hybrid", parse_overrides(
        SMALL + [f"runs_dir={root / 'runs'}", f"cache_dir={root / 'cache'}", "steps=20", "checkpoint_every=10"]))
    return cfg, run_ablation(cfg)


def test_full_finetune_checkpoint_holds_no_teacher(toy):
    cfg, run = toy
    ckpt = torch.load(run / "checkpoints" / "final.ckpt", weights_only=True)
    keys = set(ckpt["state_dict"])
    assert not [k for k in keys if k.startswith("teacher.")]
    module = DistillModule(get_scale("toy2d").load_teacher(cfg), cfg)
    assert keys == set(module.state_dict()) - {k for k in module.state_dict() if k.startswith("teacher.")}
    assert {k.split(".")[0] for k in keys} == {"generator", "fake"}
    assert ckpt["ddmd_teacher"] == module.teacher_fingerprint
    fat = _saved_size(_with_frozen(ckpt, module))
    lean = (run / "checkpoints" / "final.ckpt").stat().st_size
    teacher_bytes = sum(v.numel() * v.element_size() for v in module.teacher.state_dict().values())
    assert lean < fat - 0.9 * teacher_bytes
    # the generator trained away from the teacher, and loading keeps the teacher loaded now
    module.load_weights(ckpt)
    assert any(not torch.equal(g, t) for g, t in zip(module.generator.parameters(), module.teacher.parameters()))
    torch.testing.assert_close(module.teacher.state_dict(), get_scale("toy2d").load_teacher(cfg).state_dict())


def test_each_save_prints_its_size_and_time(tmp_path, capsys):
    cfg = load_config("toy2d", "dm_only", parse_overrides(
        SMALL + [f"runs_dir={tmp_path / 'runs'}", f"cache_dir={tmp_path / 'cache'}", "steps=6", "checkpoint_every=3"]))
    run_ablation(cfg)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("checkpoint ")]
    assert [ln.split(" (")[0] for ln in lines] == ["checkpoint last.ckpt"] * 2 + ["checkpoint final.ckpt"]
    assert all(" KB in " in ln and ln.endswith(" s") for ln in lines), lines


def test_a_checkpoint_of_another_teacher_is_refused(toy):
    cfg, run = toy
    ckpt = torch.load(run / "checkpoints" / "final.ckpt", weights_only=True)
    scale = get_scale("toy2d")
    # another teacher config (architecture)
    other_cfg = load_config("toy2d", "decoupled_hybrid", parse_overrides(SMALL + ["teacher.hidden=32"]))
    with pytest.raises(UserError, match="trained from another teacher .* cache_dir="):
        DistillModule(scale.build_backbone(other_cfg), other_cfg).load_weights(ckpt)
    # the cached teacher replaced by one that differs in one weight: resume refuses it
    path = scale.teacher_dir(cfg) / "teacher.pt"
    original = path.read_bytes()
    weights = torch.load(path, weights_only=True)
    name = sorted(weights)[len(weights) // 2]
    weights[name].view(-1)[0] += 1e-3
    torch.save(weights, path)
    try:
        with pytest.raises(UserError, match="trained from another teacher .*start a new run"):
            resume_ablation(str(run / "checkpoints" / "last.ckpt"))
    finally:
        path.write_bytes(original)
    DistillModule(scale.load_teacher(cfg), cfg).load_weights(ckpt)  # the teacher it was trained from


# ---- LoRA: the frozen base is not saved ---------------------------------------------------------

class _Stop(Exception):
    pass


def _lora_cfg(pipeline_folders, root, steps):
    root.mkdir(parents=True, exist_ok=True)
    prompts = root / "prompts.txt"
    prompts.write_text("a photo of a cat\na red bus on a street\na bowl of fruit\ntwo dogs playing in the snow\n")
    sets = [f"teacher.source={pipeline_folders['sdxl']}", "teacher.resolution=32", "teacher.text_dtype=float32",
            f"data.prompts={prompts}", "accelerator=cpu", "precision=32-true", "wandb=disabled", "batch_size=2",
            "eval_every=100", "ttur=1", "eval_samples=4", "gradient_checkpointing=false", f"runs_dir={root / 'runs'}",
            f"cache_dir={root / 'cache'}", "progress_bar=false", "checkpoint_every=1", "lora.rank=2", f"steps={steps}"]
    return load_config("sdxl", "decoupled_hybrid", parse_overrides(sets))


def test_lora_checkpoint_holds_adapters_only_and_resumes_exactly(pipeline_folders, tmp_path, monkeypatch):
    from ddmd_lab.training.checkpointing import AtomicCheckpoint
    from ddmd_lab.scales.text2image import load_model

    reference = run_ablation(_lora_cfg(pipeline_folders, tmp_path / "a", 2))
    # a run stopped right after its step-1 checkpoint, then resumed from it
    save = AtomicCheckpoint.on_train_batch_end

    def stop_after_first(self, trainer, module, *args):
        save(self, trainer, module, *args)
        if module.step_count == 1:
            raise _Stop

    monkeypatch.setattr(AtomicCheckpoint, "on_train_batch_end", stop_after_first)
    cfg = _lora_cfg(pipeline_folders, tmp_path / "b", 2)
    with pytest.raises(_Stop):
        run_ablation(cfg)
    monkeypatch.undo()
    run = next((tmp_path / "b" / "runs" / "sdxl" / "decoupled_hybrid").iterdir())
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["ddmd_counters"]["step_count"] == 1
    base = [k for k in last["state_dict"] if k.startswith("base.")]
    assert base and all(".lora_A.generator." in k or ".lora_B.generator." in k or ".lora_A.fake." in k
                        or ".lora_B.fake." in k for k in base), base[:5]
    module = DistillModule(load_model(cfg, fresh=True).backbone, cfg)
    assert set(last["state_dict"]) == set(module.state_dict()) - module._frozen_keys
    fat, lean = _saved_size(_with_frozen(last, module)), (run / "checkpoints" / "last.ckpt").stat().st_size
    base_bytes = sum(v.numel() * v.element_size() for v in module._frozen_state().values())
    assert lean < fat - 0.9 * base_bytes
    resume_ablation(str(run))
    a = torch.load(reference / "checkpoints" / "final.ckpt", weights_only=True)
    b = torch.load(run / "checkpoints" / "final.ckpt", weights_only=True)
    assert a["ddmd_counters"] == b["ddmd_counters"] and set(a["state_dict"]) == set(b["state_dict"])
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    # onto another base (every weight moved a little): refused, naming teacher.source
    other = load_model(cfg, fresh=True).backbone
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1e-3)
    with pytest.raises(UserError, match="trained from another teacher .*teacher.source="):
        DistillModule(other, cfg).load_weights(b)
