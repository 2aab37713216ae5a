"""Data parallelism through Lightning's own DDP strategy: two CPU processes (gloo)."""
import json
import os
import subprocess
import sys


def test_ddp_two_cpu_ranks_share_one_run_folder_and_end_with_identical_weights(tmp_path):
    # the CLI, not run_ablation: Lightning's launcher starts rank 1 by re-running the command
    sets = ["steps=6", "ttur=2", "batch_size=16", "eval_every=3", "eval_samples=64", "checkpoint_every=3",
            "strategy=ddp", "devices=2", "accelerator=cpu", "progress_bar=false", "wandb=disabled",
            "teacher={steps: 30, data_size: 4096, hidden: 32}", f"runs_dir={tmp_path / 'runs'}",
            f"cache_dir={tmp_path / 'cache'}"]
    cmd = [sys.executable, "-m", "ddmd_lab", "ablation", "--arm", "decoupled_hybrid"]
    for kv in sets:
        cmd += ["--set", kv]
    env = {k: v for k, v in os.environ.items() if k != "DDMD_RUN_DIR"}
    env.update(OMP_NUM_THREADS="1", MASTER_PORT=str(29500 + os.getpid() % 1000))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "runs" / "toy2d" / "decoupled_hybrid").iterdir())
    assert len(runs) == 1, runs  # rank 1 wrote into rank 0's folder, not a second one
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["ranks_identical"] is True
    assert summary["generator_steps"] == 3 and summary["critic_steps"] == 6  # TTUR counted per rank, not summed
    assert (runs[0] / "checkpoints" / "final.ckpt").is_file() and not list((runs[0] / "checkpoints").glob(".*tmp"))
    assert proc.stdout.count("run folder:") == 1  # one summary, from rank 0
