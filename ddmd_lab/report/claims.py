"""Claims fixed before their runs (analysis/claims.yaml), judged with Holm's correction per family.

A claim is one question: a contrast of seeded groups (weights on arms at one scale, e.g. +1 hybrid,
-1 coupled; four terms for an interaction), a metric, a direction (``lower``: the contrast is below
0; ``higher``; ``differs``: either way), a family, and whether it is primary or exploratory.  Its
value per seed is the weighted sum of the groups' scores at that seed (runs pair by seed: same
labels, noise and evaluation, core/streams.py), so its interval is a paired one.

Verdicts, for primaries at family-wise level 0.05 (Holm's step-down on two-sided paired t-tests):
  holds                          adjusted p < 0.05 and the mean on the claimed side
  does not hold                  adjusted p < 0.05 on the other side
  no difference larger than X    not significant, and the 95% interval lies inside (-X, X), where X
                                 is the claim's ``smallest_effect`` (what would matter)
  inconclusive                   otherwise; the line then gives the smallest effect these seeds could
                                 detect at 80% power and the seeds that ``smallest_effect`` would need
Exploratory claims get the same numbers without the correction, and say so.

Pure functions of numbers and run records; scipy's t distribution for the quantiles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ddmd_lab.config.files import read_yaml
from ddmd_lab.errors import UserError
from ddmd_lab.report.seeded import Group, flat
from ddmd_lab.report.stats import Estimate, mean_interval

FAMILY_LEVEL = 0.05
POWER = 0.8
CLAIMS_FILE = Path("analysis") / "claims.yaml"
DIRECTIONS = ("lower", "higher", "differs")


@dataclass(frozen=True)
class Term:
    weight: float
    arm: str
    student_steps: int = 4
    settings: tuple = ()  # ((flat config key, value), ...) the group must have

    def describe(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.settings)
        return f"{self.arm} ({self.student_steps}-step{extra})"


@dataclass(frozen=True)
class Claim:
    name: str
    family: str
    scale: str
    question: str
    metric: str
    direction: str
    terms: tuple[Term, ...]
    smallest_effect: float
    primary: bool = True


@dataclass
class Judged:
    claim: Claim
    values: dict[int, float]  # seed -> contrast
    diff: Estimate
    p: float
    p_adjusted: float = math.nan
    verdict: str = "inconclusive"
    detectable: float = math.nan  # smallest effect detectable at 80% power with these seeds
    seeds_needed: int | None = None  # for the claim's smallest_effect
    missing: list[str] = field(default_factory=list)  # terms without runs

    @property
    def sd(self) -> float:
        return paired_sd(list(self.values.values()))

    def line(self) -> str:
        c = self.claim
        head = f"**{c.name}** ({c.family}{'' if c.primary else ', exploratory'}): {c.question}"
        if self.missing:
            return f"{head} -- not run yet ({'; '.join(self.missing)})."
        level = "Holm-adjusted" if c.primary else "unadjusted, exploratory"
        text = (f"{head}. {c.metric} contrast "
                f"{self.diff} over seeds {sorted(self.values)}, paired sd {self.sd:.3g}; p = {self.p:.3g} "
                f"({level} {self.p_adjusted:.3g}) -- **{self.verdict}**")
        if self.verdict == "inconclusive":
            need = f"{self.seeds_needed}" if self.seeds_needed is not None else "more than 1000"
            text += (f"; smallest effect these {self.diff.n} seeds detect at 80% power: {self.detectable:.3g}; "
                     f"{c.smallest_effect:g} would need {need} seeds")
        return text + "."


def load_claims(path: str | Path = CLAIMS_FILE, scale: str | None = None) -> list[Claim]:
    """The claims of ``path`` (of one scale, where given), each checked as it is read."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; run from the repository root (it lists the claims fixed in advance).")
    out = []
    for i, c in enumerate(read_yaml(path).get("claims", [])):
        where = f"{path}: claim {c.get('name', i)!r}"
        missing = {"name", "family", "scale", "question", "metric", "direction", "terms", "smallest_effect"} - set(c)
        if missing:
            raise UserError(f"{where} lacks {sorted(missing)}.")
        if c["direction"] not in DIRECTIONS:
            raise UserError(f"{where}: direction must be one of {DIRECTIONS}, not {c['direction']!r}.")
        terms = tuple(Term(float(t["weight"]), t["arm"], int(t.get("student_steps", 4)),
                           tuple(sorted((k, v) for k, v in (t.get("set") or {}).items()))) for t in c["terms"])
        if not terms or abs(sum(t.weight for t in terms)) > 1e-9:
            raise UserError(f"{where}: the terms' weights must sum to 0 (a contrast), e.g. +1 and -1.")
        out.append(Claim(c["name"], c["family"], c["scale"], c["question"], c["metric"], c["direction"], terms,
                         float(c["smallest_effect"]), bool(c.get("primary", True))))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: claim names must be unique.")
    return [c for c in out if scale is None or c.scale == scale]


