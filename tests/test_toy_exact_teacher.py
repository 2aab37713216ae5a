"""toy2d's teacher.kind=exact: the distillation queries the mixture's closed-form denoiser, while the
generator and the fake model start from the trained MLP teacher (as they do with kind=trained)."""
import json
from pathlib import Path

import pytest
import torch

from ddmd_lab.backbones.base import batched_x0
from ddmd_lab.backbones.toy import ExactToyDenoiser, ToyFlowMLP
from ddmd_lab.commands.cli import main
from ddmd_lab.config import load_config, parse_overrides, read_config
from ddmd_lab.data.toy2d import ToyMixture
from ddmd_lab.errors import UserError
from ddmd_lab.core.flow import renoise
from ddmd_lab.training.restore import load_run
from ddmd_lab.training.module import DistillModule
from ddmd_lab.training.run import run_ablation
from ddmd_lab.scales import toy2d
from ddmd_lab.training.networks import load_networks

from .test_resume import SMALL


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact_teacher")
    return [f"runs_dir={root / 'runs'}", f"cache_dir={root / 'cache'}"]


def _cfg(dirs, arm="decoupled_hybrid", *items):
    return load_config("toy2d", arm, parse_overrides(SMALL + dirs + ["teacher.kind=exact", *items]))


def _queries(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g) * 2, torch.rand(n, generator=g) * 0.96 + 0.02, torch.randint(4, (n,), generator=g)


def test_exact_teacher_is_the_mixtures_denoiser(dirs):
    mix = toy2d.mixture(_cfg(dirs))
    teacher = toy2d.load_teacher(_cfg(dirs))  # no MLP is needed, so none is trained here
    assert isinstance(teacher, ExactToyDenoiser)
    x, t, labels = _queries()
    null = teacher.null_condition(labels)
    torch.testing.assert_close(teacher.x0(x, t, labels), mix.posterior_x0(x, t, labels), rtol=0, atol=0)
    torch.testing.assert_close(teacher.x0(x, t, null), mix.posterior_x0(x, t, None), rtol=0, atol=0)
    # cond and null rows in one call, as the generator's update asks for them
    cond_x0, uncond_x0 = batched_x0(teacher, [(x, t, labels), (x, t, null)])
    torch.testing.assert_close(cond_x0, mix.posterior_x0(x, t, labels))
    torch.testing.assert_close(uncond_x0, mix.posterior_x0(x, t, None))
    assert (cond_x0 - uncond_x0).abs().max() > 0.1  # the two really differ: guidance has something to act on
    assert torch.equal(teacher.null_batch(3), torch.full((3,), 4))


def test_exact_teacher_uses_the_runs_time_convention():
    """t = 1 is clean: a point re-noised as the update re-noises it, at t near 1, is denoised to itself."""
    mix = ToyMixture()
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(200) % 4
    x0 = mix.sample(labels, g)
    t = torch.full((200,), 0.995)
    x_t = renoise(x0, torch.randn(200, 2, generator=g), t)
    assert (ExactToyDenoiser(mix).x0(x_t, t, labels) - x0).abs().max() < 0.05


def test_generator_and_fake_start_from_the_trained_mlp(dirs):
    cfg = _cfg(dirs)
    teacher, init = load_networks(cfg)
    module = DistillModule(teacher, cfg, init)
    trained = toy2d.load_trained(cfg).state_dict()
    assert isinstance(module.teacher, ExactToyDenoiser)
    for net in (module.generator, module.fake):
        assert isinstance(net, ToyFlowMLP)
        torch.testing.assert_close(net.state_dict(), trained, rtol=0, atol=0)
    # kind=trained: as before, the teacher is that MLP and there is no separate start
    trained_cfg = load_config("toy2d", "decoupled_hybrid", parse_overrides(SMALL + dirs))
    teacher, init = load_networks(trained_cfg)
    assert init is None and isinstance(teacher, ToyFlowMLP)
    torch.testing.assert_close(teacher.state_dict(), trained, rtol=0, atol=0)
    assert toy2d.teacher_dir(trained_cfg) == toy2d.teacher_dir(cfg)  # one MLP, trained and cached once


