import pytest
import yaml

from ddmd_lab.config import known_arm_names, resolve_arm
from ddmd_lab.core.arms import REGISTRY, Arm
from ddmd_lab.config import RunConfig, load_config, parse_overrides, read_config, save_config
from ddmd_lab.errors import UserError

PAPER_ARMS = ["coupled", "decoupled_full", "decoupled_constrained", "decoupled_hybrid", "ca_only", "dm_only", "ca_meanvar"]
TAU_SWEEP = {"ca_tau_0-0.05": (0.0, 0.05), "ca_tau_0-0.1": (0.0, 0.1), "ca_tau_0-0.3": (0.0, 0.3),
             "ca_tau_0-1": (0.0, 1.0), "ca_tau_0.7-1": (0.7, 1.0)}


@pytest.mark.parametrize("name", known_arm_names())
def test_every_arm_round_trips_through_yaml(name):
    arm, _ = resolve_arm(name)
    assert Arm.from_dict(yaml.safe_load(yaml.safe_dump(arm.to_dict()))) == arm


def test_registry_has_the_papers_arms_with_their_schedules():
    assert set(PAPER_ARMS) <= set(REGISTRY)
    kinds = {n: (REGISTRY[n].tau_ca.kind, REGISTRY[n].tau_dm.kind) for n in PAPER_ARMS[:4]}
    assert kinds == {"coupled": ("uniform", "uniform"), "decoupled_full": ("uniform", "uniform"),
                     "decoupled_constrained": ("above_t", "above_t"), "decoupled_hybrid": ("above_t", "uniform")}
    assert REGISTRY["coupled"].shared_draw and not REGISTRY["decoupled_full"].shared_draw
    assert not REGISTRY["ca_only"].uses_dm and REGISTRY["ca_only"].train_fake  # observer
    assert not REGISTRY["dm_only"].uses_ca
    assert REGISTRY["ca_meanvar"].meanvar_weight > 0 and not REGISTRY["ca_meanvar"].uses_dm


@pytest.mark.parametrize("name,bounds", TAU_SWEEP.items())
def test_tau_sweep_variants_are_ca_only_overrides(name, bounds):
    cfg = load_config("toy2d", name)
    assert (cfg.arm.tau_ca.lo, cfg.arm.tau_ca.hi) == bounds
    assert cfg.arm.tau_ca.kind == "uniform" and not cfg.arm.uses_dm
    assert cfg.student.student_steps == 1  # the paper's sweep is 1-step


def test_unknown_arm_lists_known_ones():
    with pytest.raises(UserError) as err:
        resolve_arm("ca_onyl")
    msg = str(err.value)
    assert "ca_onyl" in msg and all(a in msg for a in PAPER_ARMS) and "\n" not in msg


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("toy2d", "decoupled_hybrid", parse_overrides(["alpha=4", "arm.normaliser=per_term"]))
    assert cfg.objective.alpha == 4.0 and cfg.arm.normaliser == "per_term"
    save_config(cfg, tmp_path / "config.yaml")
    assert read_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("overrides,fragment", [
    (["alpah=3"], "unknown key"),
    (["alpha=three"], "alpha must be a finite number"),
    (["steps=1.5"], "steps must be an integer"),
    (["ttur=0"], "ttur must be an integer >= 1"),
    (["arm.normaliser=global"], "normaliser"),
    (["arm.tau_ca={kind: gauss}"], "tau_ca"),
])
def test_bad_config_gets_one_clear_sentence(overrides, fragment):
    with pytest.raises(UserError, match=fragment):
        load_config("toy2d", "decoupled_hybrid", parse_overrides(overrides))


def test_unknown_scale():
    with pytest.raises(UserError, match="known scales: .*toy2d"):
        load_config("toy3d", "coupled")


def test_generator_step_count_is_ceil():
    assert RunConfig.of(steps=11, ttur=5).schedule.generator_steps == 3


def test_malformed_arm_yaml_is_a_clear_error(tmp_path):
    (tmp_path / "broken.yaml").write_text("base: ca_only\narm: {tau_ca: [unclosed\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        resolve_arm("broken", tmp_path)
    (tmp_path / "nobase.yaml").write_text("arm: {ca_weight: 2}\n")
    with pytest.raises(UserError, match="needs 'base'"):
        resolve_arm("nobase", tmp_path)


@pytest.mark.parametrize("times,ok", [([0.0, 0.25, 0.5, 0.75], True), ([0.06, 0.3, 0.55, 0.8], True),
                                      ([0.5, 0.25, 0.6, 0.7], False), ([0.0, 0.25, 0.5], False), ([0.0, 0.3, 0.6, 1.0], False)])
def test_explicit_student_times_are_validated(times, ok):
    if ok:
        assert RunConfig.of(student_times=times).student.student_times == times
    else:
        with pytest.raises(UserError, match="student_times"):
            RunConfig.of(student_times=times)
