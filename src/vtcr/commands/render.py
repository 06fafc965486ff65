"""vtcr render INPUT -o DIR: text -> DIR/page_001.png, ..."""

from __future__ import annotations

import json
import sys
import time

from ._common import add_render_config_args, file_listing, read_text_input, render_config_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("render", help="render text into page images (optical memory)")
    p.add_argument("input", help="a UTF-8 text file, or - for standard input")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="folder for page_001.png, page_002.png, ...")
    add_render_config_args(p)
    p.add_argument("--backend", default="fast", help="fast (default), reportlab (pdfium) or reference (pdftoppm)")
    p.add_argument("--json", action="store_true", help='print {"pages": N, "sizes": [[w, h], ...], "seconds": s}')
    p.set_defaults(func=run)


def run(args) -> int:
    from vtcr.render import Renderer, save_pages

    text = read_text_input(args.input)
    renderer = Renderer(render_config_from_args(args), args.backend).warm_up()  # start-up, not timed
    start = time.perf_counter()
    pages = renderer.render(text)
    seconds = time.perf_counter() - start
    paths = save_pages(pages, args.out)
    sizes = [list(img.size) for img in pages]
    if args.json:
        print(json.dumps({"pages": len(pages), "sizes": sizes, "seconds": round(seconds, 6)}))
    elif not pages:
        print("no pages: the input text is empty (nothing to draw)", file=sys.stderr)
    else:
        print(f"rendered in {seconds * 1000:.1f} ms (preset {renderer.config.name}, backend {renderer.backend}) "
              f"-> {file_listing(paths)}")
    return 0
