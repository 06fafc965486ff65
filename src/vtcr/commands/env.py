"""`vtcr env [--json]`: what vtcr finds on this machine (versions, devices, optional tools, data, built-in models)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "env",
        help="show what vtcr finds on this machine (paste it into a bug report)",
        description=(
            "Versions (vtcr, Python, torch and its CUDA/CPU build, transformers, ...), CUDA devices and CPUs, whether "
            "torchvision imports (and so which processor vtcr uses), the optional system tools (poppler's pdftoppm, "
            "Chromium, Tesseract), where the shared data and the built-in models are. Loads no model."
        ),
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vtcr.env import collect_env, format_env

    info = collect_env()
    print(json.dumps(info, indent=2) if args.json else format_env(info))
    return 0
