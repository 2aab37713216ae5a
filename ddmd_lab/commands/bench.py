"""``make bench``: a step's time against the network evaluations it must make.

The floor of one training step is the sum of its network evaluations (see
ARCHITECTURE.md's cost table), each timed at the same batch size, in the same
process, just before the steps are timed (both by training/bench_fit.py).  The
ratio step / floor is the harness's overhead: optimiser updates, the math,
Lightning's loop.
"""
from __future__ import annotations

import logging
import resource
import tempfile

import torch

from ddmd_lab.commands.common import add_run_options, config_from_args
from ddmd_lab.core.arms import REGISTRY
from ddmd_lab.data.steps import condition_of, real_data_of
from ddmd_lab.scales.base import TEXT_TO_IMAGE, get_scale


def step_floor(arm, cost: dict[str, float], ttur: int, student_steps: int) -> float:
    """Mean seconds of network evaluation per training step for this arm."""
    backsim = (student_steps - 1) / 2 * cost["fwd1"]  # k ~ U{0..N-1} no-grad generator calls
    teacher_queries = (2 if arm.shared_draw else 3) if (arm.uses_ca and arm.uses_dm) else (2 if arm.uses_ca else 1)
    gen_step = backsim + cost["fwd_bwd"] + cost[f"fwd{teacher_queries}"] + (cost["fwd1"] if arm.uses_dm else 0.0)
    critic_only = (backsim + cost["fwd1"] + cost["fwd_bwd"]) if arm.train_fake else 0.0
    critic_on_gen_step = cost["fwd_bwd"] if arm.train_fake else 0.0
    # GAN: the generator's loss reads the fake's features of its sample; the discriminator
    # step reads them for the sample and a real batch in one call (all with gradients)
    gen_step += cost.get("features_fwd_bwd", 0.0) if arm.gan_weight else 0.0
    gan_critic = cost.get("features2_fwd_bwd", 0.0) if arm.gan_disc_weight else 0.0
    critic_only += gan_critic
    critic_on_gen_step += gan_critic
    return (gen_step + critic_on_gen_step + (ttur - 1) * critic_only) / ttur


