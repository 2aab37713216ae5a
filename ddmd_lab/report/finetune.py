"""reports/finetune/: the advice for LoRAs on distilled students, judged over seeds (issue 16).

Reads every finished fine-tune (``<runs_dir>/<scale>/finetune/*/result.json``) of a scale and
groups them by what was set (student arm, rank, learning rate, train_guidance, steps, targets,
concept); the fine-tune's seed is its student's seed in the sweep (analysis/sweeps/finetune.sh),
so a comparison pairs a student with its own fine-tunes.  Claims 1-4 are about "a distilled
student": they pool both arms, pairing on (arm, seed); claim 5 compares the arms, pairing on the
seed.  Every number is read from the fine-tunes' grids.json (before / after, sampling guidance
x step count) and metrics.csv; the teacher's reaction to sampling guidance is measured once on
the same noise and labels (``teacher_reference``).

The five claims (issue 16), each judged holds / does not hold / inconclusive from the 95%
interval of the paired difference (report/stats.py):
  1. sampling guidance oversaturates a distilled student more than it does the teacher:
     the rise of the old classes' saturated share from guidance 0 to g, student minus teacher;
  2. training with guidance compounds it: after fine-tunes at train_guidance g vs 0, the
     saturated share sampled at guidance 1.5 (new concept and old classes);
  3. low rank / low learning rate preserve the old classes and the output statistics:
     forgetting (old classes' classifier FD after - before) and |change of the saturated share|,
     rank 4 vs 32 and lr 1e-5 vs 1e-3, with what each learned of the new concept beside it;
  4. the student's step count matters more after fine-tuning: |metric at N + 4 steps - at N|
     after vs before;
  5. coupled and decoupled_hybrid students differ under the same fine-tune (two-sided).
"""
from __future__ import annotations

import csv
import json
import math
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from matplotlib.figure import Figure

from ..errors import UserError
from ..io import atomic_write_text, publish_dir
from .stats import Estimate, mean_interval, paired_difference, verdict
from .tables import Table, render_tables

SAMPLE_GUIDANCE = 1.5  # claim 2 samples every side at this guidance, so only the training guidance differs
ARM_NAMES = {"coupled": "#1 coupled", "decoupled_hybrid": "#4 decoupled_hybrid"}


@dataclass
class Finetune:
    path: Path
    spec: dict            # finetune.yaml
    grids: list[dict]     # grids.json: before / after x sampling guidance x steps
    curve: dict           # metrics.csv columns (numpy arrays)

    @property
    def arm(self) -> str:
        return self.spec["student"]["arm"]

    @property
    def seed(self) -> int:
        return int(self.spec["finetune"]["seed"])

    @property
    def student_steps(self) -> int:
        return int(self.spec["student"]["student_steps"])

    @property
    def setting(self) -> tuple:
        """What was set, without the seed and the arm: (rank, lr, train_guidance, steps, targets, data)."""
        f = self.spec["finetune"]
        return (int(f["lora"]["rank"]), float(f["lr"]), float(f["train_guidance"]), int(f["steps"]),
                tuple(self.spec.get("lora_targets", f["lora"].get("targets", ()))), self.spec["data"])

    def grid(self, phase: str, metric: str, guidance: float = 0.0, steps: int | None = None) -> float:
        steps = steps or self.student_steps
        for row in self.grids:
            if row["phase"] == phase and row["sample_steps"] == steps and math.isclose(row["sample_guidance"], guidance):
                return float(row[metric])
        raise KeyError(f"{self.path}: no {phase} grid at guidance {guidance:g}, {steps} steps")


