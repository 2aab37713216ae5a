"""Issue 22, item 1: what quiets a fashion run -- the generator's weight average, a lower generator
learning rate?  For every group of #4 decoupled_hybrid and #1 coupled runs under <runs>/fashion (a group:
one config, its seeds), per seed: the student's score (the EMA's mean over the last score_last
evaluations), the raw generator's score, and the spread (sd) of those last evaluations within the run,
for the EMA and the raw generator; per setting: the paired #4 - #1 differences over the seeds both arms
have and their sd, which sets how many seeds a claim needs (report/claims.seeds_needed).

    .venv/bin/python analysis/quieter_runs.py [--runs runs] [--metric domain_fd] [--out reports/fashion/quieter_runs.md]
"""
from __future__ import annotations

import argparse
import statistics
from datetime import datetime, timezone
from pathlib import Path

from ddmd_lab.report.claims import seeds_needed
from ddmd_lab.report.runs import finished_runs
from ddmd_lab.report.seeded import seed_groups

ARMS = ("decoupled_hybrid", "coupled")


def within_run_sd(record, metric: str) -> float:
    """sd of the run's last score_last evaluations of ``metric`` (its oscillation around its score)."""
    k = int(record.summary.get("score_last", 3))
    values = [float(v) for v in record.curves[metric][-k:]]
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def setting_name(group) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(group.label.items())) or "the scale's defaults"


def lines(runs_dir: str, metric: str) -> list[str]:
    groups = [g for g in seed_groups(finished_runs(runs_dir, "fashion")) if g.arm in ARMS and g.student_steps == 4]
    out = [f"| setting | arm | seed | EMA score | raw score | within-run sd, EMA | within-run sd, raw |",
           "|---|---|---|---|---|---|---|"]
    for g in sorted(groups, key=lambda g: (setting_name(g), g.arm)):
        for seed, r in sorted(g.runs.items()):
            s = r.summary["scores"]
            out.append(f"| {setting_name(g)} | {g.arm} | {seed} | {s[metric]:.1f} | {s['raw_' + metric]:.1f} | "
                       f"{within_run_sd(r, metric):.1f} | {within_run_sd(r, 'raw_' + metric):.1f} |")
    out += ["", "| setting | seeds | #4 - #1, EMA scores | paired sd | seeds for a 3-unit effect (80%, 0.05 two-sided) |",
            "|---|---|---|---|---|"]
    settings = sorted({setting_name(g) for g in groups})
    for name in settings:
        pair = {g.arm: g for g in groups if setting_name(g) == name}
        if len(pair) < 2:
            continue
        a, b = pair["decoupled_hybrid"].values(metric), pair["coupled"].values(metric)
        seeds = sorted(set(a) & set(b))
        diffs = [a[s] - b[s] for s in seeds]
        sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
        need = (seeds_needed(sd, 3.0, 0.05) or "> 1000") if len(diffs) > 1 else "-"
        out.append(f"| {name} | {','.join(map(str, seeds))} | {', '.join(f'{d:+.1f}' for d in diffs)} | {sd:.1f} | {need} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs")
    p.add_argument("--metric", default="domain_fd")
    p.add_argument("--out", default="")
    args = p.parse_args()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join([f"# What quiets a fashion run ({args.metric})", "",
                      f"Generated {when} by `.venv/bin/python analysis/quieter_runs.py` from the finished fashion "
                      f"runs of {', '.join(ARMS)} under `{args.runs}/`.", "", *lines(args.runs, args.metric), ""])
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