def test_exact_teacher_run_from_the_cli(dirs, capsys):
    argv = ["ablation", "--arm", "decoupled_hybrid", "--steps", "6"]
    for item in SMALL + dirs + ["teacher.kind=exact", "eval_every=3"]:
        argv += ["--set", item]
    assert main(argv) == 0
    run = Path(next(p for p in capsys.readouterr().out.splitlines() if p.startswith("run folder:")).split(": ", 1)[1])
    assert read_config(run / "config.yaml").teacher["kind"] == "exact"
    assert json.loads((run / "summary.json").read_text())["generator_steps"] == 2
    module = load_run(run)  # its checkpoint names the exact teacher's fingerprint, and loads with that teacher
    assert isinstance(module.teacher, ExactToyDenoiser)
    trained_cfg = load_config("toy2d", "decoupled_hybrid", parse_overrides(SMALL + dirs))
    with pytest.raises(UserError, match="teacher"):  # not with the trained MLP as the teacher
        DistillModule(toy2d.load_teacher(trained_cfg), trained_cfg).load_weights(
            torch.load(run / "checkpoints" / "final.ckpt", weights_only=True))


def test_bad_teacher_kind_names_the_allowed_ones(dirs):
    cfg = _cfg(dirs, "coupled", "teacher.kind=oracle")
    with pytest.raises(UserError, match=r"teacher.kind='oracle'.*'trained'.*'exact'"):
        run_ablation(cfg)


def test_teacher_tables_pair_runs_by_seed():
    from ddmd_lab.report.toy_teachers import arms_table, gaps, in_sweep, teacher_effect_table

    c = {("trained", "coupled"): {0: 1.0, 1: 1.1, 2: 0.9}, ("trained", "decoupled_hybrid"): {0: 1.5, 1: 1.7, 2: 1.4},
         ("exact", "coupled"): {0: 0.5, 1: 0.6, 2: 0.4}, ("exact", "decoupled_hybrid"): {0: 0.6, 1: 0.7, 2: 0.5, 3: 9.0}}
    assert gaps(c, "exact", "decoupled_hybrid") == pytest.approx({0: 0.1, 1: 0.1, 2: 0.1})  # seed 3 has no pair
    effect = {row[0]: row for row in teacher_effect_table(c).rows}["#4 decoupled_hybrid"]
    assert effect[2] == "holds" and effect[-1] == "holds"  # exact better, and its gap to #1 shrinks
    assert effect[-2].startswith("-0.4333")
    rows = {(r[0], r[1]): r for r in arms_table({m: c for m in ("dist_cfg_target", "dist_conditional", "class_precision",
                                                                  "out_std", "outside_support")}).rows}
    assert rows["trained", "#4 decoupled_hybrid"][5] == "does not hold" and rows["trained", "#1 coupled"][5] == "–"
    # the sweep: the scale's own config of the arm; the teacher's kind is the compared axis, not a difference
    assert in_sweep(load_config("toy2d", "coupled", {"teacher": {"kind": "exact"}}), toy2d.teacher_settings)
    assert in_sweep(load_config("toy2d", "dm_only", {"teacher": {"kind": "trained", "steps": 3000}}), toy2d.teacher_settings)
    assert not in_sweep(load_config("toy2d", "coupled", {"steps": 5}), toy2d.teacher_settings)
    assert not in_sweep(load_config("toy2d", "coupled", {"teacher": {"steps": 100}}), toy2d.teacher_settings)


def test_teacher_error_by_tau_is_zero_for_the_exact_teacher():
    from ddmd_lab.commands.toy_teachers import teacher_error_by_tau

    mix = ToyMixture()
    rows = teacher_error_by_tau(ExactToyDenoiser(mix), mix, (0.1, 0.9), n=200)
    assert [r["tau"] for r in rows] == pytest.approx([0.1, 0.9])
    assert all(r[k] == 0 for r in rows for k in ("cond_rms_error", "uncond_rms_error", "ca_rms_error"))
    assert rows[0]["ca_exact_rms"] > rows[1]["ca_exact_rms"] > 0  # guidance's direction fades towards clean


def test_exact_teacher_runs_are_a_group_of_their_own(tmp_path):
    """The report's seeded groups label the exact teacher's runs, so they never stand for an arm's trained runs."""
    from ddmd_lab.config import save_config
    from ddmd_lab.report.runs import finished_runs
    from ddmd_lab.report.seeded import seed_groups

    for i, (seed, teacher) in enumerate([(0, {}), (1, {}), (0, {"kind": "exact"})]):
        folder = tmp_path / "toy2d" / "coupled" / f"20260101-00000{i}-s{seed}"
        folder.mkdir(parents=True)
        save_config(load_config("toy2d", "coupled", {"seed": seed, "teacher": teacher}), folder / "config.yaml")
        (folder / "summary.json").write_text(json.dumps({"dist_cfg_target": 0.2}))
    names = sorted((g.name, len(g.runs)) for g in seed_groups(finished_runs(tmp_path, "toy2d")))
    assert names == [("coupled", 2), ("coupled [teacher.kind=exact]", 1)]
