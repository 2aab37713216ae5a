"""Figures from run folders (matplotlib, no display needed): the report, the
notebooks and the W&B media all draw with these, so they agree."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure list; Jupyter shows Figures inline

from ddmd_lab.core.arms import REGISTRY
from ddmd_lab.report.run_record import RunRecord

CURVE_KEYS = ("out_std", "out_mean", "saturated", "hf_excess")
TITLES = {"out_std": "output std", "out_mean": "output mean", "saturated": "share of saturated pixels",
          "hf_excess": "high-frequency excess (log power vs real)", "class_adherence": "class adherence",
          "spectral_centroid": "spectral centroid", "domain_fd": "classifier Frechet distance"}


def save_figure(fig, path: Path | None):
    """Write ``fig`` to ``path`` (its folder made) at the report's resolution; None: keep it in memory (notebooks)."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def _arm_colour(arm: str, arms: list[str]):
    return colormaps["tab10"](arms.index(arm) % 10)


def variance_curves(runs: dict[tuple[str, int], RunRecord], path: Path | None = None, keys=CURVE_KEYS,
                    arms: list[str] | None = None):
    """Rows: student step counts; columns: output statistics over generator steps; one line per arm
    (default: the registry's arms; pass ``arms`` for others, e.g. the Fig. 4a variants)."""
    arms = arms or list(REGISTRY)
    runs = {k: r for k, r in runs.items() if k[0] in arms}
    steps = sorted({s for _, s in runs}, reverse=True)
    fig = Figure(figsize=(4 * len(keys), 3.2 * len(steps)))
    axes = fig.subplots(len(steps), len(keys), squeeze=False)
    for i, n in enumerate(steps):
        for j, key in enumerate(keys):
            ax = axes[i][j]
            for (arm, s), r in runs.items():
                if s != n or key not in r.curves:
                    continue
                ax.plot(r.curves["generator_steps"], r.curves[key], label=arm, color=_arm_colour(arm, arms), marker=".")
            vals = [v for (a, s), r in runs.items() if s == n and key in r.curves for v in r.curves[key] if np.isfinite(v)]
            if key == "out_std" and vals and min(vals) > 0 and max(vals) / min(vals) > 50:
                ax.set_yscale("log")  # a collapsing arm spans decades
            ax.set_title(f"{TITLES.get(key, key)}, {n}-step")
            ax.set_xlabel("generator steps")
            ax.grid(alpha=0.3)
    legend = {}
    for ax in axes.flat:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="upper center", ncol=min(len(legend), 8), bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout()
    return save_figure(fig, path)


def quality_bars(runs: dict[tuple[str, int], RunRecord], path: Path | None = None,
                 keys=("fid", "class_adherence"), reference: dict[str, dict] | None = None):
    """Final FID and class adherence per arm, one group per student step count; reference rows as lines."""
    keys = [k for k in keys if any(k in r.summary for r in runs.values())]
    arms = [a for a in REGISTRY if any(a == arm for arm, _ in runs)]
    steps = sorted({s for _, s in runs}, reverse=True)
    fig = Figure(figsize=(6 * len(keys), 3.6))
    axes = fig.subplots(1, len(keys), squeeze=False)
    width = 0.8 / max(len(steps), 1)
    for ax, key in zip(axes[0], keys):
        for k, n in enumerate(steps):
            vals = [runs[(a, n)].summary.get(key, np.nan) if (a, n) in runs else np.nan for a in arms]
            ax.bar(np.arange(len(arms)) + k * width, vals, width, label=f"{n}-step")
        for name, row in (reference or {}).items():
            if key in row:
                ax.axhline(row[key], color="k", ls="--", lw=1, label=name)
        ax.set_xticks(np.arange(len(arms)) + width * (len(steps) - 1) / 2, arms, rotation=35, ha="right")
        ax.set_title(TITLES.get(key, key.upper()))
        if key == "fid":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return save_figure(fig, path)


def term_spectra_plot(record: RunRecord, path: Path | None = None):
    """Heatmaps tau bin x frequency of the CA and DM vectors' power (each row normalised to its total,
    so a row shows where that tau's update puts its energy), and their spectral centroids against tau."""
    spec = record.term_spectra
    if spec is None:
        raise ValueError(f"{record.path} has no term_spectra.npz (make spectra RUN={record.path})")
    return spectra_by_tau(spec, f"{record.arm}, {record.student_steps}-step: where CA and DM act", path)


def spectra_by_tau(spec: dict, title: str, path: Path | None = None):
    """``spec``: term_spectra's arrays (bins, ca, dm, *_centroid); DM may be empty (a teacher alone)."""
    bins = spec["bins"]
    terms = [k for k in ("ca", "dm") if k in spec and spec[k].size]
    fig = Figure(figsize=(4.5 * (len(terms) + 1), 3.4))
    axes = fig.subplots(1, len(terms) + 1)
    for ax, term in zip(axes, terms):
        share = spec[term] / spec[term].sum(axis=1, keepdims=True)
        floor = share[share > 0].min() if (share > 0).any() else 1e-12  # the mean-free DC bin is exactly 0
        im = ax.imshow(np.log10(np.maximum(share, floor)), aspect="auto", origin="lower", cmap="magma")
        ax.set_yticks(range(len(bins)), [f"{lo:g}-{hi:g}" for lo, hi in bins], fontsize=7)
        ax.set_ylabel("tau bin (0 = noise, 1 = clean)")
        ax.set_xlabel("radial frequency (cycles per image)")
        ax.set_title(f"{term.upper()} vector: log10 share of power")
        fig.colorbar(im, ax=ax)
    ax = axes[-1]
    for term in terms:
        ax.plot(bins.mean(axis=1), spec[f"{term}_centroid"], marker="o", label=term.upper())
    ax.set_xlabel("tau (0 = noise, 1 = clean)")
    ax.set_title("spectral centroid")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def output_spectra_heatmap(record: RunRecord, path: Path | None = None):
    """log10(generated / real) power per frequency over training: the high-frequency excess growing."""
    spec = record.output_spectra
    if spec is None:
        raise ValueError(f"{record.path} has no spectra.npz")
    ratio = np.log10(np.maximum(spec["generated"], 1e-20) / np.maximum(spec["real"], 1e-20))
    fig = Figure(figsize=(5.5, 3.4))
    ax = fig.subplots()
    lim = max(np.abs(ratio).max(), 1e-3)
    im = ax.imshow(ratio, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower",
                   extent=(-0.5, ratio.shape[1] - 0.5, -0.5, ratio.shape[0] - 0.5))
    ax.set_yticks(range(len(spec["steps"])), [str(int(s)) for s in spec["steps"]], fontsize=6)
    ax.set_ylabel("step")
    ax.set_xlabel("radial frequency")
    ax.set_title(f"{record.arm}, {record.student_steps}-step: log10 power / real")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return save_figure(fig, path)


