"""make finetune: a LoRA on a distilled student, trained at the student's own times.

A tiny mnist-5k student (tests/tiny_images.py) and the tiny Z-Image pipeline (tests/tiny_pipelines.py)
are distilled for a few steps, then fine-tuned for two."""
import csv
import json

import pytest
import torch
from PIL import Image

from ddmd_lab.commands.cli import main
from ddmd_lab.errors import UserError
from ddmd_lab.finetune.config import FinetuneConfig
from ddmd_lab.finetune.objective import denoising_loss, draw_student_times, guided_x0
from ddmd_lab.core.guidance import cfg
from ddmd_lab.training.run import run_ablation

from .tiny_images import image_cfg

FT = ["steps=2", "batch_size=8", "eval_samples=20", "eval_new=8", "eval_every=1", "lora.rank=2", "progress_bar=false"]


def _sets(items):
    return [a for item in items for a in ("--set", item)]


@pytest.fixture(scope="module")
def mnist_run(image_dirs):
    """A finished tiny coupled mnist student (4 steps, renoise), full fine-tuning of the generator."""
    return run_ablation(image_cfg(image_dirs, "coupled", "fid_samples=0", "steps=3"))


@pytest.fixture(scope="module")
def student_and_data(mnist_run):
    from ddmd_lab.finetune.data import parse_data
    from ddmd_lab.finetune.student import load_student
    from ddmd_lab.finetune.train import ImageData

    ft = FinetuneConfig.from_overrides({"lora": {"rank": 2}, "lr": 1e-2, "batch_size": 16})
    torch.manual_seed(0)
    student = load_student(mnist_run, ft, "cpu")
    concept = parse_data("mnist:7", "mnist")
    return student, ImageData(student, concept), ft


