"""toy2d under both teachers (issue 14): the four schedules and DM alone distilled from the trained
MLP teacher and from the mixture's exact denoiser (``teacher.kind=exact``), over seeds.

The question it answers: on the toy the U(t,1) schedules (#3, #4) are the worst DM arms; is that
the trained teacher's error at clean tau?  If it is, an arm's gap to #1 (coupled) shrinks when the
teacher is exact.  Every comparison pairs runs by seed (same seed: same evaluation noise, same
generator start, same training draws), and stats.py judges it from the interval of the paired
difference.

``python -m ddmd_lab.commands.toy_teachers [runs_dir]`` prints the tables (markdown), with the trained
teacher's error against the exact denoiser by tau (the suspected cause, measured directly by the command,
which hands the numbers in: nothing here runs a network).  The toy scale's teacher settings
(scales/toy2d.teacher_settings: the defaults spelled out) are handed in as ``teacher_settings``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Mapping

from ddmd_lab.config import RunConfig, load_config
from ddmd_lab.report.run_record import RunRecord
from ddmd_lab.report.runs import finished_runs
from ddmd_lab.report.seeded import flat
from ddmd_lab.report.stats import Estimate, mean_interval, paired_difference, verdict
from ddmd_lab.report.tables import Table

KINDS = ("trained", "exact")
ARMS = {"coupled": "#1 coupled", "decoupled_full": "#2 decoupled_full",
        "decoupled_constrained": "#3 decoupled_constrained", "decoupled_hybrid": "#4 decoupled_hybrid",
        "dm_only": "DM only"}
REFERENCE = "coupled"
# classwise energy distance to the exact CFG-guided ODE's samples: the toy's one number for "the
# guided target was reached" (lower is better); the others are shown beside it, not judged
METRIC = "dist_cfg_target"
SHOWN = ("dist_conditional", "class_precision", "out_std", "outside_support")
# what a run's config may differ in and still belong to the sweep: the seed, where and how it logs,
# and the teacher's kind (the axis compared here)
IGNORED = {"seed", "runs_dir", "cache_dir", "wandb", "progress_bar", "teacher.kind"}

Cells = dict[tuple[str, str], dict[int, float]]  # (teacher kind, arm) -> {seed: metric}
TeacherSettings = Callable[[RunConfig], dict]  # a toy config's teacher settings, defaults spelled out


def comparable(cfg, teacher_settings: TeacherSettings) -> dict:
    """A toy config as the sweep compares it: flat, the teacher's settings spelled out (``teacher: {}``
    and the defaults written out are the same teacher), without what IGNORED names."""
    d = flat({**cfg.to_dict(), "teacher": teacher_settings(cfg)})
    return {k: v for k, v in d.items() if k not in IGNORED}


def in_sweep(cfg, teacher_settings: TeacherSettings, overrides: Mapping | None = None) -> bool:
    """Whether a run is the scale's own config of its arm (with ``overrides``), but for IGNORED.  Only
    keys both configs have are compared, so a setting added to the harness after a run was made (and
    absent from its config.yaml) does not drop the run."""
    own = comparable(cfg, teacher_settings)
    default = comparable(load_config(cfg.run.scale, cfg.arm.name, dict(overrides or {})), teacher_settings)
    return all(default[k] == v for k, v in own.items() if k in default)


def cells(records: Iterable[RunRecord], teacher_settings: TeacherSettings, metric: str = METRIC,
          overrides: Mapping | None = None) -> Cells:
    """{(teacher kind, arm): {seed: metric}} of the toy runs that belong to the sweep; a seed run twice
    keeps its newest run (run folders sort by time)."""
    out: Cells = {}
    for r in sorted(records, key=lambda r: r.path.name):
        value = r.summary.get(metric)
        if r.cfg.run.scale == "toy2d" and r.arm in ARMS and value is not None and in_sweep(r.cfg, teacher_settings, overrides):
            out.setdefault((teacher_settings(r.cfg)["kind"], r.arm), {})[r.cfg.run.seed] = float(value)
    return out


def gaps(c: Cells, kind: str, arm: str) -> dict[int, float]:
    """arm minus #1 under one teacher, seed by seed."""
    a, ref = c.get((kind, arm), {}), c.get((kind, REFERENCE), {})
    return {s: a[s] - ref[s] for s in sorted(set(a) & set(ref))}


