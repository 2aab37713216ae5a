"""The harness's numbers laid out as the paper's results (``make tables``).

Every number comes from a run folder or, for the paper's columns, from
analysis/paper_numbers.yaml; a paper column stands beside ours only on the
row of the arm it describes.  Markdown or LaTeX.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ddmd_lab.core.arms import REGISTRY
from ddmd_lab.report.run_record import RunRecord
from ddmd_lab.report.runs import finished_runs, require_runs
from ddmd_lab.report.scale_facts import ScaleFacts
from ddmd_lab.report.seeded import claims, seed_groups, seeded_rows, sweep_settings
from ddmd_lab.report.stats import score

PAPER_NUMBERS = Path(__file__).resolve().parents[2] / "analysis" / "paper_numbers.yaml"
SCHEDULES = ("coupled", "decoupled_full", "decoupled_constrained", "decoupled_hybrid")  # the paper's #1..#4
REGULARISERS = {"none (CA only)": "ca_only", "mean-variance KL": "ca_meanvar", "DM (decoupled-hybrid)": "decoupled_hybrid",
                "GAN": "ca_gan"}
FIG2_ARMS = {"CA": "ca_only", "CA+DM (coupled)": "coupled", "DM": "dm_only"}
# summary keys left out of the results table (bookkeeping, or shown in their own figure)
SKIP = {"step", "generator_steps", "nonfinite_samples", "critic_steps", "skipped_steps", "fid_samples", "out_of_range",
        "out_mean_spread", "ranks", "ranks_identical", "clipped_r", "clipped_g", "clipped_b", "score_last", "scores"}
# colour relative to the teacher (eval/colour.py): ratios (x) for saturation and contrast, differences for the rest
COLOUR_VS_TEACHER = {"sat. vs teacher (x)": "hsv_saturation_vs_teacher", "a* vs teacher": "lab_a_vs_teacher",
                     "b* vs teacher": "lab_b_vs_teacher", "contrast vs teacher (x)": "rms_contrast_vs_teacher",
                     "clipped vs teacher": "clipped_vs_teacher"}
HPS_STYLES = ("anime", "concept-art", "paintings", "photo")
SKIP_PREFIXES = ("observer_",)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines + [""] + [f"_{n}_" for n in self.notes])

    def to_latex(self) -> str:
        esc = lambda s: str(s).replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&").replace("#", r"\#")
        lines = [r"\begin{table}[h]", r"\centering", rf"\caption{{{esc(self.title)}}}",
                 r"\begin{tabular}{" + "l" * len(self.columns) + "}", r"\hline",
                 " & ".join(esc(c) for c in self.columns) + r" \\", r"\hline"]
        lines += [" & ".join(esc(_fmt(v)) for v in row) + r" \\" for row in self.rows]
        lines += [r"\hline", r"\end{tabular}"] + [rf"\par\footnotesize {esc(n)}" for n in self.notes] + [r"\end{table}"]
        return "\n".join(lines)

    def render(self, fmt: str) -> str:
        return self.to_latex() if fmt == "latex" else self.to_markdown()


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def paper_numbers(path: Path = PAPER_NUMBERS) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _paper_row(table: dict, arm: str) -> dict:
    """The paper's row of ``arm``; a row's ``arm`` is one name or a list (a recipe and its variants)."""
    names = lambda r: r.get("arm") if isinstance(r.get("arm"), list) else [r.get("arm")]
    return next((r for r in table["rows"] if arm in names(r)), {})


def results_table(runs: dict[tuple[str, int], RunRecord], reference: dict[str, dict] | None = None) -> Table:
    """Every arm's numbers (whatever its scale measures): each metric's score (stats.score: the mean of the run's
    last score_last evaluations) where the run has one, else its final value; the scale's reference rows below."""
    keys: list[str] = []
    for r in runs.values():
        keys += [k for k in r.summary if k not in keys and k not in SKIP and not k.startswith(SKIP_PREFIXES)]
    t = Table("Every arm after the same number of generator steps",
              ["arm", "student steps", "generator steps", *keys, "run"])
    for (arm, steps), r in runs.items():
        t.rows.append([arm, steps, r.summary.get("generator_steps"), *(score(r.summary, k) for k in keys), r.path.name])
    for name, m in (reference or {}).items():
        t.rows.append([name, "–", "–", *(m.get(k) for k in keys), "–"])
    if runs:
        r = next(iter(runs.values()))
        fid = f", FID on {r.summary['fid_samples']} samples (clean-fid protocol, Inception 2015-12-05)" if "fid_samples" in r.summary else ""
        last = r.summary.get("score_last")
        scored = f"each metric the mean of the run's last {last} evaluations (its score)" if last else "final values"
        t.notes.append(f"scale {r.cfg.run.scale}, alpha {r.cfg.objective.alpha:g}{fid}; cheap metrics on the fixed "
                       f"evaluation noise, {scored}.")
    return t


