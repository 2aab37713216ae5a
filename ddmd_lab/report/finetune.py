"""reports/finetune/: the fine-tunes of a scale laid out (``make finetune-report``, issue 16).

The claims and their verdicts come from report/finetune_sweep.py, the teacher's reaction to sampling
guidance from the command (report/teacher_guidance.py: measured once on the fine-tunes' own noise and
labels, kept beside the page); this module lays out the tables, the figures (saturation against
sampling guidance, curves over fine-tune steps, forgetting against learning, before / after grids) and
the page, staged and published as make report's.
"""
from __future__ import annotations

import secrets
import shutil
import time
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from ddmd_lab.report.finetune_sweep import ARM_NAMES, SAMPLE_GUIDANCE, Sweep, Verdict, claims, setting_name
from ddmd_lab.report.plots import save_figure
from ddmd_lab.report.stats import mean_interval
from ddmd_lab.report.tables import Table, render_tables
from ddmd_lab.report.teacher_guidance import TEACHER_GUIDANCE_FILE, TeacherGuidance, keep_teacher_guidance
from ddmd_lab.util.io import atomic_write_text, publish_dir

# -- tables, figures, the page -----------------------------------------------------------------------------

def _est(values) -> str:
    e = mean_interval(values)
    return str(e) if e.n else "-"


def settings_table(sweep: Sweep) -> Table:
    cols = ["student", "setting", "seeds", "new adherence", "new FD", "old FD before", "old FD after", "old adherence after",
            "saturated after (g 0)", "saturated after (g 1.5)", "new saturated (g 0)"]
    t = Table("Every fine-tune setting over its seeds (after = end of fine-tuning; guidance 0 unless named; "
              "old = the student's own classes, new = the concept)", cols)
    for arm in sweep.arms:
        for s in sweep.settings:
            fts = list(sweep.by.get((arm, s), {}).values())
            if not fts:
                continue
            g = lambda phase, m, guidance=0.0: _est(ft.grid(phase, m, guidance) for ft in fts)
            t.rows.append([ARM_NAMES.get(arm, arm), setting_name(s) + (" (center)" if s == sweep.center else ""),
                           ",".join(str(f.seed) for f in sorted(fts, key=lambda f: f.seed)),
                           g("after", "new_adherence"), g("after", "new_fd"), g("before", "domain_fd"),
                           g("after", "domain_fd"), g("after", "class_adherence"), g("after", "saturated"),
                           g("after", "saturated", SAMPLE_GUIDANCE), g("after", "new_saturated")])
    t.notes.append("mean ± 95% interval (n = seeds). FD: the scale classifier's Frechet distance (old classes vs "
                   "real fashion test images; new: the mnist classifier's, vs held-out 7s); adherence: share the "
                   "classifier assigns to the asked class.")
    return t


def _sample_guidances(sweep: Sweep) -> list[float]:
    """The sampling guidances of the fine-tunes' grids (every fine-tune of a sweep samples the same ones)."""
    return sorted({float(r["sample_guidance"]) for ft in next(iter(sweep.by.values())).values() for r in ft.grids})


def guidance_table(sweep: Sweep, teacher: dict | None) -> Table:
    gs = _sample_guidances(sweep)
    t = Table("Old classes' saturated share by sampling guidance (offset form; the student's step count)",
              ["model", *[f"g = {g:g}" for g in gs]])
    if teacher:
        t.rows.append([f"teacher ({teacher[gs[0]]['ode_steps']}-step CFG ODE)", *[f"{teacher[g]['saturated']:.4f}" for g in gs]])
    for arm in sweep.arms:
        before = [sweep.students(lambda ft, g=g: ft.grid("before", "saturated", g), [arm]) for g in gs]
        t.rows.append([f"{ARM_NAMES.get(arm, arm)} student", *[_est(v.values()) for v in before]])
        for s in [sweep.center] + [x for x in (sweep.vary(train_guidance=1.5), sweep.vary(train_guidance=3.0)) if x]:
            vals = [sweep.values(s, lambda ft, g=g: ft.grid("after", "saturated", g), [arm]) for g in gs]
            t.rows.append([f"... after {setting_name(s)}", *[_est(v.values()) for v in vals]])
    return t


def verdict_table(title: str, verdicts: list[Verdict]) -> Table:
    t = Table(title, ["comparison", "metric", "a", "b", "a - b (paired)", "Holm p", "verdict"])
    t.rows = [v.row() for v in verdicts]
    return t


