"""The CA-vs-DM diagnostics of several runs (e.g. coupled vs decoupled_hybrid) per tau bin: one figure, one
table, and the report section holding both.

Read from a run's ``diagnostics.json`` (``make diagnose RUN=...``: the final generator on many samples), else
from the last ``LAST_STEPS`` diagnostic steps of its ``diagnostics.csv`` (written during training), pooled
with their counts.  Nothing is computed from networks here.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from ddmd_lab.config import read_config
from ddmd_lab.method.tau_bins import BINNINGS, Binned, overall
from ddmd_lab.report.run_record import RunRecord

LAST_STEPS = 5
COMPARED = ("coupled", "decoupled_hybrid")  # the report's default pair: schedule #1 vs #4
# (title, [(quantity or "count", binning tau, line style)], log y)
PANELS = (
    ("cos(CA, DM) at their own taus (by tau_DM)", [("cos_ca_dm_own", "tau_dm", "-")], False),
    ("cos(CA, DM) at one shared tau", [("cos_ca_dm_shared", "tau_shared", "-")], False),
    ("|CA| / |DM| normalised: own (by tau_DM) -, shared --", [("ratio_ca_dm", "tau_dm", "-"),
                                                             ("ratio_ca_dm_shared", "tau_shared", "--")], True),
    ("share of the update: CA (by tau_CA) -, DM (by tau_DM) --", [("share_ca", "tau_ca", "-"),
                                                                  ("share_dm", "tau_dm", "--")], False),
    ("normaliser: CA (by tau_CA) -, DM (by tau_DM) --", [("normaliser_ca", "tau_ca", "-"),
                                                        ("normaliser_dm", "tau_dm", "--")], True),
    ("|term| normalised: CA (by tau_CA) -, DM (by tau_DM) --", [("update_norm_ca", "tau_ca", "-"),
                                                                ("update_norm_dm", "tau_dm", "--")], True),
    ("tau_CA histogram (share of samples)", [("count", "tau_ca", "-")], False),
    ("tau_DM histogram (share of samples)", [("count", "tau_dm", "-")], False),
)


def _nan(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def load_diagnostics(run_dir: str | Path, last_steps: int = LAST_STEPS) -> dict | None:
    """{"source", "samples", "bins": {binning tau: Binned}} of a run, or None where it has no diagnostics."""
    run_dir = Path(run_dir)
    path = run_dir / "diagnostics.json"
    if path.is_file():
        record = json.loads(path.read_text())
        bins = {by: Binned.from_means(d["edges"], d["count"], {q: _nan(m) for q, m in d["mean"].items()},
                                      {q: _nan(n) for q, n in d["n"].items()})
                for by, d in record["bins"].items()}
        return {"source": f"diagnostics.json ({record.get('checkpoint', 'checkpoint')})", "samples": record["samples"],
                "bins": bins}
    path = run_dir / "diagnostics.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    steps = sorted({int(r["step"]) for r in rows})[-last_steps:]
    if not steps:
        return None
    bins: dict[str, Binned] = {}
    for step in steps:
        for by, names in BINNINGS.items():
            mine = sorted((r for r in rows if int(r["step"]) == step and r["by"] == by), key=lambda r: int(r["bin"]))
            if not mine:
                continue
            edges = [float(r["tau_lo"]) for r in mine] + [float(mine[-1]["tau_hi"])]
            one = Binned.from_means(edges, [float(r["count"]) for r in mine],
                                    {q: np.array([float(r[q]) if r[q] else np.nan for r in mine]) for q in names})
            bins[by] = bins[by] + one if by in bins else one
    first = bins.get("tau_dm", bins.get("tau_ca"))
    return {"source": f"diagnostics.csv (last {len(steps)} diagnostic steps, to step {steps[-1]})",
            "samples": int(first.count.sum()) if first is not None else 0, "bins": bins}


def _records(runs) -> list[RunRecord]:
    items = runs.values() if isinstance(runs, dict) else runs
    return [r if isinstance(r, RunRecord) else RunRecord(Path(r), read_config(Path(r) / "config.yaml")) for r in items]


def _labels(records: list[RunRecord]) -> list[str]:
    labels = []
    for r in records:
        c = r.cfg
        labels.append(f"{c.arm.name}, {c.student.student_steps}-step" + (f", {c.arm.normaliser}" if c.arm.normaliser != "shared" else ""))
    return [f"{lab} ({r.path.name})" if labels.count(lab) > 1 else lab for lab, r in zip(labels, records)]


def with_diagnostics(runs) -> list[tuple[str, RunRecord, dict]]:
    records = _records(runs)
    return [(lab, r, d) for lab, r in zip(_labels(records), records) if (d := load_diagnostics(r.path)) is not None]


def diagnostics_figure(runs, path: Path | None = None) -> Figure:
    """The per-bin curves of ``runs`` (a report's {(arm, steps): RunRecord}, RunRecords or run folders): cosines at
    own and shared taus, |CA| / |DM|, shares of the update, normalisers, term sizes, tau histograms.  ValueError
    where no run has diagnostics."""
    found = with_diagnostics(runs)
    if not found:
        raise ValueError("no run has diagnostics.csv or diagnostics.json (runs with diagnostics_every > 0 write the "
                         "first; make diagnose RUN=<run> the second)")
    fig = Figure(figsize=(17, 7.5))
    axes = fig.subplots(2, 4).flat
    for ax, (title, lines, log) in zip(axes, PANELS):
        for i, (label, _, d) in enumerate(found):
            colour = colormaps["tab10"](i % 10)
            for q, by, style in lines:
                b = d["bins"].get(by)
                if b is None:
                    continue
                mids = (b.edges[:-1] + b.edges[1:]) / 2
                y = b.count / max(b.count.sum(), 1.0) if q == "count" else b.mean(q)
                if q == "count":
                    ax.step(b.edges, np.append(y, y[-1]), where="post", color=colour, label=label)
                elif np.isfinite(y).any():
                    ax.plot(mids, y, style, marker=".", color=colour, label=label if style == "-" else None)
        if any(q == "count" for q, _, _ in lines):
            ax.set_ylim(bottom=0)
        if log and any(np.nanmin(line.get_ydata()) > 0 for line in ax.get_lines()):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("tau (bin)")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
    legend = {}
    for ax in fig.axes:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="upper center", ncol=min(len(legend), 6),
                   bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


COLUMNS = (("cos_ca_dm_own", "cos own"), ("cos_ca_dm_shared", "cos shared"), ("ratio_ca_dm", r"\|CA\|/\|DM\| own"),
           ("ratio_ca_dm_shared", r"\|CA\|/\|DM\| shared"), ("share_ca", "share CA"), ("share_dm", "share DM"),
           ("normaliser_ca", "normaliser CA"), ("normaliser_dm", "normaliser DM"))


def diagnostics_table(runs) -> str:
    """Markdown: each run's means over all samples (per-sample means: a ratio's mean, not the ratio of means)."""
    found = with_diagnostics(runs)
    head = "| run | from | samples | " + " | ".join(name for _, name in COLUMNS) + " |"
    out = [head, "|" + "---|" * (3 + len(COLUMNS))]
    for label, _, d in found:
        means = overall(d["bins"])
        cells = [f"{means[q]:.3g}" if np.isfinite(means.get(q, np.nan)) else "--" for q, _ in COLUMNS]
        out.append(f"| {label} | {d['source']} | {d['samples']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def diagnostics_section(runs, folder: Path, name: str = "diagnostics.png", arms: tuple | None = COMPARED) -> list[str]:
    """The report's lines (heading, figure written to ``folder / name``, table) for the runs of ``arms`` (None: all
    of ``runs``); [] where none of them has diagnostics."""
    runs = [r for r in _records(runs) if arms is None or r.cfg.arm.name in arms]
    if not with_diagnostics(runs):
        return []
    diagnostics_figure(runs, Path(folder) / name)
    return ["### Why a schedule wins or loses: CA vs DM per tau bin", "",
            "Per tau bin, for each run: the cosine between the CA and DM terms at their own taus (binned by tau_DM) and "
            "at one shared tau, |CA| / |DM| after normalisation, each term's share of the update "
            "(<term, update> / |update|^2, the two sum to 1), the normalisers, the terms' sizes and the taus' "
            "histograms (`make diagnose RUN=<run>`, else the run's last diagnostic steps).", "",
            f"![CA vs DM diagnostics per tau bin]({name})", "", diagnostics_table(runs), ""]