def observer_bars(records: list[RunRecord], path: Path | None = None):
    """High-frequency excess of the generator's samples and of the teacher's / fake's x0 from them."""
    records = [r for r in records if r.observer]
    parts = ("generator_hf_excess", "teacher_x0_hf_excess", "fake_x0_hf_excess")
    fig = Figure(figsize=(1.8 + 1.6 * len(records), 3.4))
    ax = fig.subplots()
    width = 0.8 / len(parts)
    for k, part in enumerate(parts):
        ax.bar(np.arange(len(records)) + k * width, [r.observer[part] for r in records], width,
               label=part.replace("_hf_excess", "").replace("_", " "))
    ax.set_xticks(np.arange(len(records)) + width, [f"{r.arm}\n{r.student_steps}-step" for r in records], fontsize=7)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("high-frequency excess vs real")
    ax.set_title("observer test")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def run_figures(record: RunRecord) -> dict[str, str]:
    """The PNGs every finished image run keeps in its folder: name -> file name."""
    out = {}
    if record.term_spectra is not None:
        term_spectra_plot(record, record.path / "term_spectra.png")
        out["term_spectra"] = "term_spectra.png"
    if record.output_spectra is not None:
        output_spectra_heatmap(record, record.path / "output_spectra.png")
        out["output_spectra"] = "output_spectra.png"
    return out


def seeded_bars(groups, path: Path | None = None, metrics=("domain_fd", "class_adherence", "out_std")):
    """Each group's mean with its 95% interval, and every seed as a dot (groups with 2+ seeds)."""
    groups = sorted([g for g in groups if len(g.runs) > 1], key=lambda g: (-g.student_steps, g.arm, g.name))
    metrics = [m for m in metrics if any(g.values(m) for g in groups)]
    if not groups or not metrics:
        raise ValueError("no configuration was run with two or more seeds")
    fig = Figure(figsize=(5 * len(metrics), 0.32 * len(groups) + 1.5))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    names = [f"{g.name}, {g.student_steps}-step" for g in groups]
    for ax, m in zip(axes, metrics):
        for i, g in enumerate(groups):
            e = g.estimate(m)
            if e.n >= 2:
                ax.errorbar(e.mean, i, xerr=[[e.mean - e.lo], [e.hi - e.mean]], fmt="o", color="k", capsize=3)
            ax.scatter(list(g.values(m).values()), [i] * len(g.values(m)), s=12, color="tab:blue", alpha=0.6, zorder=3)
        ax.set_yticks(range(len(groups)), names if ax is axes[0] else [""] * len(groups))
        ax.invert_yaxis()
        ax.set_title(f"{TITLES.get(m, m)} (mean, 95% interval, seeds)")
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return save_figure(fig, path)


def convergence(groups, path: Path | None = None, keys=("domain_fd", "class_adherence", "out_std")):
    """Metrics over generator steps of the longest runs (one line per run), with the seeded groups'
    mean curves of the same arms for comparison: where do the arms plateau?"""
    longest = max((r.cfg.schedule.steps for g in groups for r in g.runs.values()), default=0)
    long_runs = [(g, r) for g in groups for r in g.runs.values() if r.cfg.schedule.steps == longest and "generator_steps" in r.curves]
    if not long_runs or all(r.cfg.schedule.steps == longest for g in groups for r in g.runs.values()):
        raise ValueError("no run longer than the sweep's length")
    arms = sorted({g.arm for g, _ in long_runs})
    fig = Figure(figsize=(4.5 * len(keys), 3.4))
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        for g, r in long_runs:
            if key in r.curves:
                ax.plot(r.curves["generator_steps"], r.curves[key], marker=".", color=_arm_colour(g.arm, arms),
                        label=f"{g.name} (seed {r.cfg.run.seed})")
        for g in groups:  # the seeded groups of the same arms, at their own (shorter) length
            if g.arm in arms and len(g.runs) > 1 and not g.label:
                curves = [r.curves[key] for r in g.runs.values() if key in r.curves]
                n = min(map(len, curves), default=0)
                if n:
                    ax.plot(next(iter(g.runs.values())).curves["generator_steps"][:n], np.mean([c[:n] for c in curves], axis=0),
                            ls="--", color=_arm_colour(g.arm, arms), label=f"{g.name}, mean of {len(curves)} seeds")
        ax.set_title(TITLES.get(key, key))
        ax.set_xlabel("generator steps")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout()
    return save_figure(fig, path)