def _mean_curves(sweep: Sweep, keys: tuple[str, ...]):
    """Per setting: (setting, {key: curve averaged over seeds and both students, cut to the shortest},
    the line style that names it: the center solid, the others dashed)."""
    for i, s in enumerate(sweep.settings):
        fts = [ft for a in sweep.arms for ft in sweep.by.get((a, s), {}).values()]
        n = min(len(ft.curve["step"]) for ft in fts)
        mean = {k: np.mean([ft.curve[k][:n] for ft in fts], axis=0) for k in keys}
        yield s, mean, {"color": colormaps["tab10"](i % 10), "ls": "-" if s == sweep.center else "--",
                           "label": f"{setting_name(s)} (n={len(fts)})"}


def curves_figure(sweep: Sweep, path: Path, keys=("new_adherence", "domain_fd", "saturated")):
    """Metrics over fine-tune steps, mean over seeds and both students, one line per setting."""
    fig = Figure(figsize=(4.6 * len(keys), 3.6))
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for _, mean, style in _mean_curves(sweep, ("step", *keys)):
        for ax, key in zip(axes, keys):
            ax.plot(mean["step"], mean[key], marker=".", **style)
    titles = {"new_adherence": "new concept: adherence", "domain_fd": "old classes: classifier FD",
              "saturated": "old classes: saturated share"}
    for ax, key in zip(axes, keys):
        ax.set_title(titles.get(key, key))
        ax.set_xlabel("fine-tune steps")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout()
    save_figure(fig, path)


