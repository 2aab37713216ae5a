"""``make eval-coco`` / ``make eval-hps`` / ``make eval-dpg``: the command-line side of the evaluations
(which data, which models, which images), kept out of cli.py.

Order of work: the data and the reference statistics first (a wrong folder fails in seconds), then
the teacher's images for the compared prompts (cached; the teacher is loaded only when they are
missing, and dropped before the student loads), then the student's images and every number.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
from pathlib import Path

import torch

from ddmd_lab.commands.common import add_sampling_options, config_from_args, sampler_from_args
from ddmd_lab.config import RunSettings, parse_overrides, read_config
from ddmd_lab.data.prompts import warn_truncated
from ddmd_lab.errors import UserError
from ddmd_lab.eval.clip_score import ClipScorer
from ddmd_lab.eval.fid import InceptionFeatures, to_uint8_hwc
from ddmd_lab.eval.protocols.coco import CAPTIONS_FILE
from ddmd_lab.eval.protocols.coco import RESULT_DIR as COCO_RESULT_DIR
from ddmd_lab.eval.protocols.coco import (Protocol, coco_subset, dmd2_reference_stats, evaluate_coco, reference_stats,
                                          resolve_coco, subset_hash)
from ddmd_lab.eval.protocols.dmd2 import LAYOUT, find_dmd2_root, resolve_dmd2
from ddmd_lab.eval.protocols.hps import HPS_WEIGHTS_ENV
from ddmd_lab.eval.protocols.hps import RESULT_DIR as HPS_RESULT_DIR
from ddmd_lab.eval.protocols.hps import HpsScorer, evaluate_hps, flatten_styles, read_hps_prompts
from ddmd_lab.eval.protocols.prompt_eval import FolderSource, Plan, SamplerSource, teacher_images
from ddmd_lab.scales.text2image import teacher_identity

DPG_MESSAGE = ("DPG-Bench is not available here: it scores each of its 1,065 dense prompts' images by asking a VQA "
               "model (mPLUG-large, modelscope's damo/mplug_visual-question-answering_coco_large_en) the prompt's "
               "questions, and that model's weights cannot be downloaded on this machine. README.md (\"DPG-Bench\") says "
               "how it would be added.")


def _device(args) -> str:
    from ddmd_lab.training.restore import default_device  # deferred: Lightning (training.restore loads the module)

    return default_device(args.device)


def _run_config(args):
    """The run's (or the scale's, for the teacher) config without loading any model."""
    if args.run:
        path = Path(args.run) / "config.yaml"
        if not path.is_file():
            raise UserError(f"{args.run} is not a run folder (no config.yaml); pass RUN=runs/<scale>/<arm>/<run-id>.")
        return read_config(path)
    if getattr(args, "scale", None):
        return config_from_args(args, "decoupled_hybrid")
    return None


def _teacher(args, cfg, plan: Plan, prompts, to_uint8, conversion: str, batch: int):
    """The teacher's cached images for ``plan`` (a run's own teacher at its distillation alpha), or None."""
    if not args.run or not plan.teacher_keys():
        return None
    from ddmd_lab.training.generate import teacher_sampler  # deferred: diffusers, Lightning

    alpha = cfg.objective.alpha  # the CFG the student was distilled towards: "oversaturated" means more than this teacher
    steps = args.teacher_steps

    def make():
        sampler = teacher_sampler(cfg, steps, None, args.device)
        sampler.alpha = alpha
        return sampler

    images = teacher_images(make, teacher_identity(cfg, steps, alpha), plan.teacher_prompts(prompts),
                            plan.teacher_keys(), args.seed or 0, to_uint8, conversion, Path(cfg.run.cache_dir), batch)
    gc.collect()  # the teacher's pipeline goes before the student's loads
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return images


def _source_info(args, cfg) -> dict:
    if getattr(args, "images", None):
        return {"source": {"images": str(Path(args.images).resolve())}}
    return {"source": {"run": str(Path(args.run).resolve()) if args.run else None, "scale": cfg.run.scale if cfg else None,
                       "sample_steps": args.sample_steps, "guidance": args.guidance}}


def _out_dir(args, cfg) -> Path:
    if getattr(args, "out", None):
        return Path(args.out)
    if getattr(args, "images", None):
        return Path(args.images).expanduser().resolve().parent
    if args.run:
        return Path(args.run)
    return Path(cfg.run.runs_dir) / cfg.run.scale / "teacher"


def choose_protocol(coco: Path, asked: str | None) -> str:
    """``dmd2`` where DMD2's files are (the default), ``val2014-seeded`` where COCO's own layout is."""
    if asked:
        return asked
    if find_dmd2_root(coco) is not None:
        return "dmd2"
    if (coco / CAPTIONS_FILE).is_file():
        return "val2014-seeded"
    raise UserError(f"{coco} holds neither DMD2's COCO-10k files ({LAYOUT}) nor COCO-2014 val (annotations/"
                    "captions_val2014.json and val2014/); point COCO= at one of them.")


def eval_coco(args) -> dict:
    if not args.coco:
        raise UserError("no COCO folder: COCO=/data/coco10k (DMD2's subset/ and all_prompts.pkl) or COCO=/data/coco "
                        "(annotations/captions_val2014.json and val2014/).")
    if args.images and (args.run or args.scale):
        raise UserError("IMAGES scores images made elsewhere; drop RUN / SCALE (or IMAGES).")
    coco = Path(args.coco).expanduser()
    protocol = Protocol(choose_protocol(coco, args.protocol), args.resolution)
    cfg = _run_config(args)
    if cfg is not None:
        cache = Path(cfg.run.cache_dir) / "coco"
    else:  # IMAGES without a run: SET="cache_dir=..." or the default
        cache = Path(parse_overrides(args.overrides).get("cache_dir", RunSettings.cache_dir)) / "coco"
    device = _device(args)
    features = InceptionFeatures(device, progress=True)
    if protocol.name == "dmd2":
        data = resolve_dmd2(coco, Path(args.prompts) if args.prompts else None)
        prompts = data.prompts[:args.n]
        names = [f"{i:05d}.png" for i in range(len(prompts))]
        reference = {name: dmd2_reference_stats(data, name, view, protocol.resolution, cache, features)
                     for name, view in protocol.views().items()}
        info = {"data": {"prompts_file": str(data.prompts_file), "prompts_in_file": len(data.prompts),
                         "reference_dir": str(data.reference_dir), "n_reference": len(data.reference_files),
                         "reference_hash": data.reference_hash()}}
    else:
        if args.prompts:
            raise UserError("PROMPTS names DMD2's prompt file; the val2014-seeded protocol takes its captions from COCO.")
        pairs = coco_subset(*resolve_coco(coco), args.n, args.subset_seed)
        prompts = [p.caption for p in pairs]
        names = [f"{i:05d}_{p.image_id:012d}.png" for i, p in enumerate(pairs)]
        reference = {"fid": reference_stats(pairs, protocol.resolution, cache, features)}
        info = {"data": {"coco": str(coco), "subset_seed": args.subset_seed, "subset_hash": subset_hash(pairs),
                         "n_reference": len(pairs)}}
    clip = None if args.no_clip else ClipScorer(args.clip_model, args.clip_weights, device, **protocol.clip_options())
    hps = HpsScorer(args.hps_model, args.hps_weights, device) if (args.hps_weights or _hps_env()) else None
    seeds = 0 if args.images else args.diversity_seeds
    plan = Plan.make(len(prompts), args.teacher_images if args.run else 0, args.diversity, seeds)
    teacher = _teacher(args, cfg, plan, prompts, protocol.to_uint8, f"{protocol.name}-r{protocol.resolution}", args.batch)
    if args.images:
        source = FolderSource(Path(args.images), len(prompts))
    else:
        source = SamplerSource(sampler_from_args(args), args.seed or 0)
        cfg = source.sampler.cfg
        _warn_truncated(source, prompts, "COCO prompts")
    out = _out_dir(args, cfg)
    out.mkdir(parents=True, exist_ok=True)
    results = evaluate_coco(source, prompts, names, out, protocol=protocol, reference=reference, features=features,
                            clip=clip, hps=hps, batch_size=args.batch, seed=args.seed or 0, plan=plan, teacher=teacher,
                            info={**info, **_source_info(args, cfg)}, save_images=not args.images)
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}, indent=2))
    print(f"written: {out / COCO_RESULT_DIR / 'results.json'}")
    return results


def _warn_truncated(source, prompts, what: str) -> None:
    """Prompts the sampled model's text encoders cut short, said once before sampling (data.prompts.warn_truncated)."""
    warn_truncated(source.sampler.model, list(prompts), what)