def test_the_loss_is_taken_at_the_students_times(student_and_data, monkeypatch):
    from ddmd_lab.finetune.train import FinetuneLoop

    student, data, ft = student_and_data
    times = student.times()
    assert torch.allclose(times, torch.tensor([0.0, 0.25, 0.5, 0.75]))  # the 4-step student's grid, not U(0, 1)
    seen = []
    x0 = student.backbone.x0
    monkeypatch.setattr(student.backbone, "x0", lambda x, t, c: (seen.append(t.detach().clone()), x0(x, t, c))[1])
    loop = FinetuneLoop(student, data, ft)
    for _ in range(3):
        loop.step()
    seen = torch.cat(seen)
    assert len(seen) == 3 * 16
    assert all(torch.isclose(times, s).any() for s in seen)
    assert len(set(seen.tolist())) > 1  # drawn per sample over the grid
    # the draw itself: only grid points, each of them
    drawn = draw_student_times(times, 4000, torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == set(times.tolist())


def test_train_guidance_changes_the_prediction_exactly_as_the_offset_formula_says():
    from ddmd_lab.backbones.class_unet import ClassUNet, build_unet

    torch.manual_seed(0)
    model = ClassUNet(build_unet("tiny", 3), 3).eval()
    x, t, c = torch.randn(4, 1, 32, 32), torch.tensor([0.0, 0.25, 0.5, 0.75]), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        cond, uncond = model.x0(x, t, c), model.x0(x, t, model.null_condition(c))
        torch.testing.assert_close(guided_x0(model, x, t, c, 0.0), cond)  # 0 = no CFG: the conditional prediction
        for g in (1.5, 3.0):
            guided = guided_x0(model, x, t, c, g)
            torch.testing.assert_close(guided, cond + g * (cond - uncond), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(guided, cfg(cond, uncond, 1 + g), rtol=1e-5, atol=1e-5)  # standard alpha = 1 + g
        # and inside the loss: the velocity of that prediction against x0 - noise
        x0, noise = torch.rand(4, 1, 32, 32) * 2 - 1, torch.randn(4, 1, 32, 32)
        x_t = t.view(4, 1, 1, 1) * x0 + (1 - t.view(4, 1, 1, 1)) * noise
        for g in (0.0, 1.5):
            pred = guided_x0(model, x_t, t, c, g)
            by_hand = (((pred - x_t) / (1 - t.view(4, 1, 1, 1))) - (x0 - noise)).pow(2).mean()
            torch.testing.assert_close(denoising_loss(model, x0, c, t, g, noise), by_hand)
        assert denoising_loss(model, x0, c, t, 0.0, noise) != denoising_loss(model, x0, c, t, 1.5, noise)


def test_the_frozen_student_is_unchanged_and_old_labels_compute_what_they_did(student_and_data):
    from ddmd_lab.finetune.train import FinetuneLoop

    student, data, ft = student_and_data
    frozen = {k: v.detach().clone() for k, v in student.frozen_state().items()}
    trained = [p.detach().clone() for p in student.trainable()]
    x, t = torch.randn(11, 1, 32, 32), torch.full((11,), 0.25)
    old = torch.arange(11) % 10  # the old classes and, at 10, the new label
    null = student.backbone.null_condition(old)
    assert student.new_label == 10 and null.tolist() == [11] * 11  # the null label moved to K + 1, keeping its row
    with torch.no_grad(), student.adapter_off():
        before = student.backbone.x0(x[:10], t[:10], old[:10]), student.backbone.x0(x, t, null)
    loop = FinetuneLoop(student, data, ft)
    for _ in range(3):
        loop.step()
    assert loop.skipped == 0
    after = student.frozen_state()
    assert frozen.keys() == after.keys() and len(frozen) > 0
    for k in frozen:
        assert torch.equal(frozen[k], after[k]), k
    assert any(not torch.equal(a, b) for a, b in zip(trained, student.trainable()))  # the adapter did move
    assert not torch.equal(trained[-1], student.trainable()[-1])  # and the new label row
    with torch.no_grad(), student.adapter_off():
        torch.testing.assert_close(student.backbone.x0(x[:10], t[:10], old[:10]), before[0], rtol=0, atol=0)
        torch.testing.assert_close(student.backbone.x0(x, t, null), before[1], rtol=0, atol=0)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_end_to_end_on_a_tiny_image_student(mnist_run):
    assert main(["finetune", "--run", str(mnist_run), "--data", "mnist:7", *_sets(FT + ["train_guidance=1.5"])]) == 0
    runs = sorted((mnist_run.parents[1] / "finetune").iterdir())
    out = runs[-1]
    record = json.loads(json.dumps(__import__("yaml").safe_load((out / "finetune.yaml").read_text())))
    assert record["run"] == str(mnist_run) and record["new_label"] == 10 and record["finetune"]["train_guidance"] == 1.5
    assert record["student_times"] == [0.0, 0.25, 0.5, 0.75]
    curve = _rows(out / "metrics.csv")
    assert [int(r["step"]) for r in curve] == [0, 1, 2]
    for key in ("out_std", "saturated", "hf_excess", "class_adherence", "domain_fd", "new_adherence", "new_fd",
                "new_out_std", "new_saturated", "new_hf_excess"):
        assert all(r[key] not in ("", "nan") for r in curve), key
    grids = json.loads((out / "grids.json").read_text())
    # guidance 0 / 1.5 / 3 x student steps 4 and 8 (4 - 4 = 0 is dropped), before and after
    assert sorted({(g["phase"], g["sample_guidance"], g["sample_steps"]) for g in grids}) == sorted(
        (p, g, n) for p in ("after", "before") for g in (0.0, 1.5, 3.0) for n in (4, 8))
    assert (out / "grids" / "after_g1.5_n8.png").is_file() and (out / "samples" / "step_0000002.png").is_file()
    result = json.loads((out / "result.json").read_text())
    assert result["frozen_fingerprint"]["before"] == result["frozen_fingerprint"]["after"]
    assert result["seconds_per_step"] > 0 and result["skipped_steps"] == 0
    assert len(_rows(out / "logs.csv")) == 2
    adapter = torch.load(out / "adapter.pt", weights_only=True)
    assert adapter["new_label"] == 10 and adapter["new_label_row"].shape[0] == 1 and adapter["lora"]
    assert not (out / "summary.json").exists()  # the report builders read summary.json as a distillation run


def test_clear_errors(mnist_run, tmp_path, capsys):
    import shutil

    def error(*args):
        assert main(["finetune", *args]) == 2
        return capsys.readouterr().err

    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    shutil.copy(mnist_run / "config.yaml", no_ckpt / "config.yaml")
    assert "no checkpoints/final.ckpt or last.ckpt" in error("--run", str(no_ckpt), "--data", "mnist:7")
    assert "not a run folder" in error("--run", str(tmp_path), "--data", "mnist:7")
    assert "no run to fine-tune" in error("--data", "mnist:7")
    assert "no DATA" in error("--run", str(mnist_run))
    assert "<dataset>:<class>" in error("--run", str(mnist_run), "--data", "cifar:3")
    assert "<dataset>:<class>" in error("--run", str(mnist_run), "--data", "mnist")
    assert "has no class '12'" in error("--run", str(mnist_run), "--data", "mnist:12")
    assert "unknown key(s) ['rnak']" in error("--run", str(mnist_run), "--data", "mnist:7", "--set", "rnak=4")
    assert "train_guidance must be >= 0" in error("--run", str(mnist_run), "--data", "mnist:7", "--set", "train_guidance=-1")


def test_data_names_classes_and_caption_folders(tmp_path):
    from ddmd_lab.finetune.data import caption_folder, parse_data

    assert parse_data("mnist:3", "mnist").target_class == 3
    folder = tmp_path / "concept"
    folder.mkdir()
    with pytest.raises(UserError, match="holds no images"):
        caption_folder(folder)
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    Image.new("RGB", (8, 8)).save(folder / "b.png")
    (folder / "a.txt").write_text("a sks toy\n")
    with pytest.raises(UserError, match="1 of 2 images .* have no caption, e.g. b.png"):
        caption_folder(folder)
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "b.png", "text": "a sks toy on grass"}) + "\n")
    assert caption_folder(folder).captions == ["a sks toy", "a sks toy on grass"]
    with pytest.raises(UserError, match="is not a folder"):
        parse_data(str(tmp_path / "missing"), "zimage")
    with pytest.raises(UserError, match="toy2d"):
        parse_data("mnist:7", "toy2d")


