"""`vtcr bench NAME`: the measurements of `vtcr.bench`, one sub-verb each.

Each sub-verb lives in `vtcr/commands/bench_<name>.py` and exposes `register(subparsers)`, as the
top-level verbs do.
"""

from __future__ import annotations

import argparse
import importlib

BENCH_MODULES: tuple[str, ...] = ("efficiency", "fidelity", "batching", "serve")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="measure efficiency (time, memory) and page fidelity (OCR)")
    names = parser.add_subparsers(dest="bench", metavar="NAME")
    for name in BENCH_MODULES:
        importlib.import_module(f"vtcr.commands.bench_{name}").register(names)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
