"""Runs as seeded groups: which runs are repeats of one configuration, how each group differs
from its neighbours, which group stands for an arm, and the paired comparisons the report judges.

A group is every finished run with one config apart from the seed (``stats.group_key``). Its
label is what sets it apart: the config values that differ from the scale's YAML for that arm
*and* from what most groups of the sweep share (so a sweep's common settings, e.g. STEPS=500,
are said once in a note instead of on every row). Comparisons pair runs by seed (stats.py).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable

from ddmd_lab.config import load_config
from ddmd_lab.report.run_record import RunRecord
from ddmd_lab.report.stats import Estimate, group_key, mean_interval, paired_difference, score, verdict

# keys that never distinguish groups: where and how a run logs, the seed, and the arm's own text
IGNORED = ("seed", "runs_dir", "cache_dir", "wandb", "progress_bar", "arm.name", "arm.description", "student_steps")
# the numbers compared across seeds: (summary key, lower is better)
METRICS = {"domain_fd": True, "class_adherence": False, "out_std": None, "saturated": None, "hf_excess": None,
           "spectral_centroid": None, "fid": True}


def flat(d: dict, prefix: str = "") -> dict:
    """{'arm': {'tau_ca': {'lo': 0}}} -> {'arm.tau_ca.lo': 0}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


@lru_cache(maxsize=64)
def _defaults(scale: str, arm: str) -> tuple:
    try:
        return tuple(flat(load_config(scale, arm).to_dict()).items())
    except Exception:  # an arm or scale no longer defined here: nothing to compare with
        return ()


def differences_from_default(cfg) -> dict:
    """Config values of a run that its scale's YAML (with its arm) would not have given."""
    default = dict(_defaults(cfg.run.scale, cfg.arm.name))
    if not default:  # an arm or scale no longer defined: nothing to compare with
        return {}
    # a key the YAML leaves out is a change too: an entry of a dict it leaves empty (toy2d's teacher: {},
    # so teacher.kind=exact sets its groups apart)
    return {k: v for k, v in flat(cfg.to_dict()).items()
            if not k.startswith(IGNORED) and k not in IGNORED and (k not in default or default[k] != v)}


@dataclass
class Group:
    key: str
    arm: str
    student_steps: int
    runs: dict[int, RunRecord] = field(default_factory=dict)  # seed -> newest run of that seed
    changed: dict = field(default_factory=dict)  # differences from the scale's defaults
    label: dict = field(default_factory=dict)  # the part of ``changed`` that sets it apart in this sweep

    @property
    def seeds(self) -> list[int]:
        return sorted(self.runs)

    @property
    def name(self) -> str:
        extra = ", ".join(f"{k}={short_value(v)}" for k, v in sorted(self.label.items()))
        return f"{self.arm} [{extra}]" if extra else self.arm

    def values(self, metric: str) -> dict[int, float]:
        """{seed: the run's score on ``metric``} (stats.score: mean of its last score_last evaluations)."""
        return {s: v for s, r in self.runs.items() if (v := score(r.summary, metric)) is not None}

    def estimate(self, metric: str) -> Estimate:
        return mean_interval(self.values(metric).values())

    def newest(self) -> RunRecord:
        return max(self.runs.values(), key=lambda r: r.path.name)


