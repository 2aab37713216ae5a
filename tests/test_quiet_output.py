"""What a run prints: its progress in its own steps (a plain line every few percent when stdout is not a
terminal), the summary, and no third-party tip, banner or deprecation warning."""
import io
import os
import re
import subprocess
import sys

from ddmd_lab.util.progress import Progress, plain_line

SMALL = ["teacher={steps: 40, data_size: 2048, hidden: 32}", "batch_size=32", "ttur=2", "eval_every=10",
         "eval_samples=64", "checkpoint_every=10", "log_every=2", "steps=20"]
NOISE = re.compile(r"Tip|litlogger|litmodels|available:|deprecated|Deprecat|FutureWarning|UserWarning|weights_only|"
                   r"wandb:|W&B syncing|Epoch \d|`Trainer.fit` stopped|LeafSpec", re.I)


def test_plain_lines_every_few_percent_with_rate_and_eta():
    out = io.StringIO()  # not a terminal
    with Progress(200, "demo", "step", every=10, stream=out) as progress:
        for k in range(1, 201):
            progress.update(k, loss=0.25)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("demo: step 20/200 (10%) | ") and lines[-1].startswith("demo: step 200/200 (100%)")
    assert all("elapsed" in ln and "ETA" in ln and ln.endswith("loss 0.25") for ln in lines)
    # resumed at 130: counted from there, and a stop before the end says where
    out = io.StringIO()
    with Progress(200, "demo", "step", initial=130, every=10, stream=out) as progress:
        for k in range(131, 151):
            progress.update(k)
        progress.update(155)
    assert [ln.split(" | ")[0] for ln in out.getvalue().splitlines()] == [
        "demo: step 140/200 (70%)", "demo: step 155/200 (78%)"]
    assert plain_line("x", "image", 0, 0, 0, 0.0, {}) == "x: image 0/0 | elapsed 0:00:00"


def test_a_fresh_run_prints_its_steps_and_summary_and_no_third_party_noise(tmp_path):
    """`make ablation` on a fresh cache with output to a file (a cluster job): teacher training and
    distillation in plain progress lines, checkpoints, the summary; W&B offline as by default."""
    cmd = [sys.executable, "-m", "ddmd_lab", "ablation", "--arm", "decoupled_hybrid"]
    for kv in SMALL + [f"runs_dir={tmp_path / 'runs'}", f"cache_dir={tmp_path / 'cache'}", "wandb=offline"]:
        cmd += ["--set", kv]
    # deprecations shown from every module, not only __main__ (ResourceWarning stays hidden as for users: W&B's
    # service leaves a temporary folder to the interpreter's exit)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "default::DeprecationWarning"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    text = done.stdout + done.stderr
    assert not NOISE.search(text), NOISE.search(text).group(0) + "\n" + text
    lines = done.stdout.splitlines()
    assert lines[0] == "run decoupled_hybrid at scale toy2d: 20 steps (10 generator steps, ttur 2), alpha 3, batch 32, seed 0"
    teacher = [ln for ln in lines if ln.startswith("toy2d teacher: step ")]
    steps = [ln for ln in lines if ln.startswith("distillation: step ")]
    assert teacher[-1].startswith("toy2d teacher: step 40/40 (100%)") and len(teacher) == 20
    assert steps[0].startswith("distillation: step 1/20 (5%)") and steps[-1].startswith("distillation: step 20/20 (100%)")
    assert "| gen 10 |" in steps[-1] and "loss_critic" in steps[-1] and "ETA" in steps[-1]
    assert "checkpoint final.ckpt (step 20)" in done.stdout and "run folder:" in done.stdout
    assert done.stderr.strip() == ""
