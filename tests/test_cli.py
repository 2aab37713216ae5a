import pytest

from ddmd_lab.commands.cli import main
from ddmd_lab.config import read_config


@pytest.mark.parametrize("argv,fragment", [
    (["ablation", "--arm", "nope"], "unknown arm 'nope'; known arms: ca_gan, ca_meanvar, ca_only, coupled"),
    (["ablation", "--scale", "toy3d"], "unknown scale 'toy3d'"),
    (["ablation", "--set", "alpha"], "is not key=value"),
    (["ablation", "--set", "lr_generatr=1e-4"], "unknown key(s) ['lr_generatr']"),
    (["teacher", "--set", "teacher={depht: 3}"], "teacher: unknown key(s) ['depht']"),
])
def test_bad_input_is_one_line_and_exit_2(argv, fragment, capsys, tmp_path):
    code = main(argv + ["--set", f"runs_dir={tmp_path}/runs", "--set", f"cache_dir={tmp_path}/cache"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and fragment in err and "\n" not in err
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_offline_wandb_run_writes_locally_and_each_run_of_a_sweep_gets_its_own(tmp_path, capsys):
    code = main(["sweep", "--arms", "ca_only,dm_only", "--seeds", "0,1", "--steps", "4",
                 "--set", f"runs_dir={tmp_path}/runs", "--set", f"cache_dir={tmp_path}/cache", "--set", "progress_bar=false",
                 "--set", "teacher={steps: 20, data_size: 2048}", "--set", "eval_every=2", "--set", "eval_samples=100",
                 "--set", "wandb=offline"])
    assert code == 0
    from ddmd_lab.report.run_record import RunRecord
    from ddmd_lab.report.stats import by_seed

    for arm in ("ca_only", "dm_only"):  # one process, four runs: W&B must not keep logging into the first
        runs = sorted((tmp_path / "runs" / "toy2d" / arm).iterdir())
        assert len(runs) == 2 and all(len(list((r / "wandb").glob("offline-run-*"))) == 1 for r in runs), arm
        records = [RunRecord(r, read_config(r / "config.yaml")) for r in runs]
        assert [set(g) for g in by_seed(records, "generator_steps").values()] == [{0, 1}]  # one group, two seeds
    assert capsys.readouterr().out.count("run folder:") == 4


def test_teacher_command_caches_and_rewrites_a_missing_report(tmp_path, capsys):
    args = ["teacher", "--set", f"cache_dir={tmp_path}/cache", "--set", "progress_bar=false",
            "--set", "teacher={steps: 20, data_size: 2048}", "--set", "eval_samples=100"]
    assert main(args) == 0 and "teacher trained and saved" in capsys.readouterr().out
    report = next((tmp_path / "cache" / "teachers" / "toy2d").glob("*/teacher.json"))
    report.unlink()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "teacher cached at" in out and report.is_file() and '"alpha_3"' in out


def test_missing_dataset_stops_before_any_run_folder(tmp_path, capsys):
    code = main(["ablation", "--scale", "fashion", "--set", f"data={{root: {tmp_path}/nowhere}}",
                 "--set", f"runs_dir={tmp_path}/runs", "--set", f"cache_dir={tmp_path}/cache"])
    err = capsys.readouterr().err
    assert code == 2 and "apt-get install dataset-fashion-mnist" in err and not (tmp_path / "runs").exists()
