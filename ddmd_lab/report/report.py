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

import numpy as np

from ddmd_lab.report import plots
from ddmd_lab.report.claims import claims_section, noise_floor_lines
from ddmd_lab.report.diagnostics_plots import diagnostics_section
from ddmd_lab.report.runs import finished_runs, require_runs
from ddmd_lab.report.scale_facts import ScaleFacts
from ddmd_lab.report.seeded import claims, seed_groups, short_value
from ddmd_lab.report.tables import paper_tables, render_tables
from ddmd_lab.util.io import atomic_write_text, publish_dir

KEY_ARMS = ("ca_only", "decoupled_hybrid", "coupled", "dm_only")  # spectra shown for these, where run
# the metrics whose noise floors a report prints (the claims' metrics and their neighbours)
FLOOR_METRICS = {"toy2d": ("dist_cfg_target", "dist_conditional", "class_precision"),
                 "fashion": ("domain_fd", "class_adherence", "spectral_centroid", "saturated")}


def write_report(runs_dir: str | Path, scale: str, facts: ScaleFacts, reports_dir: str | Path = "reports") -> Path:
    """``facts``: what the scale says that no run folder holds (commands/report.scale_facts)."""
    runs = require_runs(runs_dir, scale)
    target = Path(reports_dir) / scale
    staging = Path(reports_dir) / f".{scale}.staging-{secrets.token_hex(3)}"
    staging.mkdir(parents=True)
    try:
        tables = paper_tables(runs_dir, scale, facts)
        atomic_write_text(staging / "tables.md", render_tables(tables, "markdown") + "\n")
        atomic_write_text(staging / "tables.tex", render_tables(tables, "latex") + "\n")
        teacher = _teacher_ca_spectra(facts.teacher_ca_spectra)  # read once: a figure and a finding use it
        lines = _figures(runs, staging, teacher, facts.reference) + diagnostics_section(runs, staging)
        groups = seed_groups(finished_runs(runs_dir, scale))
        floors = noise_floor_lines(groups, facts.noise_floors, FLOOR_METRICS.get(scale, FLOOR_METRICS["fashion"]))
        seeded = claims_section(groups, scale) + floors + _seeded_section(groups, staging)
        page = [f"# ddmd_lab report: {scale}", "",
                f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `make report SCALE={scale}` "
                f"from the finished runs under `{Path(runs_dir) / scale}`: runs that differ only in the seed are one "
                "group (mean ± 95% interval, paired verdicts); single-run tables and figures show the newest run "
                "of the group that stands for each (arm, student steps). "
                "Every number below was measured by those runs (their folders are named in the first table); "
                "the paper's columns come from `analysis/paper_numbers.yaml`.", "",
                *_sweep_commands(groups), "", *seeded, "## The paper's findings, checked on these runs", "",
                *[f"- {line}" for line in findings(runs, teacher)], "", "## Tables", "", render_tables(tables, "markdown"), "", "## Figures", "", *lines]
        atomic_write_text(staging / "README.md", "\n".join(page) + "\n")
        return publish_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _seeded_section(groups, folder: Path) -> list[str]:
    """Verdicts over seeds (paired), the seeded figure and the convergence curve, where run."""
    out = []
    comps = claims(groups)
    if comps:
        out += ["## Exploratory comparisons (paired differences, each at 95%, not corrected for multiplicity)", "",
                *[f"- {c.line()}" for c in comps], ""]
    for name, title, draw in (("seeds.png", "Every configuration over its seeds", plots.seeded_bars),
                              ("convergence.png", "Convergence: metrics over generator steps of the longest runs",
                               plots.convergence)):
        try:
            draw(groups, folder / name)
        except ValueError:
            continue
        out += [f"### {title}", "", f"![{title}]({name})", ""]
        if name == "convergence.png":
            out += [f"- {line}" for line in convergence_lines(groups)] + [""]
    return out


def convergence_lines(groups, metric: str = "domain_fd") -> list[str]:
    """For each longest run: the metric at the start, at the sweeps' length, at its best and at the end."""
    lengths = sorted({r.cfg.schedule.steps for g in groups for r in g.runs.values()})
    if len(lengths) < 2:
        return []
    # the sweep's length: the longest of the seeded groups below the longest runs (which may be seeded too)
    sweep = max((r.cfg.schedule.steps for g in groups if len(g.runs) > 1 for r in g.runs.values() if r.cfg.schedule.steps < lengths[-1]),
                default=lengths[0])
    out = []
    for g in groups:
        for r in g.runs.values():
            c = r.curves
            if r.cfg.schedule.steps != lengths[-1] or metric not in c:
                continue
            steps, gen, vals = c["step"], c["generator_steps"], c[metric]
            at, best = int(np.argmin(np.abs(steps - sweep))), int(np.nanargmin(vals))
            fid = r.summary.get("fid")
            out.append(f"{g.name} (seed {r.cfg.run.seed}): {metric} {vals[0]:.4g} at generator step 0, {vals[at]:.4g} at "
                       f"{int(gen[at])} (the sweeps' length), lowest {vals[best]:.4g} at {int(gen[best])}, {vals[-1]:.4g} "
                       f"at {int(gen[-1])} (the end)" + (f"; Inception FID at the end {fid:.4g} "
                                                          f"({r.summary.get('fid_samples')} samples)" if fid is not None else "") + ".")
    return out


