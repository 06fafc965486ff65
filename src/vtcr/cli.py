"""The `vtcr` command line: a thin shell over the library.

Each verb lives in `vtcr/commands/<verb>.py` and exposes `register(subparsers)`, which adds its
parser and sets `func(args) -> int`. Command modules import heavy libraries (torch, transformers)
inside `func`, so `vtcr --help` and light verbs start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order here is the order of `vtcr --help`: the pipeline, left to right.
COMMAND_MODULES = (
    "render",
    "compress",
    "build_data",
    "init_model",
    "inspect_model",
    "train",
    "export_llamafactory",
    "reason",
    "grade",
    "eval",
    "serve",
    "bench",
    "builtin",
    "demo",
    "env",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vtcr", description="Vision-text compressed reasoning (VTC-R1).")
    parser.add_argument("--version", action="version", version=f"vtcr {__import__('vtcr').__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="VERB")
    for name in COMMAND_MODULES:
        importlib.import_module(f"vtcr.commands.{name}").register(subparsers)
    return parser


def verb_parser(parser: argparse.ArgumentParser, verb: str | None) -> argparse.ArgumentParser:
    """The parser of `verb` (the top-level one when there is none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and verb in action.choices:
            return action.choices[verb]
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse like `parser.parse_args`, but an unknown flag after a verb is reported by that verb's
    parser, with that verb's usage (`usage: vtcr reason ...`), not the top-level one."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        verb_parser(parser, getattr(args, "command", None)).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("vtcr: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError) as exc:
        # Library errors name the bad input; show them without a traceback.
        print(f"vtcr {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
