"""Launch hygiene under external launchers (srun, torchrun): which GPU a task's text encoders take, one run
folder per job, and the process group's timeout from the config.  Environment only: no process starts."""
import pytest

from ddmd_lab.config import RunConfig
from ddmd_lab.parallel.ranks import external_job, local_rank
from ddmd_lab.training.run import job_run_dir

LAUNCH_VARIABLES = ("LOCAL_RANK", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_JOB_ID", "SLURM_STEP_ID",
                    "TORCHELASTIC_RUN_ID", "WORLD_SIZE", "RANK")


@pytest.fixture
def env(monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_local_rank_comes_from_local_rank_or_slurms_localid(env):
    """Fails on the code before: under srun (no LOCAL_RANK) every task put its text encoders on cuda:0."""
    assert local_rank() == 0
    env.setenv("SLURM_LOCALID", "3")
    assert local_rank() == 3
    env.setenv("LOCAL_RANK", "5")  # torchrun / Lightning's launcher: theirs first
    assert local_rank() == 5


def test_every_rank_of_an_external_job_names_the_same_run_folder(env, tmp_path):
    """Fails on the code before: without DDMD_RUN_DIR each srun / torchrun rank made a run folder of its own."""
    cfg = RunConfig.of(runs_dir=str(tmp_path), scale="toy2d", seed=3)
    assert external_job() is None and job_run_dir(cfg) is None  # one process, or Lightning's launcher
    env.setenv("SLURM_NTASKS", "8")
    env.setenv("SLURM_JOB_ID", "4242")
    folders = set()
    for rank in range(8):
        env.setenv("SLURM_PROCID", str(rank))
        folder, got = job_run_dir(cfg)
        assert got == rank
        folders.add(folder)
    assert folders == {tmp_path / "toy2d" / cfg.arm.name / "slurm4242.0-s3"}
    for name in ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_JOB_ID"):
        env.delenv(name)
    env.setenv("TORCHELASTIC_RUN_ID", "abc")
    env.setenv("WORLD_SIZE", "2")
    env.setenv("RANK", "1")
    assert job_run_dir(cfg) == (tmp_path / "toy2d" / cfg.arm.name / "torchrun-abc-s3", 1)


def test_the_process_group_timeout_is_a_config_key_with_a_default():
    from ddmd_lab.errors import UserError

    assert RunConfig().parallel.pg_timeout == 1800.0
    assert RunConfig.of(pg_timeout=7200).parallel.pg_timeout == 7200.0
    with pytest.raises(UserError, match="pg_timeout"):
        RunConfig.of(pg_timeout=0)