def tradeoff_figure(sweep: Sweep, path: Path):
    """What each setting forgets on the way to learning the concept: the old classes' classifier FD against
    the new concept's adherence at every evaluation (means over seeds and both students), from step 0 on.
    A setting on a lower path forgets less for the same learning; one that stops early only looks safer."""
    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    for _, mean, style in _mean_curves(sweep, ("step", "new_adherence", "domain_fd")):
        x, y = mean["new_adherence"], mean["domain_fd"]
        ax.plot(x, y, marker=".", **style)
        ax.annotate(f"{int(mean['step'][-1])}", (x[-1], y[-1]), fontsize=7)
    ax.set_xlabel("new concept: adherence")
    ax.set_ylabel("old classes: classifier FD")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def guidance_figure(sweep: Sweep, teacher: dict | None, path: Path):
    """The old classes' saturated share against sampling guidance: teacher, students before, after."""
    gs = _sample_guidances(sweep)
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    if teacher:
        ax.plot(gs, [teacher[g]["saturated"] for g in gs], "k-o", label="teacher")
    lines = [("before", sweep.center, "student (before)")] + [
        ("after", s, f"after train_guidance {s[2]:g}") for s in
        [sweep.center] + [x for x in (sweep.vary(train_guidance=1.5), sweep.vary(train_guidance=3.0)) if x]]
    for phase, s, label in lines:
        means = [np.mean(list(sweep.values(s, lambda ft, g=g: ft.grid(phase, "saturated", g)).values())) for g in gs]
        ax.plot(gs, means, marker="o", ls="--" if phase == "before" else "-", label=label)
    ax.set_xlabel("sampling guidance g (offset form: alpha = 1 + g)")
    ax.set_ylabel("saturated share, old classes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def report_command(scale: str, center: tuple) -> str:
    moved = [f"--center {k}={v:g}" for k, v, default in (("rank", center[0], 8), ("lr", center[1], 1e-4),
                                                        ("train_guidance", center[2], 0.0)) if v != default]
    if not moved:
        return f"make finetune-report SCALE={scale}"
    return f".venv/bin/python -m ddmd_lab finetune-report --scale {scale} " + " ".join(moved)


def reproduce_lines(sweep: Sweep, scale: str) -> list[str]:
    """The commands: the students' runs, the sweep, this report; each setting as one make finetune."""
    students = sorted({(ft.arm, ft.seed, ft.spec["run"]) for seeds in sweep.by.values() for ft in seeds.values()})
    c = sweep.center
    lines = ["```", "# the students (issue 14's core runs; analysis/sweeps/fashion_seeds.sh, block core):"]
    lines += [f"#   {arm} seed {seed}: {run}" for arm, seed, run in students]
    lines += ["bash analysis/sweeps/finetune.sh   # every setting below x both students x seeds 0-2",
              report_command(scale, c),
              "# one fine-tune of the table, e.g. the center one on the first student:",
              f"make finetune RUN={students[0][2]} DATA={c[5]} SET=\"lora.rank={c[0]} lr={c[1]:g} "
              f"train_guidance={c[2]:g} steps={c[3]} seed={students[0][1]}\"", "```"]
    return lines


def write_finetune_report(sweep: Sweep, runs_dir: str | Path, scale: str, reports_dir: str | Path = "reports",
                          teacher_guidance: TeacherGuidance | None = None) -> Path:
    """``sweep``: the scale's finished fine-tunes (finished_finetunes) about their center setting; ``runs_dir``
    where they were read.  ``teacher_guidance``: the teacher's reaction to sampling guidance (image scales),
    measured by the command on the first fine-tune (teacher_guidance_key); None leaves the teacher out."""
    fts = sweep.fts
    target = Path(reports_dir) / "finetune"
    staging = Path(reports_dir) / f".finetune.staging-{secrets.token_hex(3)}"
    staging.mkdir(parents=True)
    try:
        if (target / TEACHER_GUIDANCE_FILE).is_file():  # the teacher is measured once; kept while it still applies
            shutil.copy(target / TEACHER_GUIDANCE_FILE, staging / TEACHER_GUIDANCE_FILE)
        if teacher_guidance is not None:
            keep_teacher_guidance(teacher_guidance, staging)
        teacher = teacher_guidance.metrics if teacher_guidance is not None else None
        judged = claims(sweep, teacher)
        curves_figure(sweep, staging / "curves.png")
        tradeoff_figure(sweep, staging / "tradeoff.png")
        guidance_figure(sweep, teacher, staging / "guidance.png")
        example = sweep.by[(sweep.arms[0], sweep.center)]
        ft0 = example[min(example)]
        for phase in ("before", "after"):
            shutil.copy(ft0.path / "grids" / f"{phase}_g0_n{ft0.student_steps}.png", staging / f"grid_{phase}.png")
        tables = [verdict_table(title, vs) for title, vs in judged] + [guidance_table(sweep, teacher), settings_table(sweep)]
        page = [f"# Fine-tuning distilled students with LoRA: {scale}", "",
                f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{report_command(scale, sweep.center)}` from the "
                f"{len(fts)} finished fine-tunes under `{Path(runs_dir) / scale / 'finetune'}` (a seed run twice: the newest) "
                f"(students: {', '.join(ARM_NAMES.get(a, a) for a in sweep.arms)}; center setting: {setting_name(sweep.center)}; "
                f"concept: {fts[0].spec['concept']}; LoRA targets: {', '.join(sweep.center[4])}; batch "
                f"{fts[0].spec.get('batch_size', '?')}, the student's own times). Design: one factor at a time from the "
                "center (analysis/sweeps/finetune.sh, DESIGN=center): it measures each factor with the others fixed, "
                "not their interactions. Verdicts: each claim is a family; each comparison's two-sided paired "
                "t-test p is Holm-adjusted within it, and a comparison holds (adjusted p < 0.05 on the claimed "
                "side), does not hold (on the other side), differs (two-sided claims) or is inconclusive. Claims "
                "1-4 pool both students, but the two students of one seed share its fine-tune draws: each seed's "
                "value is the mean over its students, so n is the number of seeds; claim 5 pairs the two students "
                "of one seed.", "",
                "## Reproduce", "", *reproduce_lines(sweep, scale), "", "## Verdicts", ""]
        for (title, vs), table in zip(judged, tables):
            page += [f"### {title}", ""] + ([f"- {v.claim}: {v.metric} {v.a} vs {v.b}; a - b = {v.diff}, Holm p "
                                              f"{v.p_adjusted:.3g} -- **{v.result}**"
                                              for v in vs] or ["- not measured: the sweep has no setting for it"]) + [""]
        page += ["## Figures", "", "![saturation against sampling guidance](guidance.png)", "",
                 "![curves over fine-tune steps](curves.png)", "",
                 "Forgetting against learning: each setting's path from step 0 (the number: its last step); a lower "
                 "path forgets less for the same adherence to the new concept.", "",
                 "![forgetting against learning](tradeoff.png)", "",
                 f"Grids of one fine-tune ({ARM_NAMES.get(ft0.arm, ft0.arm)} student, seed {ft0.seed}, {setting_name(ft0.setting)}, "
                 f"guidance 0, {ft0.student_steps} steps; a row per old class, the new label last), before and after:", "",
                 "![before](grid_before.png) ![after](grid_after.png)", "",
                 "## Tables", "", render_tables(tables[len(judged):], "markdown"), "",
                 "## Every comparison", "", render_tables(tables[:len(judged)], "markdown"), ""]
        atomic_write_text(staging / "README.md", "\n".join(page) + "\n")
        return publish_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