def _sweep_commands(groups) -> list[str]:
    """The commands that reproduce every group of runs, read back from their configs (one
    `make sweep` per set of arms that share steps, seeds and settings)."""
    lines: dict[tuple, list[str]] = {}
    for g in sorted(groups, key=lambda g: (-g.student_steps, g.arm, g.name)):
        r = g.newest()
        settings = " ".join(f"{k}={short_value(v)}" for k, v in sorted(g.changed.items()) if k != "steps")
        key = (r.cfg.run.scale, r.cfg.schedule.steps, ",".join(map(str, g.seeds)), f"student_steps={g.student_steps} {settings}".strip())
        lines.setdefault(key, []).append(g.arm)
    out = ["Reproduce:", "", "```"]
    for (scale, steps, seeds, settings), arms in lines.items():
        out.append(f'make sweep SCALE={scale} STEPS={steps} SEEDS={seeds} ARMS={",".join(dict.fromkeys(arms))} SET="{settings}"')
    return out + [f"make report SCALE={groups[0].newest().cfg.run.scale}" if groups else "make report", "```"]


def _figures(runs, folder: Path, teacher: dict | None, reference: dict[str, dict]) -> list[str]:
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
           lambda p: plots.quality_bars(runs, p, reference=reference))
    if teacher is not None:
        figure("term_spectra_teacher.png", "CA spectra per tau of the teacher on real test images",
               lambda p: plots.spectra_by_tau(teacher, "teacher on real images: where CA acts", p))
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
    out += ["### Sample grids (rows: classes; fixed noise)", ""]
    started: set[int] = set()
    for (arm, steps), r in runs.items():
        grids = r.grids()
        if not grids:
            continue
        if steps not in started:  # every arm starts from the teacher's weights on the same noise
            started.add(steps)
            shutil.copyfile(grids[0], folder / f"grid_start_{steps}.png")
            out.append(f"![{steps}-step student at step 0](grid_start_{steps}.png)\n\nevery {steps}-step student at step 0 "
                       "(the teacher's weights)\n")
        shutil.copyfile(grids[-1], folder / f"grid_{arm}_{steps}.png")
        out.append(f"![{arm} {steps}-step](grid_{arm}_{steps}.png)\n\n{arm}, {steps}-step, end of training ({r.path.name})\n")
    return out


def _verdict(ok: bool) -> str:
    return "**holds**" if ok else "**does not hold**"