def term_group(groups: list[Group], term: Term) -> Group | None:
    """The group of ``term``: its arm and steps, every setting it names, and otherwise the fewest
    differences from the scale's defaults (so a variant never stands for the base); then most seeds."""
    hits = []
    for g in groups:
        if g.arm != term.arm or g.student_steps != term.student_steps:
            continue
        cfg = flat(g.newest().cfg.to_dict())
        if all(_same_value(cfg.get(k), v) for k, v in term.settings):
            extra = len(set(g.changed) - {k for k, _ in term.settings})
            hits.append((extra, -len(g.runs), g.newest().path.name, g))
    return min(hits, key=lambda h: h[:3])[3] if hits else None


def _same_value(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return str(a) == str(b)


def contrast_values(groups: list[Group], claim: Claim) -> tuple[dict[int, float], list[str]]:
    """{seed: sum of weight x score} over the seeds every term has, and the terms with no runs."""
    found = [(t, term_group(groups, t)) for t in claim.terms]
    missing = [t.describe() for t, g in found if g is None]
    if missing:
        return {}, missing
    per_term = [(t.weight, g.values(claim.metric)) for t, g in found]
    seeds = set.intersection(*(set(v) for _, v in per_term))
    return {s: sum(w * v[s] for w, v in per_term) for s in sorted(seeds)}, []


def paired_sd(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return math.nan
    m = sum(values) / n
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


def paired_p(values: list[float]) -> float:
    """Two-sided one-sample t-test p of mean 0 (nan below 2 values; 0 or 1 where the sd is 0)."""
    from scipy import stats  # deferred: scipy takes ~1 s to import

    n, sd = len(values), paired_sd(values)
    if n < 2:
        return math.nan
    mean = sum(values) / n
    if sd == 0:
        return 0.0 if mean != 0 else 1.0
    t = mean / (sd / math.sqrt(n))
    return float(2 * stats.t.sf(abs(t), n - 1))


def detectable_effect(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """The smallest true mean difference a two-sided paired t-test at ``alpha`` detects with ``power``
    from n seeds of paired sd ``sd``: (t_{1-alpha/2} + t_{power}) sd / sqrt(n), n - 1 degrees of freedom."""
    from scipy import stats  # deferred: scipy takes ~1 s to import

    if n < 2 or not math.isfinite(sd):
        return math.nan
    return float((stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n))


def seeds_needed(sd: float, effect: float, alpha: float, power: float = POWER, most: int = 1000) -> int | None:
    """The fewest seeds whose detectable effect is at most ``effect`` (None above ``most``)."""
    if not math.isfinite(sd) or effect <= 0:
        return None
    for n in range(2, most + 1):
        if detectable_effect(sd, n, alpha, power) <= effect:
            return n
    return None


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given; nan stays nan."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m, out, running = len(order), [math.nan] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def _verdict(claim: Claim, diff: Estimate, p_adjusted: float, level: float) -> str:
    if diff.n < 2 or math.isnan(p_adjusted):
        return "inconclusive"
    if p_adjusted < level:
        if claim.direction == "differs":
            return "differs"
        on_side = diff.mean < 0 if claim.direction == "lower" else diff.mean > 0
        return "holds" if on_side else "does not hold"
    x = claim.smallest_effect
    if -x < diff.lo and diff.hi < x:
        return f"no difference larger than {x:g}"
    return "inconclusive"


def judge(groups: list[Group], claims: list[Claim], level: float = FAMILY_LEVEL) -> list[Judged]:
    """Every claim's numbers and verdict; primaries corrected with Holm within their family."""
    judged = []
    for c in claims:
        values, missing = contrast_values(groups, c)
        xs = list(values.values())
        judged.append(Judged(c, values, mean_interval(xs), paired_p(xs), missing=missing))
    families: dict[str, list[Judged]] = {}
    for j in judged:
        if j.claim.primary and not j.missing:
            families.setdefault(j.claim.family, []).append(j)
    for members in families.values():
        for j, p in zip(members, holm([j.p for j in members])):
            j.p_adjusted = p
    for j in judged:
        if j.missing:
            continue
        if not j.claim.primary:
            j.p_adjusted = j.p
        # the worst case of Holm's thresholds (Bonferroni's) for what the family could detect
        m = len(families.get(j.claim.family, [])) if j.claim.primary else 1
        alpha = level / max(m, 1)
        j.verdict = _verdict(j.claim, j.diff, j.p_adjusted, level)
        j.detectable = detectable_effect(j.sd, j.diff.n, alpha)
        j.seeds_needed = seeds_needed(j.sd, j.claim.smallest_effect, alpha)
    return judged


def claims_section(groups: list[Group], scale: str, path: str | Path = CLAIMS_FILE) -> list[str]:
    """The report's section: each claim of ``scale`` judged, primaries first, per family."""
    claims = load_claims(path, scale) if Path(path).is_file() else []
    if not claims:
        return []
    judged = judge(groups, claims)
    out = [f"## Claims fixed in advance (`{path}`)", "",
           "Each contrast is paired by seed on the runs' scores (each metric's mean over the last `score_last` "
           "evaluations). Primary claims are judged at family-wise level 0.05 with Holm's correction within "
           "their family; exploratory ones are not corrected. An inconclusive line gives the smallest effect its "
           "seeds could detect at 80% power and the seeds the claim's smallest effect of interest would need "
           "(`make power CLAIM=<name>`).", ""]
    for primary in (True, False):
        out += [f"- {j.line()}" for j in sorted(judged, key=lambda j: (j.claim.family, j.claim.name))
                if j.claim.primary == primary]
    return out + [""]


def power_lines(groups: list[Group], claim: Claim, all_claims: list[Claim]) -> list[str]:
    """``make power``: from the pilot runs of ``claim``, its paired sd and the seeds it needs."""
    values, missing = contrast_values(groups, claim)
    if missing:
        return [f"{claim.name}: no pilot runs for {'; '.join(missing)}; run a few seeds of each term first."]
    xs = list(values.values())
    if len(xs) < 2:
        return [f"{claim.name}: {len(xs)} paired seed(s); a power analysis needs at least 2 (3 or more advised)."]
    m = sum(1 for c in all_claims if c.family == claim.family and c.primary) if claim.primary else 1
    alpha = FAMILY_LEVEL / max(m, 1)
    sd = paired_sd(xs)
    n = seeds_needed(sd, claim.smallest_effect, alpha)
    return [f"{claim.name}: {claim.question}",
            f"pilot: {len(xs)} paired seeds {sorted(values)}, mean contrast {sum(xs) / len(xs):.4g}, paired sd {sd:.4g}",
            f"level {alpha:.3g} (0.05 over the {m} primary claim(s) of family {claim.family!r}, Bonferroni: Holm's "
            f"strictest step), power {POWER:.0%}, smallest effect of interest {claim.smallest_effect:g}",
            f"seeds needed: {n if n is not None else 'more than 1000'}",
            f"detectable now ({len(xs)} seeds): {detectable_effect(sd, len(xs), alpha):.4g}",
            f"n={max(n, 10) if n is not None else 1000}"]  # the sweep's seed count: at least 10


def noise_floor_lines(groups: list[Group], floors: dict | None, metrics: tuple[str, ...]) -> list[str]:
    """The report's noise floors: the metric's floor and the evaluation's noise (make floors), and the
    training's noise (each seeded group's sd over its seeds' scores), side by side per metric."""
    out = ["## Noise floors", ""]
    if floors is None:
        out += ["Not measured for this scale yet: `make floors RUN=<a finished run of it>`.", ""]
    else:
        out += [f"Measured by `make floors RUN={floors['run']}`: the metric's floor is real data (toy2d: exact "
                f"target samples) scored like a student on {floors['eval_samples']} samples; the evaluation's noise "
                f"is that run's student evaluated on {floors['evaluation_seeds']} evaluation seeds; the training's "
                "noise is each seeded group's sd over its seeds' scores (below). Where the evaluation's sd is a "
                "large share of the training's, more evaluation samples would sharpen every verdict.", ""]
    for metric in metrics:
        parts = []
        if floors is not None and metric in floors.get("metric_floor", {}):
            parts.append(f"floor {floors['metric_floor'][metric]:.4g}")
        ev = (floors or {}).get("evaluation", {}).get(metric)
        if ev is not None:
            parts.append(f"evaluation sd {ev['sd']:.3g}")
        training = [(g.name, g.student_steps, paired_sd(list(g.values(metric).values()))) for g in groups
                    if len(g.values(metric)) >= 3]
        if training:
            sds = sorted(sd for _, _, sd in training)
            parts.append(f"training sd over seeds {sds[0]:.3g} to {sds[-1]:.3g} (median {sds[len(sds) // 2]:.3g}, "
                         f"{len(training)} groups of 3+ seeds)")
            if ev is not None and sds[len(sds) // 2] > 0:
                parts.append(f"evaluation / training: {ev['sd'] / sds[len(sds) // 2]:.2f}")
        if parts:
            out.append(f"- {metric}: " + "; ".join(parts) + ".")
    return out + [""]