def ablation_table(runs_dir: str | Path, scale: str, reference: dict[str, dict]) -> str:
    """``reference``: the scale's rows (commands/report.scale_reference)."""
    return results_table(require_runs(runs_dir, scale), reference).to_markdown()


def table2(runs, paper: dict) -> Table:
    p = paper["table2"]
    t = Table("Table 2 analogue: arms at 4 and 1 steps (paper: SDXL 4-step, COCO-10k)",
              ["arm", "student steps", "FID", "class adherence", "paper method", "paper FID", "paper CLIP x100"])
    for (arm, steps), r in runs.items():
        if arm not in REGISTRY:  # the Fig. 4a variants have their own table
            continue
        pr = _paper_row(p, arm) if steps == 4 else {}
        t.rows.append([arm, steps, r.summary.get("fid"), r.summary.get("class_adherence"),
                       pr.get("name"), pr.get("fid"), pr.get("clip_score")])
    t.notes += [p["source"] + "; their FID is on COCO-10k at 512 px, ours on this scale's test set: compare "
                "orderings, not values.", *p.get("notes", [])]
    return t


def table1(runs, paper: dict, reference: dict[str, dict] | None = None) -> Table:
    p = paper["table1"]
    t = Table("Table 1 analogue: re-noising schedules #1 to #4 (4-step students)",
              ["#", "arm", "FID", "class adherence", "hf excess", "saturated", "paper DPG", "paper HPSv2.1", "paper HPSv3"])
    teacher = _paper_row(p, "teacher")
    for name, m in (reference or {}).items():
        t.rows.append(["ref.", name, m.get("fid"), m.get("class_adherence"), m.get("hf_excess"), m.get("saturated"),
                       teacher.get("dpg"), teacher.get("hpsv21"), teacher.get("hpsv3")])
    for i, arm in enumerate(SCHEDULES, 1):
        r, pr = runs.get((arm, 4)), _paper_row(p, arm)
        s = r.summary if r else {}
        t.rows.append([i, arm, s.get("fid"), s.get("class_adherence"), s.get("hf_excess"), s.get("saturated"),
                       pr.get("dpg"), pr.get("hpsv21"), pr.get("hpsv3")])
    t.notes.append(p["source"] + " (Lumina-Image-2.0); no metric is shared, the paper's columns show its ordering.")
    return t


def _curve_points(r: RunRecord, key: str, points: int) -> list:
    c = r.curves
    if key not in c:
        return [None] * points
    idx = np.unique(np.linspace(0, len(c[key]) - 1, points).round().astype(int))
    vals = [float(c[key][i]) for i in idx]
    return vals + [None] * (points - len(vals))


def curve_table(title: str, arms: dict[str, str], runs, steps: int, keys: tuple[str, ...], points: int = 5,
                note: str = "") -> Table:
    """One row per (arm, metric): the metric at ``points`` evenly spaced evaluations, then the final FID."""
    any_run = next((runs[(a, steps)] for a in arms.values() if (a, steps) in runs), None)
    gsteps = _curve_points(any_run, "generator_steps", points) if any_run else [None] * points
    t = Table(title, ["role", "arm", "metric", *[f"g={int(g)}" if g is not None else "–" for g in gsteps], "final FID"])
    measured = [k for k in keys if any(k in r.curves for r in runs.values())]  # what this scale logs
    for role, arm in arms.items():
        r = runs.get((arm, steps))
        for key in measured:
            t.rows.append([role, arm, key, *(_curve_points(r, key, points) if r else [None] * points),
                           r.summary.get("fid") if r else None])
    if note:
        t.notes.append(note)
    return t


