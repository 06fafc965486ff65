"""vtcr demo: the main job on a built-in default, offline.

Renders a reasoning trace (the built-in sample, or --input FILE) with both presets, writes the pages,
and prints what optical memory costs per model family compared with the text.
"""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="render-and-compress demo on a built-in reasoning trace (offline)")
    p.add_argument("--input", default=None, metavar="FILE", help="a reasoning text to use instead of the sample")
    p.add_argument("--out", default="vtcr-demo", metavar="DIR", help="where the page images go (default vtcr-demo)")
    p.add_argument("--tokenizer", default=None, metavar="PATH_OR_ID", help="default: the bundled Qwen3 tokenizer")
    p.set_defaults(func=run)


def run(args) -> int:
    from vtcr import sample
    from vtcr.commands._common import read_text_input
    from vtcr.commands.compress import format_report
    from vtcr.cost import measure_compression, resolve_tokenizer
    from vtcr.render import PRESETS, get_renderer, save_pages

    text = read_text_input(args.input) if args.input else sample.REASONING
    tokenizer = resolve_tokenizer(args.tokenizer)
    print(f"reasoning text: {len(text)} characters ({'built-in sample' if not args.input else args.input})\n")
    for name, config in PRESETS.items():
        report = measure_compression(text, config, tokenizer)
        paths = save_pages(get_renderer(config).render(text), Path(args.out) / name)
        print(f"[preset {name}] pages in {report.render_seconds * 1000:.1f} ms -> {paths[0].parent}/")
        print(format_report(report) + "\n")
    return 0
