"""vtcr compress INPUT: pages, vision tokens, text tokens and compression ratio per model family."""

from __future__ import annotations

import json
import sys

from ._common import add_render_config_args, read_text_input, render_config_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("compress", help="what rendering a text saves, per VLM family")
    p.add_argument("input", help="a UTF-8 text file, or - for standard input")
    add_render_config_args(p)
    p.add_argument("--tokenizer", default=None, metavar="PATH_OR_ID",
                   help="tokenizer for text tokens (default: the bundled Qwen3 tokenizer, same ids as Qwen3-VL)")
    p.add_argument("--backend", default="fast")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from vtcr.cost import measure_compression, resolve_tokenizer

    text = read_text_input(args.input)
    report = measure_compression(text, render_config_from_args(args), resolve_tokenizer(args.tokenizer),
                                 backend=args.backend)
    if args.json:
        print(json.dumps(report.to_json()))
        return 0
    if not report.pages:
        print("no pages: the input text is empty (nothing to draw)", file=sys.stderr)
    print(format_report(report))
    return 0


def format_report(report) -> str:
    lines = [f"{report.chars} characters, {report.text_tokens} text tokens, {report.pages} page(s)",
             f"{'model family':<14}{'vision tokens':>14}{'ratio':>9}"]
    for family, cost in report.models.items():
        ratio = "n/a" if cost.ratio != cost.ratio else f"{cost.ratio:.2f}x"
        lines.append(f"{family:<14}{cost.vision_tokens:>14}{ratio:>9}")
    return "\n".join(lines)