def _hps_env() -> bool:
    return bool(os.environ.get(HPS_WEIGHTS_ENV))


def eval_hps(args) -> dict:
    if not args.prompts:
        raise UserError("no benchmark prompts: PROMPTS=<HPDv2's benchmark/ folder (anime.json, concept-art.json, "
                        "paintings.json, photo.json)> or one JSON file of style -> prompts.")
    by_style = read_hps_prompts(args.prompts)
    device = _device(args)
    hps = HpsScorer(args.hps_model, args.hps_weights, device)
    clip = ClipScorer(args.clip_model, args.clip_weights, device) if args.clip_weights else None
    features = InceptionFeatures(device, progress=True)
    cfg = _run_config(args)
    prompts = flatten_styles(by_style, args.per_style)[0]
    plan = Plan.make(len(prompts), args.teacher_images if args.run else 0, args.diversity, args.diversity_seeds)
    teacher = _teacher(args, cfg, plan, prompts, to_uint8_hwc, "rounded-full", args.batch)
    source = SamplerSource(sampler_from_args(args), args.seed or 0)
    cfg = source.sampler.cfg
    _warn_truncated(source, prompts, "HPS prompts")
    out = _out_dir(args, cfg)
    out.mkdir(parents=True, exist_ok=True)
    results = evaluate_hps(source, by_style, out, hps=hps, features=features, clip=clip, batch_size=args.batch,
                           seed=args.seed or 0, limit=args.per_style, plan=plan, teacher=teacher,
                           info={"prompts_source": str(Path(args.prompts).resolve()), **_source_info(args, cfg)})
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}, indent=2))
    print(f"written: {out / HPS_RESULT_DIR / 'results.json'}")
    return results