def fig4a(runs) -> Table:
    t = Table("Fig. 4a analogue: CA-only on restricted tau ranges",
              ["arm", "student steps", "tau_CA range", "out_std", "hf excess", "spectral centroid", "FID"])
    for (arm, steps), r in runs.items():
        if arm.startswith("ca_tau_"):
            tau = r.cfg.arm.tau_ca
            s = r.summary
            t.rows.append([arm, steps, f"[{tau.lo:g}, {tau.hi:g}]", s.get("out_std"), s.get("hf_excess"),
                           s.get("spectral_centroid"), s.get("fid")])
    if not t.rows:
        t.notes.append("no ca_tau_* runs yet: `make sweep SCALE=<scale> ARMS=ca_tau_0-0.05,ca_tau_0-0.1,"
                       "ca_tau_0-0.3,ca_tau_0-1,ca_tau_0.7-1`")
    return t


def _teacher_results(runs_dir: str | Path, scale: str, name: str) -> dict:
    """The teacher's own evaluation (make eval-coco / eval-hps without RUN writes it under runs/<scale>/teacher)."""
    path = Path(runs_dir) / scale / "teacher" / name / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def table2_text_to_image(runs, paper: dict, teacher: dict | None = None) -> Table:
    """Table 2 on a real model: make eval-coco's numbers (<run>/coco10k/results.json) beside the paper's."""
    p = paper["table2"]
    t = Table("Table 2: COCO-10k (make eval-coco), beside the paper's SDXL 4-step numbers",
              ["arm", "student steps", "protocol", "FID", "patch-FID", "CLIP x100", "HPSv2.1", *COLOUR_VS_TEACHER,
               "diversity (CLIP) vs teacher", "paper method", "paper FID", "paper CLIP x100", "paper HPSv2.1"])

    def row(name, steps, c: dict, pr: dict) -> list:
        return [name, steps, c.get("protocol"), c.get("fid"), c.get("patch_fid"), c.get("clip_score_x100"),
                c.get("hpsv21"), *(c.get(k) for k in COLOUR_VS_TEACHER.values()), c.get("diversity_clip_vs_teacher"),
                pr.get("name"), pr.get("fid"), pr.get("clip_score"), pr.get("hpsv21")]

    if teacher:
        t.rows.append(row("teacher", "–", teacher, {}))
    for (arm, steps), r in runs.items():
        t.rows.append(row(arm, steps, r.coco, _paper_row(p, arm) if steps == 4 else {}))
    t.notes += [p["source"] + ". Ours: make eval-coco RUN=<run> COCO=<DMD2's coco10k folder>; comparable with the paper "
                "only under protocol dmd2, SDXL, 4 steps. '–': not evaluated yet.",
                "vs teacher: the run's teacher (many-step CFG at the run's alpha) on the same prompts and noise; "
                "(x) ratios, 1 = as the teacher; a*, b*, clipped: differences, 0 = as the teacher.", *p.get("notes", [])]
    return t


def table1_text_to_image(runs, paper: dict, teacher: dict | None = None) -> Table:
    """Table 1 on a real model: make eval-hps's HPSv2.1 (<run>/hpsv21/results.json) per schedule, beside the paper's."""
    p = paper["table1"]
    t = Table("Table 1: re-noising schedules #1 to #4 (4-step students), HPSv2.1 (make eval-hps) beside the paper's",
              ["#", "arm", "HPSv2.1", *HPS_STYLES, *COLOUR_VS_TEACHER, "diversity (Inception) vs teacher",
               "sat. vs teacher (x), training eval", "paper DPG", "paper HPSv2.1", "paper HPSv3"])

    def row(num, name, h: dict, s: dict, pr: dict) -> list:
        return [num, name, h.get("hpsv21"), *(h.get(f"hpsv21_{st}") for st in HPS_STYLES),
                *(h.get(k) for k in COLOUR_VS_TEACHER.values()), h.get("diversity_inception_vs_teacher"),
                s.get("hsv_saturation_vs_teacher"), pr.get("dpg"), pr.get("hpsv21"), pr.get("hpsv3")]

    t.rows.append(row("ref.", "teacher", teacher or {}, {}, _paper_row(p, "teacher")))
    for i, arm in enumerate(SCHEDULES, 1):
        r = runs.get((arm, 4))
        t.rows.append(row(i, arm, r.hps if r else {}, r.summary if r else {}, _paper_row(p, arm)))
    t.notes += [p["source"] + " (Lumina-Image-2.0). Ours: make eval-hps RUN=<run> PROMPTS=<HPDv2 benchmark/ folder>; "
                "HPSv2.1 x100 as the hpsv2 package prints it. DPG-Bench needs a VQA model that cannot be downloaded "
                "here (make eval-dpg says so): no DPG column of ours.",
                "The paper finds #3 (decoupled-constrained) oversaturated: its saturation vs the teacher above #4's."]
    return t