def findings(runs, teacher: dict | None = None) -> list[str]:
    """The paper's claims as checks computed from the runs (nothing typed in by hand);
    ``teacher``: the teacher's CA spectra on real data, where measured."""
    out = []
    for steps in (4, 1):
        ca = runs.get(("ca_only", steps))
        if ca is not None and "out_std" in ca.curves:
            std, hf = ca.curves["out_std"], ca.curves.get("hf_excess")
            rises = int(np.sum(np.diff(std) > 0))
            line = (f"CA alone, {steps}-step: output std {std[0]:.3g} -> {std[-1]:.3g}, rising at {rises} of {len(std) - 1} "
                    f"evaluations")
            if hf is not None:
                line += f"; high-frequency excess {hf[0]:.3g} -> {hf[-1]:.3g}"
            out.append(line + f" -- variance rises monotonically: {_verdict(rises == len(std) - 1)}.")
        for arm in ("coupled", "decoupled_hybrid", "dm_only"):
            r = runs.get((arm, steps))
            if r is not None and ca is not None and "out_std" in r.curves:
                out.append(f"{arm}, {steps}-step: output std stays within [{np.nanmin(r.curves['out_std']):.3g}, "
                           f"{np.nanmax(r.curves['out_std']):.3g}] (CA alone ends at {ca.curves['out_std'][-1]:.3g}) -- "
                           f"DM stabilises: {_verdict(np.nanmax(r.curves['out_std']) < ca.curves['out_std'][-1])}.")
    fid = {k: r.summary.get("fid") for k, r in runs.items() if r.summary.get("fid") is not None}
    for steps in (4, 1):
        h, c, d = fid.get(("decoupled_hybrid", steps)), fid.get(("coupled", steps)), fid.get(("dm_only", steps))
        if h is not None and c is not None:
            out.append(f"{steps}-step FID: decoupled_hybrid {h:.4g} vs coupled {c:.4g} -- hybrid at least as good: {_verdict(h <= c)}.")
        for other, o in (("decoupled_hybrid", h), ("coupled", c)):
            if d is not None and o is not None:
                out.append(f"{steps}-step FID: dm_only {d:.4g} vs {other} {o:.4g} -- DM alone worse: {_verdict(d > o)}.")
    d4, d1 = fid.get(("dm_only", 4)), fid.get(("dm_only", 1))
    if d4 is not None and d1 is not None:
        out.append(f"DM alone: FID {d4:.4g} at 4 steps vs {d1:.4g} at 1 step -- poor at 1 step: {_verdict(d1 > d4)}.")
    for (arm, steps), r in runs.items():
        spec = r.term_spectra
        if arm in ("ca_only", "decoupled_hybrid") and spec is not None:
            cen = spec["ca_centroid"]
            mids = spec["bins"].mean(axis=1)
            out.append(f"{arm}, {steps}-step: CA-vector spectral centroid per tau " +
                       ", ".join(f"{m:.2f}: {c:.2f}" for m, c in zip(mids, cen)) +
                       f" -- higher at clean tau than at noisy tau: {_verdict(cen[-1] > cen[0])}"
                       f" (monotone: {'yes' if np.all(np.diff(cen) > 0) else 'no'}).")
        obs = r.observer
        if arm == "ca_only" and obs:
            out.append(f"Observer, {steps}-step CA-only: high-frequency excess of generator samples {obs['generator_hf_excess']:.3g}, "
                       f"of the observer fake's x0 {obs['fake_x0_hf_excess']:.3g}, of the frozen teacher's x0 "
                       f"{obs['teacher_x0_hf_excess']:.3g} -- the observer carries the excess, the teacher does not: "
                       f"{_verdict(obs['fake_x0_hf_excess'] > obs['teacher_x0_hf_excess'] and obs['fake_x0_hf_excess'] > 0 >= obs['teacher_x0_hf_excess'])}.")
    out += colour_findings(runs)
    if teacher is not None:
        cen, mids = teacher["ca_centroid"], teacher["bins"].mean(axis=1)
        out.append("Teacher on real test images (`make spectra SCALE=...`): CA-vector spectral centroid per tau " +
                   ", ".join(f"{m:.2f}: {c:.2f}" for m, c in zip(mids, cen)) +
                   f" -- rises with tau (noisy tau shapes low frequencies, clean tau high ones): "
                   f"{_verdict(bool(np.all(np.diff(cen) > 0)))}.")
    return out


def colour_findings(runs) -> list[str]:
    """Oversaturation and colour cast against the teacher's samples of the same prompts and noise (text-to-image
    training evaluation; make eval-coco's where a run has it)."""
    out = []
    for (arm, steps), r in runs.items():
        for where, m in (("training evaluation", r.summary), ("COCO-10k", r.coco)):
            if m.get("hsv_saturation_vs_teacher") is not None:
                out.append(f"{arm}, {steps}-step ({where}): saturation x{m['hsv_saturation_vs_teacher']:.3g} of the "
                           f"teacher's, b* {m['lab_b_vs_teacher']:+.3g} and a* {m['lab_a_vs_teacher']:+.3g} against it, "
                           f"contrast x{m['rms_contrast_vs_teacher']:.3g} -- more saturated than the teacher: "
                           f"{'yes' if m['hsv_saturation_vs_teacher'] > 1 else 'no'}.")
    c, h = runs.get(("decoupled_constrained", 4)), runs.get(("decoupled_hybrid", 4))
    if c is not None and h is not None and "hsv_saturation_vs_teacher" in c.summary and "hsv_saturation_vs_teacher" in h.summary:
        sc, sh = c.summary["hsv_saturation_vs_teacher"], h.summary["hsv_saturation_vs_teacher"]
        out.append(f"Schedule #3 (decoupled_constrained) saturation x{sc:.3g} of the teacher's vs #4 (decoupled_hybrid) "
                   f"x{sh:.3g} -- #3 more oversaturated, as the paper finds: {_verdict(sc > sh)}.")
    return out


def _teacher_ca_spectra(path: Path | None) -> dict | None:
    """The teacher's CA spectra on real data, where `make spectra SCALE=<scale>` wrote them (``path``: the
    scale's file for them, ScaleFacts.teacher_ca_spectra)."""
    if path is None or not path.is_file():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