@pytest.fixture(scope="module")
def zimage_run(tmp_path_factory, pipeline_folders):
    """A tiny Z-Image student distilled for two steps with LoRA (the recipe's way: merged before fine-tuning)."""
    root = tmp_path_factory.mktemp("finetune_zimage")
    prompts = root / "prompts.txt"
    prompts.write_text("a photo of a cat\na red bus on a street\n")
    sets = [f"teacher.source={pipeline_folders['zimage']}", "teacher.resolution=32", "teacher.dtype=float32",
            "teacher.text_dtype=float32", f"data.prompts={prompts}", "accelerator=cpu", "precision=32-true",
            "wandb=disabled", "batch_size=2", "eval_every=2", "ttur=1", "eval_samples=2", "data.eval_vs_teacher=false",
            "gradient_checkpointing=false", f"runs_dir={root / 'runs'}", f"cache_dir={root / 'cache'}",
            "progress_bar=false", "checkpoint_every=0", "lora.rank=2", "lr_generator=1e-2"]  # an adapter that moved
    assert main(["ablation", "--scale", "zimage", "--steps", "2", *_sets(sets)]) == 0
    run = sorted((root / "runs" / "zimage" / "decoupled_hybrid").iterdir())[-1]
    folder = root / "concept"
    folder.mkdir()
    for i, colour in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200))):
        Image.new("RGB", (40, 40), colour).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a sks square, colour {i}")
    return run, folder


def test_a_lora_students_generator_adapter_is_merged_into_the_frozen_base(zimage_run):
    from ddmd_lab.finetune.student import load_student
    from ddmd_lab.training.generate import student_sampler

    run, _ = zimage_run
    sampler = student_sampler(run, device="cpu")  # the student as make sample runs it: the generator adapter's view
    torch.manual_seed(0)
    cond = sampler.model.encode(["a photo of a cat", "a red bus on a street"])
    x, t = torch.randn(2, *sampler.model.backbone.sample_shape), torch.tensor([0.0, 0.5])
    with torch.no_grad():
        reference = sampler.student.x0(x, t, cond)
        teacher = sampler.model.backbone.denoiser()
        teacher.disable_adapters()
        assert not torch.allclose(sampler.model.backbone.x0(x, t, cond), reference, atol=1e-4)  # the student moved
    student = load_student(run, FinetuneConfig.from_overrides({"lora": {"rank": 2}}), "cpu")
    names = [n for n, _ in student.backbone.named_parameters()]
    assert not any(".generator." in n or ".fake." in n for n in names) and any(".finetune." in n for n in names)
    with torch.no_grad():
        torch.testing.assert_close(student.backbone.x0(x, t, cond), reference, rtol=1e-4, atol=1e-5)


