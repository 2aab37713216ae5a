"""``make consolidate RUN=<run>``: the single-file student of a strategy=fsdp run, from its sharded checkpoint.

A strategy=fsdp run keeps its checkpoints as folders of shards (checkpoints/final.dcp, last.dcp), each
rank's written by that rank.  This reads the newest one on this host alone -- no process group, and
only the weights and the generator's weight average, not the optimiser states -- and writes
checkpoints/final.ckpt (or last.ckpt), which make sample / export / eval read as they read a ddp run's.
"""
from __future__ import annotations

from ddmd_lab.errors import UserError


def cmd_consolidate(args) -> None:
    if not args.run:
        raise UserError("no run to consolidate: make consolidate RUN=runs/<scale>/<arm>/<run-id>.")
    from ddmd_lab.training.sharded_checkpoint import consolidate  # deferred: torch.distributed.checkpoint

    out = consolidate(args.run)
    print(f"single-file checkpoint written: {out} (sample or export it: make sample RUN={args.run})")


def register(sub) -> None:
    p = sub.add_parser("consolidate", help="a strategy=fsdp run's sharded checkpoint as one file (its student)")
    p.add_argument("--run", help="a run folder with checkpoints/final.dcp or last.dcp")
    p.set_defaults(func=cmd_consolidate)