def _interval(e: Estimate) -> str:
    return str(e) if e.n else "–"


def arms_table(by_metric: Mapping[str, Cells]) -> Table:
    """Every (teacher, arm): METRIC's mean ± 95% interval, its paired difference to #1 under the same
    teacher with the verdict on 'better than #1', and the other metrics' means."""
    c = by_metric[METRIC]
    t = Table(f"toy2d, both teachers: {METRIC} (lower is better) and the paired difference to #1",
              ["teacher", "arm", "seeds", METRIC, "minus #1 (paired)", "better than #1?", *SHOWN])
    for kind in KINDS:
        for arm, name in ARMS.items():
            if (kind, arm) not in c:
                continue
            values = c[(kind, arm)]
            diff = paired_difference(values, c.get((kind, REFERENCE), {})) if arm != REFERENCE else None
            t.rows.append([kind, name, ",".join(map(str, sorted(values))), _interval(mean_interval(values.values())),
                           _interval(diff) if diff else "–", verdict(diff) if diff else "–",
                           *(mean_interval(by_metric[m].get((kind, arm), {}).values()).mean for m in SHOWN)])
    t.notes.append("mean ± half-width of the 95% Student-t interval over seeds (n seeds); 'minus #1': the arm's "
                   "value minus coupled's on the same seed, its mean and interval; verdict 'holds' when the whole "
                   f"interval is below 0. The last columns are means over the same seeds ({', '.join(SHOWN)}).")
    return t


def teacher_effect_table(c: Cells) -> Table:
    """Per arm: what the exact teacher changes (exact minus trained, same seeds), and whether the arm's
    gap to #1 shrinks with it (the teacher-error explanation's prediction for #3 and #4)."""
    t = Table(f"toy2d: exact teacher minus trained teacher, {METRIC}, paired by seed",
              ["arm", "exact minus trained", "exact better?", "gap to #1, trained", "gap to #1, exact",
               "gap change (exact minus trained)", "gap smaller with the exact teacher?"])
    for arm, name in ARMS.items():
        effect = paired_difference(c.get(("exact", arm), {}), c.get(("trained", arm), {}))
        if arm == REFERENCE:
            t.rows.append([name, _interval(effect), verdict(effect), "–", "–", "–", "–"])
            continue
        trained, exact = gaps(c, "trained", arm), gaps(c, "exact", arm)
        change = paired_difference(exact, trained)
        t.rows.append([name, _interval(effect), verdict(effect), _interval(mean_interval(trained.values())),
                       _interval(mean_interval(exact.values())), _interval(change), verdict(change)])
    t.notes.append("gap to #1: arm minus coupled under one teacher, per seed; gap change: that gap under the exact "
                   "teacher minus under the trained one, per seed ('holds': the arm gains on #1 when the teacher "
                   "error is removed). Lower is better throughout.")
    return t


def teacher_error_table(rows: list[dict]) -> Table:
    t = Table("toy2d: the trained teacher's x0 error against the exact denoiser, by tau (t = 1 clean)",
              ["tau", "cond RMS error", "uncond RMS error", "CA direction RMS error", "exact CA RMS", "CA relative error"])
    t.rows = [[r["tau"], r["cond_rms_error"], r["uncond_rms_error"], r["ca_rms_error"], r["ca_exact_rms"],
               r["ca_relative_error"]] for r in rows]
    t.notes.append("on 4000 exact samples of p(x0 | c) re-noised at tau; CA direction = x0(cond) - x0(null), the "
                   "vector the CA term scales by alpha - 1; relative error = its RMS error / the exact direction's RMS.")
    return t


def tables(runs_dir: str | Path, teacher_settings: TeacherSettings, errors: list[dict]) -> str:
    """The three tables (markdown); ``errors``: the trained teacher's error by tau (commands/toy_teachers.py)."""
    records = finished_runs(runs_dir, "toy2d")
    by_metric = {m: cells(records, teacher_settings, m) for m in (METRIC, *SHOWN)}
    return "\n\n".join(x.to_markdown() for x in (arms_table(by_metric), teacher_effect_table(by_metric[METRIC]),
                                                  teacher_error_table(errors)))