def test_cli_end_to_end_on_the_tiny_zimage_folder(zimage_run):
    run, folder = zimage_run
    extra = ["steps=2", "batch_size=2", "eval_samples=2", "eval_new=2", "eval_every=2", "lora.rank=2",
             "progress_bar=false", "device=cpu"]
    assert main(["finetune", "--run", str(run), "--data", str(folder), *_sets(extra)]) == 0
    out = sorted((run.parents[1] / "finetune").iterdir())[-1]
    record = __import__("yaml").safe_load((out / "finetune.yaml").read_text())
    assert record["student"]["distill_lora_rank"] == 2 and record["student"]["student_steps"] == 8
    curve = _rows(out / "metrics.csv")
    assert [int(r["step"]) for r in curve] == [0, 2]
    assert all(r["new_out_std"] not in ("", "nan") and r["out_std"] not in ("", "nan") for r in curve)
    grids = json.loads((out / "grids.json").read_text())
    # the 8-step student at 4, 8 and 12 steps, guidance 0 / 1.5 / 3, before and after
    assert {(g["sample_guidance"], g["sample_steps"]) for g in grids} == {(g, n) for g in (0.0, 1.5, 3.0) for n in (4, 8, 12)}
    result = json.loads((out / "result.json").read_text())
    assert result["frozen_fingerprint"]["before"] == result["frozen_fingerprint"]["after"]
    assert (out / "grids" / "after_g3_n12.png").is_file() and (out / "adapter.pt").is_file()


def test_a_folder_without_captions_stops_before_any_weight_loads(zimage_run, tmp_path, capsys):
    run, _ = zimage_run
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert main(["finetune", "--run", str(run), "--data", str(tmp_path)]) == 2
    assert "have no caption" in capsys.readouterr().err


# -- reports/finetune: the five claims over seeds -------------------------------------------------------------

def _fake_finetune(arm, seed, rank=8, lr=1e-4, g=0.0, *, fd_before=20.0, fd_after=30.0, sat=(0.5, 0.6, 0.7),
                   sat_after=(0.5, 0.6, 0.7), fd_after_8=30.0):
    from pathlib import Path

    from ddmd_lab.report.finetune_sweep import Finetune

    spec = {"run": f"runs/x/{arm}/{seed}", "data": "mnist:7", "concept": "mnist:7",
            "student": {"arm": arm, "student_steps": 4, "scale": "fashion"}, "lora_targets": ["to_q"],
            "finetune": {"seed": seed, "lora": {"rank": rank}, "lr": lr, "train_guidance": g, "steps": 300,
                         "eval_samples": 200}}
    grids = []
    for phase, fd, fd8, sats in (("before", fd_before, fd_before, sat), ("after", fd_after, fd_after_8, sat_after)):
        for gs, s in zip((0.0, 1.5, 3.0), sats):
            for n in (4, 8):
                grids.append({"phase": phase, "sample_guidance": gs, "sample_steps": n, "saturated": s,
                              "out_of_range": s / 2, "new_saturated": s, "domain_fd": fd if n == 4 else fd8,
                              "new_adherence": 0.5})
    return Finetune(Path(f"/nowhere/{arm}-{rank}-{lr}-{g}-{seed}"), spec, grids, {})


