"""The fine-tunes of a sweep, read and grouped, and the LoRA advice's five claims judged over seeds
(issue 16); report/finetune.py lays them out.

Fine-tunes (``<runs_dir>/<scale>/finetune/*/result.json``) are grouped by what was set (student
arm, rank, learning rate, train_guidance, steps, targets, concept); the fine-tune's seed is its
student's seed in the sweep (analysis/sweeps/finetune.sh), so a comparison pairs a student with its
own fine-tunes.  Claims 1-4 are about "a distilled student": they pool both arms, but the two students
of one seed share that seed's fine-tune draws, so they are one cluster: each seed's value is the mean
over its students, and the pairs are the seeds (n = seeds, not students); claim 5 compares the arms,
pairing on the seed.  Every number is read from the
fine-tunes' grids.json (before / after, sampling guidance x step count) and metrics.csv.

The five claims are five families: each comparison's two-sided paired t-test p is Holm-adjusted within
its claim (report/claims.holm), and judged holds / does not hold (adjusted p < 0.05, on / against the
claimed side), differs (two-sided claims) or inconclusive:
  1. sampling guidance oversaturates a distilled student more than it does the teacher:
     the rise of the old classes' saturated share from guidance 0 to g, student minus teacher;
  2. training with guidance compounds it: after fine-tunes at train_guidance g vs 0, the
     saturated share sampled at guidance 1.5 (new concept and old classes);
  3. low rank / low learning rate preserve the old classes and the output statistics:
     forgetting (old classes' classifier FD after - before) and |change of the saturated share|,
     rank 4 vs 32 and lr 1e-5 vs 1e-3, with what each learned of the new concept beside it;
  4. the student's step count matters more after fine-tuning: metric at N + 4 steps - at N (signed:
     an absolute value grows with noise alone), after vs before;
  5. coupled and decoupled_hybrid students differ under the same fine-tune (two-sided).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ddmd_lab.errors import UserError
from ddmd_lab.report.claims import holm, paired_p
from ddmd_lab.report.stats import Estimate, mean_interval, paired_difference

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


def finished_finetunes(runs_dir: str | Path, scale: str) -> list[Finetune]:
    """The finished fine-tunes of ``scale``'s students; a UserError where there is none."""
    fts = [ft for ft in load_finetunes(runs_dir, scale) if ft.spec["student"]["scale"] == scale]
    if not fts:
        raise UserError(f"no finished fine-tune under {Path(runs_dir) / scale / 'finetune'}: run "
                        "bash analysis/sweeps/finetune.sh (or make finetune) first.")
    return fts


def setting_name(setting: tuple) -> str:
    rank, lr, g, steps, _, _ = setting
    return f"rank {rank}, lr {lr:g}, train_guidance {g:g}, {steps} steps"


class Sweep:
    """The fine-tunes by (arm, setting), newest per seed; values keyed (arm, seed) for pooled pairing."""

    def __init__(self, fts: list[Finetune], center: dict):
        self.fts = fts  # every fine-tune read, oldest first (a seed run twice too)
        self.by = {}
        for ft in fts:
            self.by.setdefault((ft.arm, ft.setting), {})[ft.seed] = ft  # oldest first: the newest stays
        self.arms = sorted({a for a, _ in self.by}, key=lambda a: list(ARM_NAMES).index(a) if a in ARM_NAMES else 99)
        settings = {s for _, s in self.by}
        matches = [s for s in settings if (s[0], s[1], s[2]) == (center["rank"], center["lr"], center["train_guidance"])]
        if not matches:
            raise UserError(f"no fine-tune at the center setting {center}; run analysis/sweeps/finetune.sh or name the "
                            f"center of what ran (settings found: {sorted(map(setting_name, settings))}).")
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
    higher_is_claimed: bool | None
    p: float
    p_adjusted: float = math.nan
    result: str = "inconclusive"

    def row(self) -> list:
        return [self.claim, self.metric, str(self.a), str(self.b), str(self.diff), f"{self.p_adjusted:.3g}", self.result]

    def judged(self, p_adjusted: float, level: float = 0.05) -> "Verdict":
        self.p_adjusted = p_adjusted
        if math.isnan(p_adjusted) or p_adjusted >= level:
            self.result = "inconclusive"
        elif self.higher_is_claimed is None:
            self.result = "differs"
        else:
            self.result = "holds" if (self.diff.mean > 0) == self.higher_is_claimed else "does not hold"
        return self


def by_seed(values: dict) -> dict:
    """{seed: mean over the students of that seed} of {(arm, seed): value}: the students that share a
    seed share its fine-tune draws, so they are one cluster, not independent pairs."""
    if not values or not isinstance(next(iter(values)), tuple):
        return values
    cluster: dict = {}
    for (_, seed), v in values.items():
        cluster.setdefault(seed, []).append(v)
    return {seed: sum(vs) / len(vs) for seed, vs in cluster.items()}


def judge(claim: str, metric: str, a: dict, b: dict, higher_is_claimed: bool | None) -> Verdict | None:
    """'a exceeds b' (higher_is_claimed True), 'a is below b' (False) or 'a differs from b' (None): the
    paired difference a - b over the common seeds (pooled students clustered by seed); the result is
    set by ``holm_within`` once the claim's comparisons are all known."""
    a, b = by_seed(a), by_seed(b)
    common = sorted(set(a) & set(b))
    if not common:
        return None
    diff = paired_difference(a, b)
    return Verdict(claim, metric, mean_interval(a[k] for k in common), mean_interval(b[k] for k in common), diff,
                   higher_is_claimed, paired_p([a[k] - b[k] for k in common]))


def holm_within(verdicts: list[Verdict]) -> list[Verdict]:
    """One claim's comparisons judged at family-wise 0.05 (Holm)."""
    return [v.judged(p) for v, p in zip(verdicts, holm([v.p for v in verdicts]))]


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
    """metric at the student's steps + offset - at its steps (guidance 0), or that over the metric at its
    steps (``relative``: a fine-tune that raises the FD everywhere raises its gaps with it).  Signed: the
    absolute value of a difference grows with its noise alone."""
    def gap(ft):
        at = ft.grid(phase, metric)
        scale = (abs(at) or math.nan) if relative else 1.0  # nan: left out of the interval
        return (ft.grid(phase, metric, 0.0, ft.student_steps + offset) - at) / scale
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
            one.append(judge(f"... and after the center fine-tune ({setting_name(c)})", f"{metric} rise",
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
        what = f"{metric}(N + 4) - {metric}(N)" + (f" / {metric}(N)" if relative else "")
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
                five.append(judge(f"#4 and #1 students differ ({setting_name(setting)})", metric, *per_arm, None))
    out.append(("5. Fine-tuning a decoupled_hybrid and a coupled student differ", five))
    return [(title, holm_within([v for v in vs if v is not None])) for title, vs in out]
