"""The config's typed sections: users' flat keys land in their sections, config.yaml keeps its flat keys in
their old order (run folders written before the sections load unchanged), and a wrong key or value stops
with one sentence."""
import pytest
import yaml

from ddmd_lab.config import RunConfig, load_config, read_config, save_config
from ddmd_lab.config.sections import KEY_ORDER, SECTIONS
from ddmd_lab.errors import UserError

# config.yaml's keys as every run folder before the sections wrote them (d0a7fbb's RunConfig fields)
FLAT_KEYS = ["scale", "arm", "seed", "steps", "ttur", "batch_size", "alpha", "shift", "student_steps", "student_times",
             "student_sampler", "tau_clamp", "normaliser_eps", "critic_target", "meanvar_mu", "meanvar_var",
             "meanvar_scope", "lr_generator", "lr_fake", "betas", "weight_decay", "grad_clip", "max_nonfinite_in_row",
             "max_skipped_share", "ema_decay", "eval_every", "log_every", "eval_samples", "diagnostics_every", "fid_samples", "score_last", "checkpoint_every", "wandb",
             "runs_dir", "cache_dir", "accelerator", "devices", "strategy", "fsdp_teacher", "lora", "precision",
             "gradient_checkpointing", "master_dtype", "num_nodes", "progress_bar", "pg_timeout", "teacher", "data"]


def test_flat_keys_land_in_their_sections():
    cfg = load_config("toy2d", "coupled", {"alpha": 4, "lr_fake": 1e-3, "steps": 7, "seed": 3, "strategy": "ddp",
                                           "student_steps": 2, "eval_every": 5, "teacher": {"kind": "exact"}})
    assert (cfg.objective.alpha, cfg.optimisation.lr_fake, cfg.schedule.steps, cfg.run.seed) == (4.0, 1e-3, 7, 3)
    assert (cfg.parallel.strategy, cfg.student.student_steps, cfg.evaluation.eval_every) == ("ddp", 2, 5)
    assert cfg.teacher == {"kind": "exact"} and cfg.arm.name == "coupled" and cfg.run.scale == "toy2d"
    assert cfg.schedule.generator_steps == 2  # ceil(7 / ttur 5)


def test_config_yaml_keeps_its_flat_keys_and_round_trips(tmp_path):
    assert list(KEY_ORDER) == FLAT_KEYS
    cfg = load_config("fashion", "decoupled_hybrid", {"lora": {"rank": 0}, "tau_clamp": [0.1, 0.9], "alpha": 2})
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    written = yaml.safe_load(path.read_text())
    assert list(written) == FLAT_KEYS and written["alpha"] == 2.0 and written["tau_clamp"] == [0.1, 0.9]
    assert read_config(path) == cfg
    every = {name for name, cls in SECTIONS}
    assert every == {"run", "schedule", "student", "objective", "optimisation", "evaluation", "parallel"}


def test_replace_changes_one_section_and_checks_it():
    cfg = RunConfig.of(steps=10, alpha=4.0)
    other = cfg.replace(seed=1)
    assert other.run.seed == 1 and other.schedule == cfg.schedule and other.objective == cfg.objective
    with pytest.raises(UserError, match="student_times must list"):
        cfg.replace(student_times=[0.0, 0.5])  # 2 times for a 4-step student
    with pytest.raises(UserError, match=r"unknown key\(s\) \['alpah'\]"):
        cfg.replace(alpah=3)
    with pytest.raises(UserError, match="alpha must be a finite number"):
        load_config("toy2d", "coupled", {"alpha": "three"})
    with pytest.raises(UserError, match="strategy=fsdp with LoRA shards the one base.*set fsdp_teacher=shard"):
        RunConfig.of(strategy="fsdp", lora={"rank": 4}, fsdp_teacher="replicate")