def main(args) -> None:
    from ddmd_lab.training.bench_fit import bench_arm, evaluation_costs, median_time, precision_context  # deferred: Lightning

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)  # keep the table readable
    run_cfg = config_from_args(args, "decoupled_hybrid").replace(wandb="disabled", progress_bar=False)
    steps = args.steps or 20 * run_cfg.schedule.ttur
    base = run_cfg.replace(steps=steps)
    scale = get_scale(base.run.scale)
    teacher = scale.load_teacher(base)
    loader = scale.condition_loader(base)
    cond = condition_of(next(iter(loader)))
    torch.manual_seed(0)
    with precision_context(base, next(teacher.parameters()).device):  # each evaluation as the run makes it
        cost = evaluation_costs(teacher, cond, base.schedule.batch_size, args.repeats)
    print(f"scale {base.run.scale}, batch {base.schedule.batch_size}, {base.student.student_steps}-step student, "
          f"ttur {base.schedule.ttur}, precision {base.parallel.precision}, "
          f"{steps} steps per arm, torch threads {torch.get_num_threads()}")
    print("network evaluations (median ms): " + ", ".join(f"{k} {v * 1e3:.3f}" for k, v in cost.items()))
    print(f"host reads / step: ddmd_lab's own .item() / bool() / ... per step, logging every {base.evaluation.log_every} steps")
    print("| arm | steps/s | generator steps/s | step ms | floor ms | step / floor | host reads / step |")
    print("|---|---|---|---|---|---|---|")
    plain = {}
    for name, arm in REGISTRY.items():
        if args.arms and name not in args.arms.split(","):
            continue
        if arm.gan_weight and real_data_of(next(iter(loader))) is None:
            continue
        cfg = base.replace(arm=arm)
        step, reads = bench_arm(teacher, cfg, loader, warmup=base.schedule.ttur)
        plain[name] = step
        floor = step_floor(arm, cost, cfg.schedule.ttur, cfg.student.student_steps)
        print(f"| {name} | {1 / step:.1f} | {1 / step / cfg.schedule.ttur:.1f} | {step * 1e3:.2f} | {floor * 1e3:.2f} | "
              f"{step / floor:.2f} | {reads:.2f} |")
    diagnostics_overhead(teacher, base, loader, plain, cost)
    if len(teacher.sample_shape) == 3:  # image scales: the Inception network's throughput
        from ddmd_lab.eval.fid import InceptionFeatures  # deferred: scipy and the Inception network

        images = torch.rand(128, *teacher.sample_shape) * 2 - 1
        inception = InceptionFeatures()
        seconds = median_time(lambda: inception.of_images(images), max(1, args.repeats // 10))
        print(f"Inception features (clean-fid resize + network): {len(images) / seconds:.1f} images/s")
    if base.run.scale not in TEXT_TO_IMAGE and not args.no_whole_run:  # a whole run fits this machine's time
        whole_run(run_cfg, cost)
    print(f"peak memory: {peak_memory_mb():.0f} MB ({'CUDA allocated' if torch.cuda.is_available() else 'process RSS'})")


def whole_run(cfg, cost: dict[str, float]) -> None:
    """One whole run of the scale as `make ablation` starts it (its YAML's steps, evaluations, checkpoints and
    end-of-run spectra; no end-of-run Inception FID, whose cost the Inception line above gives): its wall
    time per 100 generator steps, beside the network floor of its training steps."""
    from ddmd_lab.training.bench_fit import timed_run  # deferred: Lightning

    cfg = cfg.replace(fid_samples=0)
    phases = timed_run(cfg)
    per100 = 100 / cfg.schedule.generator_steps
    floor = cfg.schedule.steps * step_floor(cfg.arm, cost, cfg.schedule.ttur, cfg.student.student_steps)
    print(f"whole run: {cfg.arm.name}, {cfg.schedule.steps} steps ({cfg.schedule.generator_steps} generator steps), "
          f"evaluation every {cfg.evaluation.eval_every} steps of {cfg.evaluation.eval_samples} samples, "
          f"fid_samples=0, torch threads {torch.get_num_threads()}")
    print("| per 100 generator steps | wall s | training steps s | steps' network floor s | steps / floor | "
          "between steps (evaluation, checkpoints) s | set-up s | end of run s | wall / floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {cfg.run.scale} | {phases.total * per100:.1f} | {phases.steps * per100:.1f} | {floor * per100:.1f} | "
          f"{phases.steps / floor:.2f} | {phases.between * per100:.1f} | {phases.setup * per100:.1f} | "
          f"{phases.end * per100:.1f} | {phases.total / floor:.2f} |")


def diagnostics_overhead(teacher, base, loader, plain: dict[str, float], cost: dict[str, float]) -> None:
    """What the training diagnostics cost (eval/diagnostics_callback.py): each two-term arm timed again with
    every generator step diagnosed (diagnostics_every = 1, rows written to a scratch folder) and once more
    without; the extra time per diagnosed generator step, and its share of a run at the configured
    diagnostics_every.  Beside it, the network floor of that extra time: an arm with its own draws per term
    evaluates both terms once more at one common draw (a batched CFG teacher call and a fake call,
    diagnostics.measure); a shared-draw arm reuses its own terms (no network call).  On a shared machine
    the measured difference is noisy (two runs' timings); the floor is not."""
    from ddmd_lab.training.bench_fit import bench_arm  # deferred: Lightning
    from ddmd_lab.training.callbacks.diagnostics import DiagnosticsCallback  # deferred: Lightning

    every = base.evaluation.diagnostics_every or 10
    print(f"diagnostics: every generator step diagnosed vs none; a run diagnoses every {every}th generator step")
    print("| arm | step ms, none | step ms, every generator step | extra ms per diagnosed generator step | "
          f"overhead of a run at diagnostics_every={every} | extra's network floor ms | floor's share of a run |")
    print("|---|---|---|---|---|---|---|")
    for name, off in plain.items():
        arm = REGISTRY[name]
        if not (arm.uses_ca and arm.uses_dm):  # the diagnostics compare the two terms
            continue
        cfg = base.replace(arm=arm, diagnostics_every=1)
        # the lowest of repeated means on either side: a shared machine only ever adds time
        off = min(off, bench_arm(teacher, base.replace(arm=arm), loader, warmup=base.schedule.ttur)[0])
        with tempfile.TemporaryDirectory() as scratch:
            on = min(bench_arm(teacher, cfg, loader, warmup=base.schedule.ttur, callbacks=[DiagnosticsCallback(scratch)])[0]
                     for _ in range(2))
        extra = (on - off) * cfg.schedule.ttur  # one diagnosed generator step per ttur steps
        floor = 0.0 if arm.shared_draw else cost["fwd2"] + cost["fwd1"]
        run = every * cfg.schedule.ttur * off  # the run's time between two diagnosed generator steps
        print(f"| {name} | {off * 1e3:.2f} | {on * 1e3:.2f} | {extra * 1e3:.2f} | {extra / run * 100:.1f}% | "
              f"{floor * 1e3:.2f} | {floor / run * 100:.2f}% |")


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cmd_bench(args) -> None:
    main(args)


def register(sub) -> None:
    p = sub.add_parser("bench", help="step time against the network-evaluation floor, per arm")
    add_run_options(p)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--arms", default="", help="only these registry arms (comma-separated)")
    p.add_argument("--no-whole-run", action="store_true", help="skip the whole run timed by phase (image and toy scales)")
    p.set_defaults(func=cmd_bench)
