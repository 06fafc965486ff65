"""`vtcr bench batching`: decode tokens/s with several rows decoded together vs one at a time (one
call to vtcr.bench.batching.run_batching)."""

from __future__ import annotations

import argparse
import json

from vtcr.bench.batching import BatchingConfig

from ._common import comma_ints, comma_list, shown

_D = BatchingConfig()  # every flag's default and the default shown in its help come from here

EPILOG = """\
examples:
  vtcr bench batching                                   # qwen3-vl tiny and small, width 1 vs 8
  vtcr bench batching --sizes 2b --widths 1,4,8,16 --device cuda --new-tokens 256 --json out.json
  vtcr bench batching --models path/to/checkpoint --widths 1,8
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "batching", help="decode tokens/s of the transformers backend at several batch widths",
        description="Submit the same requests at once to the transformers backend at each width (rows decoded "
                    "together); report wall time, tokens/s and the decode speed-up over the first width, and "
                    "whether every request's tokens are the same at every width.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=_D.arch, help=f"architecture of the random-weight models (default {_D.arch})")
    p.add_argument("--sizes", type=comma_list, default=_D.sizes, metavar="LIST",
                   help=f"comma-separated sizes: tiny, small, 2b, 8b (default {shown(_D.sizes)})")
    p.add_argument("--models", type=comma_list, default=_D.models, metavar="DIRS",
                   help="comma-separated checkpoint folders instead of random-weight sizes")
    p.add_argument("--tokenizer", default=_D.tokenizer, help=f"tokenizer of the random-weight models (default {_D.tokenizer})")
    p.add_argument("--widths", type=comma_ints, default=_D.widths, metavar="LIST",
                   help=f"comma-separated batch widths, the first is the baseline (default {shown(_D.widths)})")
    p.add_argument("--requests", type=int, default=_D.requests, metavar="N",
                   help="requests submitted at once (default: the largest width)")
    p.add_argument("--new-tokens", type=int, default=_D.new_tokens, metavar="N",
                   help=f"tokens each request generates (default {_D.new_tokens})")
    p.add_argument("--pages", type=int, default=_D.pages, metavar="N",
                   help=f"pages of real reasoning text in every prompt (default {_D.pages})")
    p.add_argument("--device", default=_D.device, help="device (default cuda when available)")
    p.add_argument("--threads", type=int, default=_D.threads, help="torch threads (default: the cores available)")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vtcr.bench.batching import format_batching, run_batching

    config = BatchingConfig(arch=args.arch, sizes=args.sizes, models=args.models, tokenizer=args.tokenizer,
                            widths=args.widths, requests=args.requests, new_tokens=args.new_tokens, pages=args.pages,
                            device=args.device, threads=args.threads)  # fmt: skip
    result = run_batching(config, progress=not args.quiet)
    print(format_batching(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return 0