def short_value(v) -> str:
    """A config value as a label shows it (floats without trailing zeros)."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def seed_groups(records: Iterable[RunRecord]) -> list[Group]:
    """Finished runs grouped by config without the seed; a seed run twice keeps its newest run."""
    groups: dict[str, Group] = {}
    for r in sorted(records, key=lambda r: r.path.name):
        key = group_key(r.cfg.to_dict())
        g = groups.setdefault(key, Group(key, r.arm, r.student_steps, changed=differences_from_default(r.cfg)))
        g.runs[r.cfg.run.seed] = r
    out = list(groups.values())
    common = sweep_settings(out)
    for g in out:
        g.label = {k: v for k, v in g.changed.items() if common.get(k, _MISSING) != v}
    return out


_MISSING = object()


def sweep_settings(groups: list[Group]) -> dict:
    """The changed values most groups share (the sweep's own settings): {key: value} for each key
    whose most common value (a group without the key counting as the default) is a change."""
    counts: Counter = Counter()
    for g in groups:
        counts.update((k, v) for k, v in g.changed.items())
    out = {}
    for (k, v), n in counts.most_common():
        if k not in out and n * 2 > len(groups):
            out[k] = v
    return out


def primary(groups: list[Group]) -> dict[tuple[str, int], Group]:
    """The group that stands for each (arm, student steps): most seeds, then fewest differences
    from the sweep's common settings (a variant never shadows its base), then newest."""
    best: dict[tuple[str, int], Group] = {}
    for g in groups:
        k = (g.arm, g.student_steps)
        rank = (len(g.runs), -len(g.label), g.newest().path.name)
        if k not in best or rank > (len(best[k].runs), -len(best[k].label), best[k].newest().path.name):
            best[k] = g
    return best


def find(groups: list[Group], arm: str, steps: int, **label) -> Group | None:
    """The group of ``arm`` at ``steps`` whose label is exactly ``label`` (dotted keys as k__sub)."""
    want = {k.replace("__", "."): v for k, v in label.items()}
    hits = [g for g in groups if g.arm == arm and g.student_steps == steps and _same(g.label, want)]
    return max(hits, key=lambda g: len(g.runs)) if hits else None


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(short_value(a[k]) == short_value(b[k]) for k in a)


@dataclass
class Comparison:
    claim: str  # "A better than B" in words
    a: Group
    b: Group
    metric: str
    diff: Estimate  # of a - b over common seeds
    result: str  # holds | does not hold | inconclusive | differs | no difference shown

    def line(self) -> str:
        ea, eb = self.a.estimate(self.metric), self.b.estimate(self.metric)
        return (f"{self.claim}: {self.metric} {ea} vs {eb}; paired difference {self.diff} over seeds "
                f"{sorted(set(self.a.runs) & set(self.b.runs))} -- **{self.result}**.")


def compare(claim: str, a: Group | None, b: Group | None, metric: str, lower_is_better: bool | None) -> Comparison | None:
    """Judge 'a better than b' on ``metric`` from the interval of the paired difference; with
    ``lower_is_better=None`` the claim is only 'a differs from b' (either direction)."""
    if a is None or b is None:
        return None
    diff = paired_difference(a.values(metric), b.values(metric))
    if diff.n == 0:
        return None
    if lower_is_better is None:
        v = verdict(diff, lower_is_better=True)
        result = "inconclusive" if v == "inconclusive" else "differs"
    else:
        result = verdict(diff, lower_is_better)
    return Comparison(claim, a, b, metric, diff, result)


SCHEDULE_NAMES = {"coupled": "#1 coupled", "decoupled_full": "#2 decoupled_full",
                  "decoupled_constrained": "#3 decoupled_constrained", "decoupled_hybrid": "#4 decoupled_hybrid",
                  "dm_only": "DM alone"}


def claims(groups: list[Group], metric: str = "domain_fd", steps: int = 4) -> list[Comparison]:
    """The exploratory comparisons (each at 95%, uncorrected), wherever both sides were run with common
    seeds: schedules against each other and DM alone, each normaliser against the default, the fake
    model's learning rate against the default.  The questions fixed in advance (#4 vs #1 under both
    normalisers, Fig. 4a) are judged from analysis/claims.yaml (report/claims.py), not here."""
    lower = METRICS[metric]
    base = {a: find(groups, a, steps) for a in SCHEDULE_NAMES}
    name = SCHEDULE_NAMES
    out = [compare(f"{name[a]} better than {name[b]}", base[a], base[b], metric, lower)
           for a, b in (("decoupled_hybrid", "decoupled_full"),
                        ("decoupled_hybrid", "decoupled_constrained"), ("decoupled_full", "coupled"),
                        ("decoupled_constrained", "coupled"), ("coupled", "dm_only"), ("decoupled_hybrid", "dm_only"))]
    variants = [g for g in groups if g.student_steps == steps and g.arm in SCHEDULE_NAMES and len(g.label) == 1]
    for g in sorted(variants, key=lambda g: g.name):
        (key, value), = g.label.items()
        if key == "arm.normaliser":
            out.append(compare(f"{g.arm}: normaliser {value} better than the default", g, base[g.arm], metric, lower))
        elif key == "lr_fake":
            out.append(compare(f"{g.arm}: lr_fake {short_value(value)} differs from the default", g, base[g.arm], metric, None))
    return [c for c in out if c is not None]


def seeded_rows(groups: list[Group], metrics: tuple[str, ...]) -> list[list]:
    """One row per group: name, student steps, seeds, then 'mean ± half-width (n)' per metric."""
    rows = []
    for g in sorted(groups, key=lambda g: (-g.student_steps, g.arm, g.name)):
        rows.append([g.name, g.student_steps, ",".join(map(str, g.seeds)),
                     *(str(g.estimate(m)) if g.values(m) else None for m in metrics)])
    return rows
