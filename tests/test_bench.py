import pytest

from ddmd_lab.core.arms import REGISTRY
from ddmd_lab.commands.bench import step_floor

from .tiny_toy import TINY_TOY

# unit costs: a no-grad forward at B, 2B, 3B costs 1, 2, 3; a forward+backward 10
COST = {"fwd1": 1.0, "fwd2": 2.0, "fwd3": 3.0, "fwd_bwd": 10.0}


def test_floor_follows_the_nfe_table():
    # generator fwd+bwd + teacher (one batched call) + fake (DM only) + critic fwd+bwd
    assert step_floor(REGISTRY["coupled"], COST, ttur=1, student_steps=1) == 10 + 2 + 1 + 10
    assert step_floor(REGISTRY["decoupled_hybrid"], COST, ttur=1, student_steps=1) == 10 + 3 + 1 + 10
    assert step_floor(REGISTRY["ca_only"], COST, ttur=1, student_steps=1) == 10 + 2 + 10  # observer critic
    assert step_floor(REGISTRY["dm_only"], COST, ttur=1, student_steps=1) == 10 + 1 + 1 + 10


def test_floor_with_ttur_and_backward_simulation():
    # ttur 2, 3 student steps: backward simulation averages 1 no-grad generator call;
    # the critic-only step draws a fresh sample (1 + 1) and trains (10)
    gen_step = 1 + 10 + 2 + 1 + 10
    critic_only = 1 + 1 + 10
    assert step_floor(REGISTRY["coupled"], COST, ttur=2, student_steps=3) == (gen_step + critic_only) / 2


def test_floor_counts_the_gan_feature_passes():
    cost = dict(COST, features_fwd_bwd=4.0, features2_fwd_bwd=7.0)
    # generator: + features of its sample; critic: + features of the sample and a real batch in one call
    assert step_floor(REGISTRY["ca_gan"], cost, ttur=1, student_steps=1) == (10 + 2 + 4) + (10 + 7)


def test_a_whole_run_splits_into_its_phases(tmp_path, monkeypatch):
    """make bench's whole run: a step's time holds the step alone; the evaluations (here made to last
    a known second each) fall between steps, the step-0 one included."""
    import time

    from ddmd_lab.config import load_config, parse_overrides
    from ddmd_lab.training.bench_fit import timed_run
    from ddmd_lab.training.callbacks.evaluation import EvalCallback

    record = EvalCallback._record

    def slow_record(self, module):
        time.sleep(1.0)
        return record(self, module)

    monkeypatch.setattr(EvalCallback, "_record", slow_record)
    cfg = load_config("toy2d", "decoupled_hybrid", parse_overrides(TINY_TOY + [
        "steps=6", "ttur=2", "eval_every=2", f"runs_dir={tmp_path / 'runs'}", f"cache_dir={tmp_path / 'cache'}"]))
    phases = timed_run(cfg)
    assert phases.between >= 4.0  # evaluations at steps 0, 2, 4, 6
    assert 0 < phases.steps < 1.0 and phases.setup > 0 and phases.end >= 0
    assert phases.setup + phases.steps + phases.between + phases.end == pytest.approx(phases.total)
    assert not (tmp_path / "runs").exists()  # the run went to a scratch folder, deleted after
