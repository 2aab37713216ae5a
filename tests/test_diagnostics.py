"""Diagnostics: the per-sample math by hand, bins, the shared-tau pair, training unchanged, make diagnose, plots."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ddmd_lab.core.arms import REGISTRY
from ddmd_lab.backbones.toy import ToyFlowMLP
from ddmd_lab.config import RunConfig, load_config, parse_overrides
from ddmd_lab.method.diagnostics import measure, per_sample
from ddmd_lab.method.tau_bins import OWN, Binned, bin_samples, overall
from ddmd_lab.method.update import Draws, UpdateSettings, update_terms


def test_per_sample_by_hand():
    ca = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    dm = torch.tensor([[1.0, 1.0], [0.0, -1.0], [0.0, 0.0]])
    q = per_sample(ca, dm, torch.tensor([2.0, 3.0, 4.0]).view(3, 1), torch.tensor([5.0, 7.0, 9.0]).view(3, 1))
    # sample 0: |CA| = 1, |DM| = sqrt 2, CA.DM = 1; update (2, 1): |u|^2 = 5, CA.u = 2, DM.u = 3
    assert q["cos_ca_dm"][0].item() == pytest.approx(1 / math.sqrt(2))
    assert q["ratio_ca_dm"][0].item() == pytest.approx(1 / math.sqrt(2))
    assert q["share_ca"][0].item() == pytest.approx(0.4) and q["share_dm"][0].item() == pytest.approx(0.6)
    assert q["update_norm"][0].item() == pytest.approx(math.sqrt(5))
    # sample 1: opposite directions; update (0, 1): CA.u = 2, DM.u = -1 -- shares may leave [0, 1], they still sum to 1
    assert q["cos_ca_dm"][1].item() == pytest.approx(-1.0) and q["ratio_ca_dm"][1].item() == pytest.approx(2.0)
    assert q["share_ca"][1].item() == pytest.approx(2.0) and q["share_dm"][1].item() == pytest.approx(-1.0)
    # sample 2: DM = 0: cosine and ratio undefined (NaN), CA carries the whole update
    assert math.isnan(q["cos_ca_dm"][2].item()) and math.isnan(q["ratio_ca_dm"][2].item())
    assert q["share_ca"][2].item() == 1.0 and q["share_dm"][2].item() == 0.0
    torch.testing.assert_close(q["share_ca"] + q["share_dm"], torch.ones(3, dtype=torch.float64))
    assert q["normaliser_ca"].tolist() == [2.0, 3.0, 4.0] and q["normaliser_dm"].tolist() == [5.0, 7.0, 9.0]
    # one term: its share is 1, the pair is NaN
    alone = per_sample(None, dm[:2], None, torch.ones(2, 1))
    assert alone["share_dm"].tolist() == [1.0, 1.0]
    assert all(math.isnan(v) for k in ("cos_ca_dm", "ratio_ca_dm", "share_ca", "normaliser_ca") for v in alone[k].tolist())


def test_bins_counts_and_means():
    b = Binned(("a",), edges=(0.0, 0.5, 1.0))
    b.add(np.array([0.1, 0.5, 0.7, 1.0, 0.2]), {"a": np.array([1.0, 2.0, 4.0, np.nan, 3.0])})
    assert b.count.tolist() == [2, 3]  # 0.5 opens the upper bin, 1.0 closes it
    assert b.n["a"].tolist() == [2, 2]  # the NaN is counted in its bin, not in the mean
    np.testing.assert_allclose(b.mean("a"), [2.0, 3.0])
    np.testing.assert_allclose(b.std("a"), [1.0, 1.0])
    assert b.total_mean("a") == pytest.approx(2.5)
    both = b + Binned(("a",), edges=(0.0, 0.5, 1.0)).add(np.array([0.9]), {"a": np.array([9.0])})
    assert both.count.tolist() == [2, 4] and both.mean("a")[1] == pytest.approx(5.0)
    back = Binned.from_means(both.edges, both.count, {"a": both.mean("a")}, {"a": both.n["a"]})
    np.testing.assert_allclose(back.mean("a"), both.mean("a"))
    assert math.isnan(Binned(("a",), edges=(0.0, 1.0)).mean("a")[0])  # an empty bin has no mean
    # ten equal bins by default; a run's three binnings
    samples = {q: np.arange(4.0) for q in OWN} | {"tau_ca": np.array([0.05, 0.15, 0.95, 0.99]),
                                                 "tau_dm": np.array([0.5, 0.5, 0.5, 0.5])}
    bins = bin_samples(samples)
    assert set(bins) == {"tau_ca", "tau_dm"} and bins["tau_ca"].count.tolist() == [1, 1] + [0] * 7 + [2]
    assert bins["tau_dm"].count[5] == 4 and overall(bins)["share_ca"] == pytest.approx(1.5)


def _nets(seed=0):
    torch.manual_seed(seed)
    return ToyFlowMLP(num_classes=3, hidden=16, depth=2).eval(), ToyFlowMLP(num_classes=3, hidden=16, depth=2).eval()


class _Counting:
    """A backbone that counts its x0 calls."""

    def __init__(self, net):
        self.net, self.calls = net, 0

    def x0(self, *args):
        self.calls += 1
        return self.net.x0(*args)

    def __getattr__(self, name):
        return getattr(self.net, name)


def test_shared_draw_arm_has_equal_own_and_shared_cosines_at_no_extra_cost():
    teacher, fake = _nets()
    x, labels, t = torch.randn(64, 2), torch.randint(3, (64,)), torch.zeros(64)
    s = UpdateSettings(alpha=3.0)
    terms = update_terms(REGISTRY["coupled"], x, labels, t, teacher, fake, s)
    counted_t, counted_f = _Counting(teacher), _Counting(fake)
    q = measure(REGISTRY["coupled"], x, labels, t, counted_t, counted_f, s, terms=terms)
    assert counted_t.calls == 0 and counted_f.calls == 0
    np.testing.assert_array_equal(q["cos_ca_dm_own"], q["cos_ca_dm_shared"])
    np.testing.assert_array_equal(q["tau_shared"], q["tau_dm"])
    assert np.all(np.abs(q["cos_ca_dm_own"]) <= 1 + 1e-12)


@pytest.mark.parametrize("normaliser", ["shared", "per_term", "per_loss", "none"])
def test_decoupled_arm_at_one_given_draw_equals_its_shared_pair(normaliser):
    """With both own draws equal to the common one, the own-tau and shared-tau pairs agree; the pair costs one
    batched teacher call and one fake call."""
    teacher, fake = _nets(1)
    arm = REGISTRY["decoupled_hybrid"].with_overrides(normaliser=normaliser)
    x, labels, t = torch.randn(32, 2), torch.randint(3, (32,)), torch.full((32,), 0.25)
    tau, noise = torch.rand(32) * 0.9 + 0.05, torch.randn(32, 2)
    s = UpdateSettings(alpha=2.5)
    counted_t, counted_f = _Counting(teacher), _Counting(fake)
    terms = update_terms(arm, x, labels, t, teacher, fake, s, Draws(tau, noise, tau, noise))
    q = measure(arm, x, labels, t, counted_t, counted_f, s, terms=terms, shared=(tau, noise))
    assert counted_t.calls == 1 and counted_f.calls == 1
    np.testing.assert_allclose(q["cos_ca_dm_shared"], q["cos_ca_dm_own"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(q["ratio_ca_dm_shared"], q["ratio_ca_dm"], rtol=1e-5)
    np.testing.assert_allclose(q["share_ca"] + q["share_dm"], 1.0, rtol=1e-9)
    # and measure draws for itself when given nothing: own taus as the arm's rules say, tau_CA >= t
    q = measure(arm, x, labels, t, teacher, fake, s, generator=torch.Generator().manual_seed(0))
    assert q["tau_ca"].min() >= 0.25 - 1e-6 and q["tau_shared"].shape == (32,)


def _fit(tmp_path, every):
    from pytorch_lightning.loggers import CSVLogger

    from ddmd_lab.training.callbacks.diagnostics import DiagnosticsCallback
    from ddmd_lab.training.module import DistillModule

    pl.seed_everything(0, verbose=False)
    cfg = RunConfig.of(arm=REGISTRY["decoupled_hybrid"], steps=12, ttur=2, batch_size=16, wandb="disabled",
                    diagnostics_every=every, log_every=5)
    module = DistillModule(ToyFlowMLP(num_classes=3, hidden=16, depth=2), cfg)
    tmp_path.mkdir(parents=True, exist_ok=True)
    loader = DataLoader(TensorDataset(torch.randint(3, (12 * 16,)), torch.randn(12 * 16, 2)), batch_size=16)
    logger = CSVLogger(tmp_path, name="logs")
    pl.Trainer(max_epochs=1, accelerator="cpu", logger=logger, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, log_every_n_steps=5,
               callbacks=[DiagnosticsCallback(tmp_path)] if every else []).fit(module, loader)
    return module, logger, torch.get_rng_state()


def test_training_is_bit_identical_with_diagnostics_on_or_off(tmp_path):
    on, logger, rng_on = _fit(tmp_path / "on", every=2)
    off, _, rng_off = _fit(tmp_path / "off", every=0)
    for name in ("generator", "fake"):
        a, b = getattr(on, name).state_dict(), getattr(off, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert torch.equal(rng_on, rng_off)  # the training RNG ends where it would have
    assert not (tmp_path / "off" / "diagnostics.csv").exists()
    rows = list(csv.DictReader((tmp_path / "on" / "diagnostics.csv").open()))
    # 6 generator steps: every 2nd and the last (steps 3, 7, 11 of 12), three binnings of ten bins each
    assert sorted({(int(r["step"]), int(r["generator_step"])) for r in rows}) == [(3, 2), (7, 4), (11, 6)]
    assert len(rows) == 3 * 3 * 10
    first = [r for r in rows if r["step"] == "3"]
    for by in ("tau_ca", "tau_dm", "tau_shared"):
        assert sum(int(r["count"]) for r in first if r["by"] == by) == 16
    shares = [(float(r["share_ca"]), float(r["share_dm"])) for r in first if r["by"] == "tau_dm" and r["share_ca"]]
    assert shares and all(a + b == pytest.approx(1.0, abs=1e-4) for a, b in shares)
    header = next(csv.reader((Path(logger.log_dir) / "metrics.csv").open()))
    assert {"diag/cos_ca_dm_own", "diag/cos_ca_dm_shared", "diag/ratio_ca_dm", "diag/share_ca"} <= set(header)


SMALL = ["teacher={steps: 100, data_size: 4096, hidden: 64}", "batch_size=64", "ttur=3", "eval_every=30",
         "eval_samples=200", "checkpoint_every=30", "progress_bar=false", "wandb=disabled", "steps=30"]


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    from ddmd_lab.training.run import run_ablation

    root = tmp_path_factory.mktemp("diag")
    dirs = [f"runs_dir={root / 'runs'}", f"cache_dir={root / 'cache'}"]
    return {arm: run_ablation(load_config("toy2d", arm, parse_overrides(SMALL + dirs))) for arm in ("coupled", "decoupled_hybrid")}


def test_make_diagnose_writes_json_and_says_when_it_replaces_it(toy_runs, capsys):
    from ddmd_lab.commands.cli import main

    run = toy_runs["decoupled_hybrid"]
    assert main(["diagnose", "--run", str(run), "--samples", "200"]) == 0
    out = capsys.readouterr().out
    assert "diagnostics written" in out and "replaced" not in out
    record = json.loads((run / "diagnostics.json").read_text())
    assert record["samples"] == 256 and record["checkpoint"] == "checkpoints/final.ckpt"  # whole batches of 64
    assert record["generator_steps"] == 10 and record["arm"] == "decoupled_hybrid"
    for by in ("tau_ca", "tau_dm", "tau_shared"):
        assert sum(record["bins"][by]["count"]) == 256 and len(record["bins"][by]["edges"]) == 11
    assert -1 <= record["overall"]["cos_ca_dm_shared"] <= 1
    assert record["overall"]["share_ca"] + record["overall"]["share_dm"] == pytest.approx(1.0, abs=1e-6)
    before = sorted(p.name for p in run.iterdir())
    assert main(["diagnose", "--run", str(run), "--samples", "64"]) == 0
    assert "(replaced the previous diagnostics.json)" in capsys.readouterr().out
    assert sorted(p.name for p in run.iterdir()) == before  # nothing else written
    assert json.loads((run / "diagnostics.json").read_text())["samples"] == 64


def test_make_diagnose_refuses_a_run_without_checkpoint(toy_runs, tmp_path, capsys):
    from ddmd_lab.commands.cli import main

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text((toy_runs["coupled"] / "config.yaml").read_text())
    assert main(["diagnose", "--run", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "has no checkpoint" in err and "make diagnose" in err
    assert main(["diagnose", "--run", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert not list((tmp_path / "run").glob("diagnostics*"))


def test_plots_and_table_from_json_and_from_the_training_csv(toy_runs, tmp_path):
    from ddmd_lab.commands.diagnose import diagnose_run
    from ddmd_lab.report.diagnostics_plots import diagnostics_section, load_diagnostics

    diagnose_run(toy_runs["decoupled_hybrid"], 64)
    coupled = toy_runs["coupled"]
    assert not (coupled / "diagnostics.json").exists() and (coupled / "diagnostics.csv").is_file()
    from_csv = load_diagnostics(coupled)
    assert from_csv["source"].startswith("diagnostics.csv") and from_csv["samples"] == 64  # one step: the last
    lines = diagnostics_section(list(toy_runs.values()), tmp_path)
    assert (tmp_path / "diagnostics.png").stat().st_size > 10_000
    table = [ln for ln in lines if ln.startswith("| ")][0].splitlines()
    assert len(table) == 2 + 2 and "coupled, 4-step" in table[2] and "diagnostics.json" in table[3]
    assert diagnostics_section([], tmp_path / "none") == []


def test_logged_values_batch_means_and_bins_without_dots():
    from ddmd_lab.method.tau_bins import QUANTITIES
    from ddmd_lab.training.callbacks.diagnostics import log_values

    samples = {q: np.array([1.0, 2.0, 3.0, 6.0]) for q in QUANTITIES}
    samples |= {"tau_ca": np.array([0.55, 0.55, 0.95, 0.95]), "tau_dm": np.array([0.05, 0.35, 0.35, 0.35]),
                "tau_shared": np.array([0.5, 0.5, 0.5, 0.5])}
    scalars, per_bin = log_values({"bins": bin_samples(samples)})
    assert scalars["diag/share_ca"] == 3.0 and scalars["diag/cos_ca_dm_shared"] == 3.0
    assert per_bin["diag_bins/share_ca/tau050-060"] == 1.5 and per_bin["diag_bins/share_ca/tau090-100"] == 4.5
    assert per_bin["diag_bins/cos_ca_dm_own/tau030-040"] == pytest.approx(11 / 3)  # pairs by tau_DM
    assert per_bin["diag_bins/count_tau_dm/tau030-040"] == 0.75
    assert not any("." in k for k in per_bin)