def paper_tables(runs_dir: str | Path, scale: str, facts: ScaleFacts) -> list[Table]:
    """``facts``: what the scale says (commands/report.scale_facts): its reference rows, whether it is text-to-image."""
    runs = require_runs(runs_dir, scale)
    paper = paper_numbers()
    f = paper["findings"]
    if facts.text_to_image:
        tables = [results_table(runs, facts.reference),
                  table2_text_to_image(runs, paper, _teacher_results(runs_dir, scale, "coco10k")),
                  table1_text_to_image(runs, paper, _teacher_results(runs_dir, scale, "hpsv21"))]
    else:
        tables = [results_table(runs, facts.reference), table2(runs, paper), table1(runs, paper, facts.reference)]
    for steps in (4, 1):
        tables.append(curve_table(f"Fig. 2 analogue: CA vs CA+DM vs DM over training, {steps}-step", FIG2_ARMS, runs,
                                  steps, ("out_std", "hf_excess", "class_adherence"), note="Paper: " + f["fig2"]))
    tables.append(curve_table("Fig. 3 analogue: regularisers of CA, 4-step", REGULARISERS, runs, 4,
                              ("out_mean", "out_std"), note="Paper: " + f["fig3"]))
    tables.append(fig4a(runs))
    groups = seed_groups(finished_runs(runs_dir, scale))
    if any(len(g.runs) > 1 for g in groups):  # seeds were swept: their means and paired verdicts
        tables += [seeded_table(groups), comparison_table(claims(groups))]
    return tables


def seeded_table(groups, metrics: tuple[str, ...] = ("domain_fd", "class_adherence", "out_std", "saturated",
                                                    "hf_excess", "spectral_centroid", "fid")) -> Table:
    """Every group of runs (config without the seed): mean ± 95% Student-t half-width and n per metric."""
    metrics = tuple(m for m in metrics if any(g.values(m) for g in groups))
    t = Table("Every configuration over its seeds: mean ± 95% interval (n)", ["group", "student steps", "seeds", *metrics],
              seeded_rows(groups, metrics))
    common = sweep_settings(groups)
    if common:
        t.notes.append("Every row unless its label says otherwise: " + ", ".join(f"{k}={v}" for k, v in sorted(common.items()))
                       + " (differences from the scale's YAML); a label in [...] is what sets a row apart.")
    t.notes.append("Interval: Student-t over seeds (two-sided 95%); with n=3 its half-width is 2.48 standard deviations.")
    return t


def comparison_table(comparisons) -> Table:
    """The paired comparisons: a - b over common seeds, its interval and the verdict."""
    t = Table("Paired comparisons over common seeds (a - b; same teacher, evaluation noise and initial draws)",
              ["claim", "metric", "a", "b", "a - b", "verdict"])
    for c in comparisons:
        t.rows.append([c.claim, c.metric, str(c.a.estimate(c.metric)), str(c.b.estimate(c.metric)), str(c.diff), c.result])
    t.notes.append("holds / does not hold: the whole 95% interval of the paired difference lies on one side of 0; "
                   "inconclusive: it straddles 0. 'differs' (two-sided claims): the interval excludes 0.")
    return t


def render_tables(tables: list[Table], fmt: str = "markdown") -> str:
    return "\n\n".join(t.render(fmt) for t in tables)