def eval_dpg(args) -> None:
    raise UserError(DPG_MESSAGE)


def add_comparison_options(p: argparse.ArgumentParser, teacher_default: int) -> None:
    p.add_argument("--hps-model", default="ViT-H-14", help="open_clip model of HPSv2.1 (or a model-config JSON)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--teacher-images", type=int, default=teacher_default,
                   help="prompts (evenly spread) whose image is also drawn by the run's teacher from the same noise "
                   "(many-step CFG at the run's alpha, cached under cache_dir/teacher_images): colour vs teacher; 0 = none")
    p.add_argument("--teacher-steps", type=int, default=None, help="the teacher's steps (default: its pipeline's)")
    p.add_argument("--diversity", type=int, default=16, help="prompts drawn with several seeds for diversity (0 = none)")
    p.add_argument("--diversity-seeds", type=int, default=4, help="seeds per diversity prompt")


def register(sub) -> None:
    p = sub.add_parser("eval-coco", help="COCO-10k as the paper's Table 2: FID, patch-FID, CLIP score (DMD2's protocol), "
                       "HPSv2.1, colour vs the teacher, diversity")
    add_sampling_options(p)
    p.add_argument("--coco", help="DMD2's coco10k folder (subset/, all_prompts.pkl) or COCO-2014 (annotations/, val2014/)")
    p.add_argument("--protocol", choices=("dmd2", "val2014-seeded"), default=None,
                   help="default: dmd2 where DMD2's files are, val2014-seeded for COCO's own layout")
    p.add_argument("--prompts", default=None, help="dmd2: another prompt file than <coco>/all_prompts.pkl (.pkl or .txt)")
    p.add_argument("--images", default=None, help="score these images (one per prompt, sorted by name) instead of sampling")
    p.add_argument("--out", default=None, help="results folder (default: the run, or beside --images)")
    p.add_argument("--n", type=int, default=10_000, help="prompts (dmd2: the first n; val2014-seeded: the subset size)")
    p.add_argument("--subset-seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=512, help="evaluation resolution (DMD2: 512)")
    p.add_argument("--clip-model", default="ViT-g-14", help="open_clip model name or model-config JSON")
    p.add_argument("--clip-weights", default=None, help="local open_clip checkpoint (default: $CLIP_WEIGHTS)")
    p.add_argument("--no-clip", action="store_true", help="FID only")
    p.add_argument("--hps-weights", default=None, help="HPS_v2.1_compressed.pt (default: $HPS_WEIGHTS; none: no HPSv2.1)")
    add_comparison_options(p, 500)
    p.set_defaults(func=eval_coco)

    p = sub.add_parser("eval-hps", help="HPSv2.1 on the HPSv2 benchmark prompts, per style and mean (the paper's Table 1), "
                       "colour vs the teacher, diversity")
    add_sampling_options(p)
    p.add_argument("--prompts", help="HPDv2's benchmark/ folder (anime.json, concept-art.json, paintings.json, photo.json) "
                   "or one JSON file of style -> prompts")
    p.add_argument("--per-style", type=int, default=None, help="only the first N prompts of each style (default: all 800)")
    p.add_argument("--hps-weights", default=None, help="HPS_v2.1_compressed.pt (default: $HPS_WEIGHTS)")
    p.add_argument("--clip-model", default="ViT-g-14")
    p.add_argument("--clip-weights", default=None, help="also CLIP score and CLIP diversity with this open_clip file")
    p.add_argument("--out", default=None, help="results folder (default: the run)")
    add_comparison_options(p, 400)
    p.set_defaults(func=eval_hps)

    p = sub.add_parser("eval-dpg", help="DPG-Bench (the paper's Table 1): not available offline, says why")
    p.set_defaults(func=eval_dpg)
