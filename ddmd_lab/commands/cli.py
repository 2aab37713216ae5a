"""Command line: ``python -m ddmd_lab <command>`` (the Makefile's targets call these).

A registry: each command module adds its own subparsers (``register(sub)``) with its handler as
``func``; this file only assembles them and turns a user's error into one line.  Command modules import
their heavy dependencies (Lightning, diffusers, open_clip) inside the handler, so ``--help`` and a
mistyped option answer at once.
"""
from __future__ import annotations

import argparse
import sys

from ddmd_lab.commands import (bench, consolidate, distill, evaluate, export, finetune, floors, inspect, plan, power, report,
                               sample)
from ddmd_lab.errors import NonFiniteError, UserError

# in the order of `--help`
COMMANDS = (distill, report, inspect, sample, evaluate, export, consolidate, plan, finetune, bench, power, floors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ddmd_lab", description=__doc__.splitlines()[0])
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (UserError, NonFiniteError) as exc:
        if args.traceback:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UserError) else 3
    return 0
