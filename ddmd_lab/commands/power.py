"""``make power CLAIM=<name>`` and ``make sweep CLAIM=<name>``: how many seeds a claim fixed in advance
(analysis/claims.yaml) needs, from its pilot runs, and the runs that give it them."""
from __future__ import annotations

from pathlib import Path

from ddmd_lab.config import RunSettings, load_config, parse_overrides
from ddmd_lab.errors import UserError
from ddmd_lab.report.claims import CLAIMS_FILE, Claim, load_claims, power_lines, term_group
from ddmd_lab.report.runs import finished_runs
from ddmd_lab.report.seeded import seed_groups

MIN_SEEDS = 10  # the floor per primary claim, whatever a pilot's sd suggests


def find_claim(name: str, path: str | Path = CLAIMS_FILE) -> tuple[Claim, list[Claim]]:
    claims = load_claims(path)
    for c in claims:
        if c.name == name:
            return c, claims
    raise UserError(f"no claim {name!r} in {path}; known: {', '.join(c.name for c in claims)}.")


def claim_power(name: str, runs_dir: str | Path, path: str | Path = CLAIMS_FILE) -> tuple[list[str], int | None]:
    """The power analysis' lines and the seed count it asks for (None without enough pilot runs)."""
    claim, claims = find_claim(name, path)
    lines = power_lines(seed_groups(finished_runs(runs_dir, claim.scale)), claim, claims)
    n = next((int(line[2:]) for line in lines if line.startswith("n=")), None)
    return lines, n


def claim_runs(names: list[str], runs_dir: str | Path, seeds: list[int], steps: int | None = None,
               extra: dict | None = None, path: str | Path = CLAIMS_FILE) -> list:
    """The configs of the claims' terms for ``seeds`` that have no finished run yet, each once (claims
    may share a term), seed-major, so a sweep cut short still holds paired seeds."""
    claims = [find_claim(name, path)[0] for name in names]
    groups = {c.scale: seed_groups(finished_runs(runs_dir, c.scale)) for c in claims}
    out, seen = [], set()
    for seed in seeds:
        for claim, term in ((c, t) for c in claims for t in c.terms):
            key = (claim.scale, term.arm, term.student_steps, term.settings)
            if (key, seed) in seen:
                continue
            seen.add((key, seed))
            g = term_group(groups[claim.scale], term)
            if g is not None and seed in g.runs:
                continue
            # dotted keys (arm.normaliser, teacher.kind) nest as SET= would nest them
            overrides = {**parse_overrides([f"{k}={v}" for k, v in term.settings]), **(extra or {}), "seed": seed,
                         "runs_dir": str(runs_dir)}
            if steps is not None:
                overrides["steps"] = steps
            cfg = load_config(claim.scale, term.arm, overrides)
            if cfg.student.student_steps != term.student_steps:
                raise UserError(f"claim {claim.name!r}: arm {term.arm} runs {cfg.student.student_steps}-step, the claim says "
                                f"{term.student_steps}; fix analysis/claims.yaml.")
            out.append(cfg)
    return out


def cmd_power(args) -> None:
    lines, _ = claim_power(args.claim, args.runs_dir, args.claims_file)
    print("\n".join(lines))


def register(sub) -> None:
    p = sub.add_parser("power", help="seeds a claim of analysis/claims.yaml needs, from its pilot runs")
    p.add_argument("--claim", required=True)
    p.add_argument("--runs-dir", default=RunSettings.runs_dir)
    p.add_argument("--claims-file", default=str(CLAIMS_FILE))
    p.set_defaults(func=cmd_power)
