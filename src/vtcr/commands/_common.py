"""Argument helpers shared by several verbs (render config selection, text input)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_render_config_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--preset", default=None, help="render preset: dense (default) or vtcr1 (the paper's)")
    group.add_argument("--config", default=None, metavar="FILE",
                       help="render config JSON with the Glyph/VTC-R1 keys (page-size, font-size, ...)")


def render_config_from_args(args: argparse.Namespace):
    from vtcr.render import RenderConfig, preset

    if args.config:
        return RenderConfig.from_json(args.config)
    return preset(args.preset or "dense")


def read_text_input(path: str) -> str:
    """INPUT is a UTF-8 text file, or '-' for standard input."""
    if path == "-":
        return sys.stdin.read()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"input file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