def load_finetunes(runs_dir: str | Path, scale: str) -> list[Finetune]:
    """The finished fine-tunes of a scale (result.json written last), oldest first."""
    out = []
    for result in sorted(Path(runs_dir, scale, "finetune").glob("*/result.json")):
        folder = result.parent
        with open(folder / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        curve = {k: np.array([float(r[k]) for r in rows]) for k in rows[0]} if rows else {}
        out.append(Finetune(folder, yaml.safe_load((folder / "finetune.yaml").read_text()),
                            json.loads((folder / "grids.json").read_text()), curve))
    return out


def _name(setting: tuple) -> str:
    rank, lr, g, steps, _, _ = setting
    return f"rank {rank}, lr {lr:g}, train_guidance {g:g}, {steps} steps"


class Sweep:
    """The fine-tunes by (arm, setting), newest per seed; values keyed (arm, seed) for pooled pairing."""

    def __init__(self, fts: list[Finetune], center: dict):
        self.by = {}
        for ft in fts:
            self.by.setdefault((ft.arm, ft.setting), {})[ft.seed] = ft  # oldest first: the newest stays
        self.arms = sorted({a for a, _ in self.by}, key=lambda a: list(ARM_NAMES).index(a) if a in ARM_NAMES else 99)
        settings = {s for _, s in self.by}
        matches = [s for s in settings if (s[0], s[1], s[2]) == (center["rank"], center["lr"], center["train_guidance"])]
        if not matches:
            raise UserError(f"no fine-tune at the center setting {center}; run analysis/sweeps/finetune.sh or name the "
                            f"center of what ran (settings found: {sorted(map(_name, settings))}).")
        self.center = max(matches, key=lambda s: sum(len(self.by.get((a, s), {})) for a in self.arms))
        self.settings = sorted(settings)

    def vary(self, **change) -> tuple | None:
        """The setting that differs from the center in the given factors only (rank / lr / train_guidance)."""
        index = {"rank": 0, "lr": 1, "train_guidance": 2}
        want = list(self.center)
        for k, v in change.items():
            want[index[k]] = v
        return tuple(want) if tuple(want) in {s for _, s in self.by} else None

    def values(self, setting, fn, arms=None) -> dict:
        """{(arm, seed): fn(fine-tune)} of a setting, over ``arms`` (default: every arm)."""
        return {(a, s): fn(ft) for a in (arms or self.arms) for s, ft in self.by.get((a, setting), {}).items()}

    def students(self, fn, arms=None) -> dict:
        """{(arm, seed): fn(a fine-tune)} of each student's *before* grids (the same for every fine-tune of it)."""
        out = {}
        for (a, _), seeds in self.by.items():
            if a in (arms or self.arms):
                for s, ft in seeds.items():
                    out.setdefault((a, s), fn(ft))
        return out


@dataclass
class Verdict:
    claim: str
    metric: str
    a: Estimate
    b: Estimate
    diff: Estimate
    result: str

    def row(self) -> list:
        return [self.claim, self.metric, str(self.a), str(self.b), str(self.diff), self.result]


def judge(claim: str, metric: str, a: dict, b: dict, higher_is_claimed: bool | None) -> Verdict | None:
    """'a exceeds b' (higher_is_claimed True), 'a is below b' (False) or 'a differs from b' (None),
    from the interval of the paired difference a - b over common keys."""
    common = sorted(set(a) & set(b))
    if not common:
        return None
    diff = paired_difference(a, b)
    if higher_is_claimed is None:
        result = "inconclusive" if verdict(diff) == "inconclusive" else "differs"
    else:
        result = verdict(diff, lower_is_better=not higher_is_claimed)
    return Verdict(claim, metric, mean_interval(a[k] for k in common), mean_interval(b[k] for k in common), diff, result)


# -- what is measured of one fine-tune ------------------------------------------------------------------

def rise(phase: str, metric: str, g: float):
    """The change of an old-class metric from sampling guidance 0 to g (the student's step count)."""
    return lambda ft: ft.grid(phase, metric, g) - ft.grid(phase, metric, 0.0)


def forgetting(ft: Finetune) -> float:
    """Old classes' classifier FD after - before (guidance 0, the student's step count)."""
    return ft.grid("after", "domain_fd") - ft.grid("before", "domain_fd")


def saturation_change(ft: Finetune) -> float:
    return abs(ft.grid("after", "saturated") - ft.grid("before", "saturated"))


def step_gap(phase: str, metric: str, offset: int = 4, relative: bool = False):
    """|metric at the student's steps + offset - at its steps| (guidance 0), or that over the metric at its
    steps (``relative``: a fine-tune that raises the FD everywhere raises its absolute gaps with it)."""
    def gap(ft):
        at = ft.grid(phase, metric)
        scale = (abs(at) or math.nan) if relative else 1.0  # nan: left out of the interval
        return abs(ft.grid(phase, metric, 0.0, ft.student_steps + offset) - at) / scale
    return gap


def claims(sweep: Sweep, teacher: dict | None) -> list[tuple[str, list[Verdict]]]:
    """The five claims' verdicts, each a list of measured comparisons (None ones left out)."""
    c = sweep.center
    out = []
    # 1. sampling guidance vs the teacher
    one = []
    for metric in ("saturated", "out_of_range") if teacher else ():
        for g in sorted(k for k in teacher if k > 0):
            t_rise = teacher[g][metric] - teacher[0.0][metric]
            student = sweep.students(rise("before", metric, g))
            one.append(judge(f"guidance {g:g} raises the distilled students' {metric} share more than the teacher's "
                             f"(teacher: {t_rise:+.4f})", f"{metric} rise", student, {k: t_rise for k in student}, True))
            after = sweep.values(c, rise("after", metric, g))
            one.append(judge(f"... and after the center fine-tune ({_name(c)})", f"{metric} rise",
                             after, {k: t_rise for k in after}, True))
    out.append(("1. Guidance > 0 at sampling oversaturates a distilled student more than it does the teacher", one))
    # 2. training with guidance
    two = []
    for g in (1.5, 3.0):
        s = sweep.vary(train_guidance=g)
        if s is None:
            continue
        for metric, what in (("new_saturated", "the new concept"), ("saturated", "the old classes")):
            fn = lambda ft, m=metric: ft.grid("after", m, SAMPLE_GUIDANCE)
            two.append(judge(f"trained at guidance {g:g} vs 0, sampled at {SAMPLE_GUIDANCE:g}: {what} more saturated",
                             metric, sweep.values(s, fn), sweep.values(c, fn), True))
    out.append(("2. Training with guidance compounds it", two))
    # 3. low rank / low learning rate preserve
    three = []
    for factor, low, high in (("rank", 4, 32), ("lr", 1e-5, 1e-3)):
        a, b = sweep.vary(**{factor: low}), sweep.vary(**{factor: high})
        if a is None or b is None:
            continue
        for fn, metric in ((forgetting, "forgetting (old FD after - before)"),
                           (saturation_change, "|saturated after - before|")):
            three.append(judge(f"{factor} {low:g} preserves the old classes better than {factor} {high:g}", metric,
                               sweep.values(a, fn), sweep.values(b, fn), False))
        learned = lambda ft: ft.grid("after", "new_adherence")
        three.append(judge(f"... the price: {factor} {low:g} learns the new concept less than {factor} {high:g}",
                           "new_adherence", sweep.values(a, learned), sweep.values(b, learned), False))
    out.append(("3. Low rank and low learning rate preserve the old classes and the output statistics", three))
    # 4. step count
    four = []
    high = sweep.vary(lr=1e-3)
    for metric, relative in (("domain_fd", False), ("domain_fd", True), ("saturated", False)):
        what = f"|{metric}(N + 4) - {metric}(N)|" + (f" / {metric}(N)" if relative else "")
        for setting, name in ((c, "the center fine-tune"), (high, "the lr 1e-3 fine-tune")):
            if setting is None:
                continue
            four.append(judge(f"{what} larger after {name} than before", metric,
                              sweep.values(setting, step_gap("after", metric, relative=relative)),
                              sweep.values(setting, step_gap("before", metric, relative=relative)), True))
    out.append(("4. The student's step count matters more after fine-tuning", four))
    # 5. coupled vs decoupled_hybrid
    five = []
    if {"coupled", "decoupled_hybrid"} <= set(sweep.arms):
        for setting in [c] + [s for s in (sweep.vary(lr=1e-3), sweep.vary(train_guidance=3.0)) if s]:
            for fn, metric in ((forgetting, "forgetting (old FD after - before)"),
                               (saturation_change, "|saturated after - before|"),
                               (lambda ft: ft.grid("after", "new_adherence"), "new_adherence")):
                per_arm = [{s: v for (_, s), v in sweep.values(setting, fn, [arm]).items()}
                           for arm in ("decoupled_hybrid", "coupled")]
                five.append(judge(f"#4 and #1 students differ ({_name(setting)})", metric, *per_arm, None))
    out.append(("5. Fine-tuning a decoupled_hybrid and a coupled student differ", five))
    return [(title, [v for v in vs if v is not None]) for title, vs in out]


# -- the teacher's reaction to sampling guidance -----------------------------------------------------------

def teacher_reference(ft: Finetune, guidances: list[float]) -> dict[float, dict]:
    """The scale's teacher on a fine-tune's old-class noise and labels, at each sampling guidance
    (its many-step CFG ODE), scored as the fine-tune scores the student (finetune/evaluate.py)."""
    import torch

    from ..finetune.config import FinetuneConfig
    from ..finetune.data import parse_data
    from ..finetune.evaluate import ImageEvaluator
    from ..finetune.student import load_student
    from ..scales import load_networks
    from ..scales.images import teacher_settings

    settings = {k: v for k, v in ft.spec["finetune"].items() if k in ("eval_samples", "eval_new", "lora", "seed")}
    cfg_ft = FinetuneConfig.from_overrides({**settings, "device": "cpu"})
    torch.manual_seed(cfg_ft.seed)
    student = load_student(Path(ft.spec["run"]), cfg_ft, "cpu")
    ev = ImageEvaluator(student, parse_data(ft.spec["data"], student.cfg.scale, student.cfg.data.get("root")), cfg_ft)
    teacher, _ = load_networks(student.cfg)
    steps = teacher_settings(student.cfg)["ode_steps"]
    return {float(g): ev.measure_teacher(teacher, g, steps) for g in guidances}


def _teacher_cached(fts: list[Finetune], folder: Path) -> dict[float, dict] | None:
    """teacher_reference, kept in ``folder/teacher_guidance.json`` (keyed by what it depends on)."""
    if not fts:
        return None
    ft = fts[0]
    guidances = sorted({float(r["sample_guidance"]) for r in ft.grids})
    key = {"teacher_run": ft.spec["run"], "data": ft.spec["data"], "eval_samples": ft.spec["finetune"]["eval_samples"],
           "guidances": guidances}
    path = folder / "teacher_guidance.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return {float(g): m for g, m in cached["metrics"].items()}
    metrics = teacher_reference(ft, guidances)
    atomic_write_text(path, json.dumps({"key": key, "metrics": {str(g): m for g, m in metrics.items()}}, indent=2))
    return metrics


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
            t.rows.append([ARM_NAMES.get(arm, arm), _name(s) + (" (center)" if s == sweep.center else ""),
                           ",".join(str(f.seed) for f in sorted(fts, key=lambda f: f.seed)),
                           g("after", "new_adherence"), g("after", "new_fd"), g("before", "domain_fd"),
                           g("after", "domain_fd"), g("after", "class_adherence"), g("after", "saturated"),
                           g("after", "saturated", SAMPLE_GUIDANCE), g("after", "new_saturated")])
    t.notes.append("mean ± 95% interval (n = seeds). FD: the scale classifier's Frechet distance (old classes vs "
                   "real fashion test images; new: the mnist classifier's, vs held-out 7s); adherence: share the "
                   "classifier assigns to the asked class.")
    return t


def guidance_table(sweep: Sweep, teacher: dict | None) -> Table:
    gs = sorted({float(r["sample_guidance"]) for ft in next(iter(sweep.by.values())).values() for r in ft.grids})
    t = Table("Old classes' saturated share by sampling guidance (offset form; the student's step count)",
              ["model", *[f"g = {g:g}" for g in gs]])
    if teacher:
        t.rows.append([f"teacher ({teacher[gs[0]]['ode_steps']}-step CFG ODE)", *[f"{teacher[g]['saturated']:.4f}" for g in gs]])
    for arm in sweep.arms:
        before = [sweep.students(lambda ft, g=g: ft.grid("before", "saturated", g), [arm]) for g in gs]
        t.rows.append([f"{ARM_NAMES.get(arm, arm)} student", *[_est(v.values()) for v in before]])
        for s in [sweep.center] + [x for x in (sweep.vary(train_guidance=1.5), sweep.vary(train_guidance=3.0)) if x]:
            vals = [sweep.values(s, lambda ft, g=g: ft.grid("after", "saturated", g), [arm]) for g in gs]
            t.rows.append([f"... after {_name(s)}", *[_est(v.values()) for v in vals]])
    return t


def verdict_table(title: str, verdicts: list[Verdict]) -> Table:
    t = Table(title, ["comparison", "metric", "a", "b", "a - b (paired)", "verdict"])
    t.rows = [v.row() for v in verdicts]
    return t


def curves_figure(sweep: Sweep, path: Path, keys=("new_adherence", "domain_fd", "saturated")):
    """Metrics over fine-tune steps, mean over seeds and both students, one line per setting."""
    from matplotlib import colormaps

    fig = Figure(figsize=(4.6 * len(keys), 3.6))
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for i, s in enumerate(sweep.settings):
        fts = [ft for a in sweep.arms for ft in sweep.by.get((a, s), {}).values()]
        n = min(len(ft.curve["step"]) for ft in fts)
        for ax, key in zip(axes, keys):
            ax.plot(fts[0].curve["step"][:n], np.mean([ft.curve[key][:n] for ft in fts], axis=0), marker=".",
                    color=colormaps["tab10"](i % 10), ls="-" if s == sweep.center else "--",
                    label=f"{_name(s)} (n={len(fts)})")
    titles = {"new_adherence": "new concept: adherence", "domain_fd": "old classes: classifier FD",
              "saturated": "old classes: saturated share"}
    for ax, key in zip(axes, keys):
        ax.set_title(titles.get(key, key))
        ax.set_xlabel("fine-tune steps")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")


def tradeoff_figure(sweep: Sweep, path: Path):
    """What each setting forgets on the way to learning the concept: the old classes' classifier FD against
    the new concept's adherence at every evaluation (means over seeds and both students), from step 0 on.
    A setting on a lower path forgets less for the same learning; one that stops early only looks safer."""
    from matplotlib import colormaps

    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    for i, s in enumerate(sweep.settings):
        fts = [ft for a in sweep.arms for ft in sweep.by.get((a, s), {}).values()]
        n = min(len(ft.curve["step"]) for ft in fts)
        x = np.mean([ft.curve["new_adherence"][:n] for ft in fts], axis=0)
        y = np.mean([ft.curve["domain_fd"][:n] for ft in fts], axis=0)
        ax.plot(x, y, marker=".", color=colormaps["tab10"](i % 10), ls="-" if s == sweep.center else "--",
                label=f"{_name(s)} (n={len(fts)})")
        ax.annotate(f"{int(fts[0].curve['step'][n - 1])}", (x[-1], y[-1]), fontsize=7)
    ax.set_xlabel("new concept: adherence")
    ax.set_ylabel("old classes: classifier FD")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")


def guidance_figure(sweep: Sweep, teacher: dict | None, path: Path):
    """The old classes' saturated share against sampling guidance: teacher, students before, after."""
    gs = sorted({float(r["sample_guidance"]) for ft in next(iter(sweep.by.values())).values() for r in ft.grids})
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    if teacher:
        ax.plot(gs, [teacher[g]["saturated"] for g in gs], "k-o", label="teacher")
    lines = [("before", sweep.center, "student (before)")] + [
        ("after", s, f"after train_guidance {s[2]:g}") for s in
        [sweep.center] + [x for x in (sweep.vary(train_guidance=1.5), sweep.vary(train_guidance=3.0)) if x]]
    for j, (phase, s, label) in enumerate(lines):
        means = [np.mean(list(sweep.values(s, lambda ft, g=g: ft.grid(phase, "saturated", g)).values())) for g in gs]
        ax.plot(gs, means, marker="o", ls="--" if phase == "before" else "-", label=label)
    ax.set_xlabel("sampling guidance g (offset form: alpha = 1 + g)")
    ax.set_ylabel("saturated share, old classes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")


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


def write_finetune_report(runs_dir: str | Path, scale: str, center: dict, reports_dir: str | Path = "reports") -> Path:
    fts = [ft for ft in load_finetunes(runs_dir, scale) if ft.spec["student"]["scale"] == scale]
    if not fts:
        raise UserError(f"no finished fine-tune under {Path(runs_dir) / scale / 'finetune'}: run "
                        "bash analysis/sweeps/finetune.sh (or make finetune) first.")
    sweep = Sweep(fts, center)
    target = Path(reports_dir) / "finetune"
    staging = Path(reports_dir) / f".finetune.staging-{secrets.token_hex(3)}"
    staging.mkdir(parents=True)
    try:
        if (target / "teacher_guidance.json").is_file():  # the teacher is measured once; reuse it if it still applies
            shutil.copy(target / "teacher_guidance.json", staging / "teacher_guidance.json")
        teacher = _teacher_cached(fts, staging) if scale in ("fashion", "mnist") else None
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
                f"(students: {', '.join(ARM_NAMES.get(a, a) for a in sweep.arms)}; center setting: {_name(sweep.center)}; "
                f"concept: {fts[0].spec['concept']}; LoRA targets: {', '.join(sweep.center[4])}; batch "
                f"{fts[0].spec.get('batch_size', '?')}, the student's own times). Design: one factor at a time from the "
                "center (analysis/sweeps/finetune.sh, DESIGN=center): it measures each factor with the others fixed, "
                "not their interactions. Verdicts: the 95% Student-t interval of the paired difference "
                "a - b lies wholly on the claimed side of 0 (holds), wholly on the other (does not hold), or "
                "straddles it (inconclusive); 'differs' for two-sided claims. Claims 1-4 pool both students, "
                "pairing on (student, seed); claim 5 pairs the two students of one seed.", "",
                "## Reproduce", "", *reproduce_lines(sweep, scale), "", "## Verdicts", ""]
        for (title, vs), table in zip(judged, tables):
            page += [f"### {title}", ""] + ([f"- {v.claim}: {v.metric} {v.a} vs {v.b}; a - b = {v.diff} -- **{v.result}**"
                                              for v in vs] or ["- not measured: the sweep has no setting for it"]) + [""]
        page += ["## Figures", "", "![saturation against sampling guidance](guidance.png)", "",
                 "![curves over fine-tune steps](curves.png)", "",
                 "Forgetting against learning: each setting's path from step 0 (the number: its last step); a lower "
                 "path forgets less for the same adherence to the new concept.", "",
                 "![forgetting against learning](tradeoff.png)", "",
                 f"Grids of one fine-tune ({ARM_NAMES.get(ft0.arm, ft0.arm)} student, seed {ft0.seed}, {_name(ft0.setting)}, "
                 f"guidance 0, {ft0.student_steps} steps; a row per old class, the new label last), before and after:", "",
                 "![before](grid_before.png) ![after](grid_after.png)", "",
                 "## Tables", "", render_tables(tables[len(judged):], "markdown"), "",
                 "## Every comparison", "", render_tables(tables[:len(judged)], "markdown"), ""]
        atomic_write_text(staging / "README.md", "\n".join(page) + "\n")
        return publish_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
