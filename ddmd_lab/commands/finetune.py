"""``make finetune``: a LoRA on a finished run's student."""
from __future__ import annotations

from ddmd_lab.config import parse_overrides


def cmd_finetune(args) -> None:
    from ddmd_lab.finetune.train import finetune  # deferred: Lightning, diffusers, peft

    finetune(args.run, args.data, parse_overrides(args.overrides))


def register(sub) -> None:
    p = sub.add_parser("finetune", help="a LoRA on a finished run's distilled student, trained on a new concept at the "
                       "student's own times: <runs_dir>/<scale>/finetune/<run-id>/")
    p.add_argument("--run", default="", help="a distillation run folder with a checkpoint")
    p.add_argument("--data", default="", help="image scales: <dataset>:<class> (e.g. mnist:7); zimage / lumina2: a folder "
                   "of images with captions (<name>.txt beside each, or metadata.jsonl)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fine-tune setting (repeatable), e.g. --set lora.rank=8 --set lr=1e-4 --set train_guidance=1.5 "
                   "--set steps=200 (ddmd_lab/finetune/config.py)")
    p.set_defaults(func=cmd_finetune)
