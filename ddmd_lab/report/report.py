"""``make report``: one markdown page per sweep, readable without W&B or Jupyter.

reports/<scale>/README.md with the paper-style tables and PNG figures, all
drawn from run folders.  Built in a staging folder and moved into place; a
previous report is kept beside it, never overwritten.
"""
from __future__ import annotations

import secrets
import shutil
import time
from pathlib import Path

from ..io import atomic_write_text, publish_dir
from . import plots
from .runs import require_runs
from .tables import paper_tables, render_tables, scale_reference

KEY_ARMS = ("ca_only", "decoupled_hybrid", "coupled", "dm_only")  # spectra shown for these, where run


def write_report(runs_dir: str | Path, scale: str, reports_dir: str | Path = "reports") -> Path:
    runs = require_runs(runs_dir, scale)
    target = Path(reports_dir) / scale
    staging = Path(reports_dir) / f".{scale}.staging-{secrets.token_hex(3)}"
    staging.mkdir(parents=True)
    try:
        tables = paper_tables(runs_dir, scale)
        atomic_write_text(staging / "tables.md", render_tables(tables, "markdown") + "\n")
        atomic_write_text(staging / "tables.tex", render_tables(tables, "latex") + "\n")
        lines = _figures(runs, staging)
        page = [f"# ddmd_lab report: {scale}", "",
                f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `make report SCALE={scale}` "
                f"from the newest finished run of each (arm, student steps) under `{Path(runs_dir) / scale}`. "
                "Every number below was measured by those runs (their folders are named in the first table); "
                "the paper's columns come from `analysis/paper_numbers.yaml`.", "",
                *_sweep_commands(runs), "", "## Tables", "", render_tables(tables, "markdown"), "", "## Figures", "", *lines]
        atomic_write_text(staging / "README.md", "\n".join(page) + "\n")
        return publish_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _sweep_commands(runs) -> list[str]:
    """The commands that reproduce the runs, read back from their configs."""
    groups: dict[tuple, list[str]] = {}
    for (arm, steps), r in runs.items():
        c = r.cfg
        groups.setdefault((c.scale, c.steps, steps, c.eval_every, c.seed), []).append(arm)
    out = ["Reproduce:", "", "```"]
    for (scale, total, steps, every, seed), arms in groups.items():
        out.append(f"make sweep SCALE={scale} STEPS={total} SEED={seed} ARMS={','.join(arms)} "
                   f'SET="student_steps={steps} eval_every={every}"')
    return out + [f"make report SCALE={next(iter(runs.values())).cfg.scale}", "```"]


def _figures(runs, folder: Path) -> list[str]:
    out = []

    def figure(name: str, title: str, draw) -> None:
        try:
            draw(folder / name)
        except ValueError as exc:  # a run without that file: say so on the page
            out.extend([f"### {title}", "", f"_not drawn: {exc}_", ""])
            return
        out.extend([f"### {title}", "", f"![{title}]({name})", ""])

    figure("variance.png", "Output statistics over training (Fig. 2 / Fig. 3 analogues)",
           lambda p: plots.variance_curves(runs, p))
    figure("quality.png", "Final FID and class adherence per arm (Table 2 analogue)",
           lambda p: plots.quality_bars(runs, p, reference=scale_reference(runs)))
    variants = sorted({arm for arm, _ in runs if arm.startswith("ca_tau_")})
    if variants:
        figure("fig4a.png", "CA-only on restricted tau ranges over training (Fig. 4a analogue)",
               lambda p: plots.variance_curves(runs, p, arms=variants))
    observed = [r for r in runs.values() if r.observer]
    if observed:
        figure("observer.png", "Observer test: high-frequency excess of generator, teacher x0 and fake x0",
               lambda p: plots.observer_bars(observed, p))
    for arm in KEY_ARMS:
        for steps in (4, 1):
            r = runs.get((arm, steps))
            if r is None:
                continue
            figure(f"term_spectra_{arm}_{steps}.png", f"CA and DM spectra per tau: {arm}, {steps}-step",
                   lambda p, r=r: plots.term_spectra_plot(r, p))
            figure(f"output_spectra_{arm}_{steps}.png", f"Output spectrum over training: {arm}, {steps}-step",
                   lambda p, r=r: plots.output_spectra_heatmap(r, p))
    out += ["### Sample grids (rows: classes; first and last evaluation)", ""]
    for (arm, steps), r in runs.items():
        grids = r.grids()
        if not grids:
            continue
        for g, when in ((grids[0], "start"), (grids[-1], "end")):
            name = f"grid_{arm}_{steps}_{when}.png"
            shutil.copyfile(g, folder / name)
            out.append(f"![{arm} {steps}-step {when}]({name})")
        out.append(f"\n{arm}, {steps}-step: start / end ({r.path.name})\n")
    return out