def test_finetune_claims_pair_a_student_with_its_own_finetunes():
    from ddmd_lab.report.finetune_sweep import Sweep, claims, forgetting

    center = {"rank": 8, "lr": 1e-4, "train_guidance": 0.0}
    fts = []
    for arm in ("coupled", "decoupled_hybrid"):
        for s in (0, 1, 2):
            base = 10.0 * s + 10  # a seed effect far larger than the rank effect: only pairing sees the latter
            fts += [_fake_finetune(arm, s, fd_before=base, fd_after=base + 5, fd_after_8=base + 9),
                    _fake_finetune(arm, s, rank=4, fd_before=base, fd_after=base + 1 + 0.1 * s),
                    _fake_finetune(arm, s, rank=32, fd_before=base, fd_after=base + 8 + 0.2 * s)]
    sweep = Sweep(fts, center)
    assert sweep.center[:3] == (8, 1e-4, 0.0) and sweep.vary(rank=4)[0] == 4 and sweep.vary(lr=1e-3) is None
    assert forgetting(fts[0]) == 5.0
    judged = dict(claims(sweep, {g: {"saturated": v, "out_of_range": v / 2} for g, v in ((0.0, 0.5), (1.5, 0.55), (3.0, 0.9))}))
    one = judged["1. Guidance > 0 at sampling oversaturates a distilled student more than it does the teacher"]
    # the students' rise 0.1 / 0.2 against the teacher's 0.05 / 0.4, the same on every seed
    assert [round(v.diff.mean, 6) for v in one] == [0.05, 0.05, -0.2, -0.2, 0.025, 0.025, -0.1, -0.1]
    assert [v.result for v in one[:4]] == ["holds", "holds", "does not hold", "does not hold"]  # no spread: a point interval
    three = judged["3. Low rank and low learning rate preserve the old classes and the output statistics"]
    rank_fd = three[0]
    # the two students of a seed are one cluster (they share its fine-tune draws): n is 3 seeds, not 6 students
    assert rank_fd.diff.n == 3 and rank_fd.result == "holds"  # rank 4 forgets 1.1 +- 0.1, rank 32 8.2 +- 0.2
    assert rank_fd.p_adjusted == pytest.approx(min(1.0, 3 * rank_fd.p))  # Holm: the smallest of the claim's 3 p
    assert abs(rank_fd.diff.mean - -7.1) < 1e-9
    four = judged["4. The student's step count matters more after fine-tuning"]
    assert four[0].diff.mean == 4.0 and four[0].result == "holds"  # fd(8) - fd(4), signed: 4 after, 0 before
    assert abs(four[1].diff.mean - sum(4 / (10.0 * s + 15) for s in (0, 1, 2)) / 3) < 1e-12  # relative: over fd(4)
    five = judged["5. Fine-tuning a decoupled_hybrid and a coupled student differ"]
    assert all(v.diff.n == 3 for v in five)


def test_finetune_report_needs_its_center_and_names_what_ran():
    from ddmd_lab.report.finetune_sweep import Sweep

    with pytest.raises(UserError, match="no fine-tune at the center setting.*rank 4, lr 0.0001"):
        Sweep([_fake_finetune("coupled", 0, rank=4)], {"rank": 8, "lr": 1e-4, "train_guidance": 0.0})
    assert main(["finetune-report", "--center", "rnak=4"]) == 2  # a misspelt factor is refused, not ignored


def test_finetune_report_end_to_end_with_the_teacher_on_the_same_noise(mnist_run, tmp_path):
    from ddmd_lab.report.finetune_sweep import Sweep, claims, load_finetunes

    runs = tmp_path / "runs"
    for seed in (0, 1):
        for extra in ([], ["train_guidance=1.5"], ["lr=1e-3"]):
            assert main(["finetune", "--run", str(mnist_run), "--data", "mnist:7",
                         *_sets(FT + [f"seed={seed}", f"runs_dir={runs}", *extra])]) == 0
    reports = tmp_path / "reports"
    assert main(["finetune-report", "--scale", "mnist", "--runs-dir", str(runs), "--reports-dir", str(reports),
                 "--center", "rank=2"]) == 0
    page = (reports / "finetune" / "README.md").read_text()
    for section in ("### 1. Guidance", "### 2. Training with guidance", "### 4. The student's step count",
                    "![saturation against sampling guidance](guidance.png)"):
        assert section in page
    assert (reports / "finetune" / "guidance.png").is_file() and (reports / "finetune" / "grid_after.png").is_file()
    teacher = json.loads((reports / "finetune" / "teacher_guidance.json").read_text())["metrics"]
    assert sorted(map(float, teacher)) == [0.0, 1.5, 3.0] and teacher["3.0"]["ode_steps"] == 4
    assert teacher["3.0"]["saturated"] != teacher["0.0"]["saturated"]
    # claim 1's numbers are the grids' and the teacher's: student rise minus teacher rise, per seed
    fts = load_finetunes(runs, "mnist")
    sweep = Sweep(fts, {"rank": 2, "lr": 1e-4, "train_guidance": 0.0})
    first = claims(sweep, {float(g): m for g, m in teacher.items()})[0][1][0]
    rises = [ft.grid("before", "saturated", 1.5) - ft.grid("before", "saturated", 0.0)
             for ft in sweep.by[("coupled", sweep.center)].values()]
    t_rise = teacher["1.5"]["saturated"] - teacher["0.0"]["saturated"]
    assert first.diff.n == 2 and abs(first.diff.mean - (sum(rises) / 2 - t_rise)) < 1e-12
