"""``make teacher / classifier / ablation / sweep``: train a scale's teacher or classifier, distil with an arm."""
from __future__ import annotations

from ddmd_lab.commands.common import DEFAULT_ARM, add_run_options, config_from_args
from ddmd_lab.commands.power import claim_power, claim_runs
from ddmd_lab.config import RunSettings, known_arm_names, parse_overrides
from ddmd_lab.errors import UserError
from ddmd_lab.scales.base import get_scale


def cmd_teacher(args) -> None:
    cfg = config_from_args(args, "decoupled_hybrid")
    scale = get_scale(cfg.run.scale)
    folder = scale.teacher_dir(cfg)
    if scale.teacher_cached(cfg) and not args.retrain:
        print(f"teacher cached at {folder} (use --retrain to train again)")
    else:
        from ddmd_lab.training.networks import retrain_teacher  # deferred: Lightning

        folder = retrain_teacher(cfg)
        print(f"teacher trained and saved to {folder}")
    report = folder / "teacher.json"
    if not report.is_file():  # the process that trained it stopped before its report
        scale.write_teacher_report(cfg)
    print(report.read_text())


def cmd_classifier(args) -> None:
    cfg = config_from_args(args, DEFAULT_ARM)
    from ddmd_lab.training.networks import ensure_classifier  # deferred: Lightning

    print((ensure_classifier(cfg) / "classifier.json").read_text())


def cmd_ablation(args) -> None:
    from ddmd_lab.training.run import print_summary, resume_ablation, run_ablation  # deferred: Lightning

    if not args.resume:
        print_summary(run_ablation(config_from_args(args, args.arm or DEFAULT_ARM)))
        return
    if args.overrides or args.steps is not None or args.seed is not None:
        raise UserError("RESUME continues a run exactly as configured; drop STEPS, SEED and SET, or start a new run.")
    target = args.resume
    if target == "auto":
        from ddmd_lab.training.checkpointing import latest_unfinished_run  # deferred: Lightning

        target = str(latest_unfinished_run(RunSettings.runs_dir, args.scale or "toy2d", args.arm or DEFAULT_ARM))
    print_summary(resume_ablation(target, args.scale, args.arm))


def cmd_sweep(args) -> None:
    from ddmd_lab.training.run import print_summary, run_ablation  # deferred: Lightning

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else []
    except ValueError:
        raise UserError(f"SEEDS={args.seeds!r} is not a comma-separated list of integers, e.g. SEEDS=0,1,2.") from None
    if args.claim:
        runs = _claim_sweep(args, seeds)
    else:
        arms = args.arms.split(",") if args.arms else known_arm_names()
        configs = [config_from_args(args, a) for a in arms]  # validate every arm before the first run starts
        # seed-major: every arm of seed 0 first, so a sweep stopped early still holds paired comparisons
        runs = [cfg.replace(seed=s) for s in seeds for cfg in configs] if seeds else configs
    for cfg in runs:
        print(f"\n=== {cfg.arm.name} (seed {cfg.run.seed}) ===")
        print_summary(run_ablation(cfg))


def _claim_sweep(args, seeds: list[int]) -> list:
    """The runs a claim of analysis/claims.yaml still needs: its terms' arms and settings, for SEEDS or,
    without them, for the seeds its power analysis asks (make power CLAIM=...)."""
    if args.arms or args.scale:
        raise UserError("CLAIM names its arms and scale (analysis/claims.yaml); drop ARMS / SCALE.")
    runs_dir = parse_overrides(args.overrides).pop("runs_dir", RunSettings.runs_dir)
    if not seeds:  # the most any of the claims asks for
        n = 0
        for name in args.claim.split(","):
            lines, need = claim_power(name, runs_dir)
            print("\n".join(lines))
            if need is None:
                raise UserError(f"claim {name!r} has no pilot to size it from; run a pilot first: "
                                f"make sweep CLAIM={name} SEEDS=0,1,2")
            n = max(n, need)
        seeds = list(range(n))
    extra = {k: v for k, v in parse_overrides(args.overrides).items() if k != "runs_dir"}
    if args.seed is not None:
        raise UserError("CLAIM runs its seeds from SEEDS (or its power analysis); drop SEED.")
    runs = claim_runs(args.claim.split(","), runs_dir, seeds, args.steps, extra)
    print(f"claim {args.claim}: {len(runs)} run(s) to make for seeds {seeds[0]}..{seeds[-1]}")
    return runs


def register(sub) -> None:
    p = sub.add_parser("teacher", help="train (or show the cached) teacher of a scale")
    add_run_options(p)
    p.add_argument("--retrain", action="store_true")
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("classifier", help="train (or show the cached) classifier of an image scale")
    add_run_options(p)
    p.set_defaults(func=cmd_classifier)

    p = sub.add_parser("ablation", help="distil with one arm into a new run folder")
    p.add_argument("--arm", default=None, help=f"arm name (default {DEFAULT_ARM})")
    add_run_options(p)
    p.add_argument("--resume", help="a run folder or .ckpt to continue, or 'auto' for the newest interrupted run of the arm")
    p.set_defaults(func=cmd_ablation)

    p = sub.add_parser("sweep", help="run every known arm, registry and experiments/arms/ variants (or --arms a,b,c)")
    p.add_argument("--arms", default="")
    p.add_argument("--seeds", default="", help="comma-separated seeds, each arm run once per seed (paired across arms)")
    p.add_argument("--claim", default="", help="claims of analysis/claims.yaml (comma-separated): run their terms for "
                   "SEEDS, or for the seeds their power analysis asks (the runs they already have are kept)")
    add_run_options(p)
    p.set_defaults(func=cmd_sweep)
