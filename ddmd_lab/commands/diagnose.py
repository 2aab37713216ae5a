"""``make diagnose RUN=<run>``: diagnostics.py's per-tau-bin statistics of a finished run's final generator
and fake model, on many fresh samples, into ``<run>/diagnostics.json`` (the only file it writes).

Each batch is what a generator step sees: conditions from the scale's loader, the student's input by
backward simulation, the arm's own draws and one common draw (diagnostics.measure).  No training, no
gradients; the networks in eval mode, in the run's precision on a GPU.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch

from ddmd_lab.data.steps import condition_of
from ddmd_lab.errors import UserError
from ddmd_lab.method.diagnostics import measure
from ddmd_lab.method.tau_bins import EDGES, add_bins, bin_samples, overall
from ddmd_lab.scales.base import get_scale
from ddmd_lab.training.restore import default_device, load_run, run_checkpoint, run_config
from ddmd_lab.util.devices import to_device
from ddmd_lab.util.io import atomic_write_text, safe_torch_load

JSON_NAME = "diagnostics.json"


@torch.no_grad()
def diagnose_run(run_dir: str | Path, samples: int = 2048, seed: int = 0, device: str | None = None) -> tuple[Path, bool]:
    """Write ``<run>/diagnostics.json``; returns (its path, whether it replaced an earlier one)."""
    run_dir = Path(run_dir)
    run_config(run_dir)  # a folder that is not a run stops here
    ckpt = run_checkpoint(run_dir, f"{run_dir} has no checkpoint (checkpoints/final.ckpt or last.ckpt), so there is no "
                          f"generator to diagnose; finish the run first (make ablation RESUME={run_dir}, or a new run), "
                          "then make diagnose.")
    if samples < 1:
        raise UserError(f"SAMPLES={samples}: diagnose at least one sample (default 2048).")
    counters = safe_torch_load(ckpt, "diagnose a run ddmd_lab wrote", "checkpoint", mmap=True).get("ddmd_counters", {})
    module = load_run(run_dir, ckpt.name)
    cfg = module.cfg
    device = torch.device(default_device(device))
    module.to(device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.parallel.precision.startswith("bf16")
                else contextlib.nullcontext())
    bins, done = None, 0
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []), autocast:
        torch.manual_seed(seed)
        gen = torch.Generator(device=device).manual_seed(seed + 1)  # the common draws
        for batch in get_scale(cfg.run.scale).condition_loader(cfg, 0):
            cond = to_device(condition_of(batch), device)
            x_t, t = module._student_input(cond, len(cond))
            x = module.generator.x0(x_t, t, cond)
            found = measure(module.arm, x, cond, t, module.teacher, module.fake, module.settings, generator=gen)
            bins = add_bins(bins, bin_samples(found))
            done += len(x)
            if done >= samples:
                break
    record = {
        "run": str(run_dir), "checkpoint": str(ckpt.relative_to(run_dir)), "scale": cfg.run.scale, "arm": cfg.arm.name,
        "normaliser": cfg.arm.normaliser, "student_steps": cfg.student.student_steps, "alpha": cfg.objective.alpha, "seed": cfg.run.seed,
        "step": counters.get("step_count"), "generator_steps": counters.get("generator_step_count"),
        "samples": done, "diagnose_seed": seed, "edges": list(EDGES),
        "overall": {q: (v if math.isfinite(v) else None) for q, v in overall(bins).items()},
        "bins": {by: b.to_dict() for by, b in bins.items()},
    }
    path = run_dir / JSON_NAME
    replaced = path.exists()
    atomic_write_text(path, json.dumps(record, indent=1))
    return path, replaced


def summary_lines(path: Path) -> list[str]:
    """A few lines for the terminal: the batch means."""
    record = json.loads(Path(path).read_text())
    out = [f"{record['arm']} ({record['normaliser']} normaliser), {record['samples']} samples, "
           f"{record['checkpoint']} after {record['generator_steps']} generator steps:"]
    out += [f"  {q:>20}: {v:.4g}" for q, v in record["overall"].items() if v is not None]
    return out
