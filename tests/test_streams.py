"""Common random numbers and a quieter instrument (issue 22): per-purpose keyed streams, an evaluator
that owns its noise, and the generator's weight average.

The runs are tiny toy2d runs in this process (a 30-step toy teacher, trained once into the module's
cache); draws are recorded by wrapping the functions the module calls.
"""
import itertools

import pytest
import torch

from ddmd_lab.config import load_config, parse_overrides
from ddmd_lab.core.streams import PURPOSES, Streams, stream_seed
from ddmd_lab.method.ema import WeightAverage, decay_at

from .tiny_toy import TINY_TOY

SMALL = TINY_TOY + ["ttur=2", "steps=6", "eval_every=100"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("streams")
    return [f"runs_dir={root / 'runs'}", f"cache_dir={root / 'cache'}"]


def _run(dirs, arm, extra=()):
    from ddmd_lab.training.run import run_ablation

    return run_ablation(load_config("toy2d", arm, parse_overrides(SMALL + dirs + list(extra))))


# ---- the keys ---------------------------------------------------------------------------------------

def test_every_key_gives_its_own_seed_and_the_same_one_every_time():
    keys = list(itertools.product([0, 1], [0, 1], PURPOSES, [0, 1, 2]))
    seeds = [stream_seed(*k) for k in keys]
    assert len(set(seeds)) == len(keys) and seeds == [stream_seed(*k) for k in keys]
    assert all(0 <= s < 2**63 for s in seeds)
    s = Streams(3, 1)
    a = s.randn("noise_ca", 7, (4,), "cpu")
    s.randn("noise_dm", 7, (1000,), "cpu")  # another purpose's draw in between changes nothing
    assert torch.equal(a, s.randn("noise_ca", 7, (4,), "cpu"))
    with pytest.raises(ValueError, match="unknown random stream"):
        stream_seed(0, 0, "labels2", 0)


# ---- two arms, one seed -----------------------------------------------------------------------------

def _draws_of(dirs, arm, monkeypatch):
    """Per training step: the labels, the start noise of the backward simulation and the update's draws."""
    from ddmd_lab.method import update
    from ddmd_lab.training import module

    seen = {"labels": [], "start": [], "noise_ca": [], "noise_dm": [], "u_ca": []}
    real_condition, real_simulate, real_draw = module.condition_of, module.backward_simulate, update.draw

    def condition_of(batch):
        cond = real_condition(batch)
        seen["labels"].append(cond.clone())
        return cond

    def backward_simulate(model, noise, *args, **kwargs):
        seen["start"].append(noise.clone())
        return real_simulate(model, noise, *args, **kwargs)

    def draw(arm_, x, t, s, streams=None, step=0):
        d = real_draw(arm_, x, t, s, streams, step)
        seen["noise_ca"].append(d.noise_ca.clone() if d.noise_ca is not None else None)
        seen["noise_dm"].append(d.noise_dm.clone() if d.noise_dm is not None else None)
        return d

    monkeypatch.setattr(module, "condition_of", condition_of)
    monkeypatch.setattr(module, "backward_simulate", backward_simulate)
    monkeypatch.setattr(update, "draw", draw)
    _run(dirs, arm)
    monkeypatch.undo()
    return seen


def test_two_arms_at_one_seed_see_the_same_labels_start_noise_and_ca_draw(dirs, monkeypatch):
    """Fails on the code before the streams: coupled draws one (tau, noise) per generator step and
    decoupled_hybrid two, from one global generator, so their later labels-to-noise pairing drifts."""
    coupled = _draws_of(dirs, "coupled", monkeypatch)
    hybrid = _draws_of(dirs, "decoupled_hybrid", monkeypatch)
    assert len(coupled["labels"]) == len(hybrid["labels"]) == 6
    assert all(torch.equal(a, b) for a, b in zip(coupled["labels"], hybrid["labels"]))
    assert len(coupled["start"]) == len(hybrid["start"]) == 6  # one student input per step
    assert all(torch.equal(a, b) for a, b in zip(coupled["start"], hybrid["start"]))
    # coupled's one shared draw is the decoupled arm's CA draw; the DM draw is the decoupled arm's own
    assert len(coupled["noise_ca"]) == 3
    assert all(torch.equal(a, b) for a, b in zip(coupled["noise_ca"], hybrid["noise_ca"]))
    assert all(torch.equal(a, b) for a, b in zip(coupled["noise_ca"], coupled["noise_dm"]))
    assert not any(torch.equal(a, b) for a, b in zip(hybrid["noise_ca"], hybrid["noise_dm"]))


# ---- the evaluator owns its noise ---------------------------------------------------------------------

def test_one_checkpoint_scores_the_same_before_and_after_another_run_trains(dirs):
    """Fails on the code before: the 4-step student's re-noising at evaluation drew from torch's global RNG,
    which training moves."""
    from ddmd_lab.scales.base import get_scale
    from ddmd_lab.training.restore import load_run

    first = _run(dirs, "coupled", ["seed=5"])
    module = load_run(first)
    evaluator = get_scale("toy2d").make_evaluator(module.cfg)
    before = evaluator(module)
    torch.manual_seed(123)
    _run(dirs, "decoupled_hybrid", ["seed=6"])  # more training in this process
    torch.rand(17)
    after = evaluator(module)
    assert before == after


# ---- the generator's weight average ------------------------------------------------------------------

def test_the_weight_average_follows_its_rule_and_gives_the_weights_back():
    assert decay_at(0.99, 0) == pytest.approx(0.1) and decay_at(0.99, 8) == pytest.approx(0.5)
    assert decay_at(0.99, 10_000) == 0.99 and decay_at(0.5, 20) == 0.5
    p = torch.nn.Parameter(torch.zeros(3))
    ema = WeightAverage([p], 0.9)
    expected = torch.zeros(3)
    for n, value in enumerate([1.0, 2.0, 4.0]):
        with torch.no_grad():
            p.fill_(value)
        ema.update()
        d = decay_at(0.9, n)
        expected = d * expected + (1 - d) * value
    assert ema.updates == 3 and torch.allclose(ema.average[0], expected)
    with ema.applied():
        assert torch.allclose(p, expected)
    assert torch.equal(p.detach(), torch.full((3,), 4.0))
    with pytest.raises(ValueError, match="other tensors"):
        WeightAverage([p], 0.9, 0, [torch.zeros(4)])


def test_a_run_with_an_average_evaluates_samples_and_exports_the_average(dirs):
    import csv

    from ddmd_lab.training.restore import load_run

    run = _run(dirs, "decoupled_hybrid", ["ema_decay=0.8", "eval_every=2", "seed=7"])
    ckpt = torch.load(run / "checkpoints" / "final.ckpt", weights_only=True)
    (state,) = ckpt["ddmd_ema"]
    assert state["updates"] == 3 and state["decay"] == 0.8
    student = ckpt["ddmd_student"]
    assert student and all(k.startswith("generator.") for k in student)
    assert any(not torch.equal(v, ckpt["state_dict"][k]) for k, v in student.items())
    loaded = load_run(run)  # what sample / export / spectra load: the average
    own = {f"generator.{k}": v for k, v in loaded.generator.state_dict().items()}
    assert all(torch.equal(own[k], v) for k, v in student.items())
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert "raw_cfg_target_w1" in rows[-1] or any(k.startswith("raw_") for k in rows[-1])
    first = rows[0]  # before any update the average is the generator: both read the same
    assert all(first[k] == first[f"raw_{k}"] for k in first if f"raw_{k}" in first)
