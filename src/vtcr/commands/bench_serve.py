"""`vtcr bench serve`: requests/s and p50/p99 latency of `vtcr serve` at 1, 8, 32 concurrent clients,
batched against one at a time in one run, and disconnect-to-stop time (one call to
vtcr.bench.serve.run_serve_bench)."""

from __future__ import annotations

import argparse
import json

from vtcr.bench.serve import ServeBenchConfig

from ._common import comma_ints, shown

_D = ServeBenchConfig()


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="throughput, latency and cancellation of vtcr serve under concurrent clients",
        description="Serve one checkpoint in process over real HTTP and measure requests/s, tokens/s and p50/p99 "
                    "latency per number of concurrent clients, batched (the backend's concurrency) against one at "
                    "a time, plus the time from a streaming client's disconnect to its generation stopping.",
    )  # fmt: skip
    p.add_argument("--model", default=_D.model, help="checkpoint folder (default: a tiny random Qwen3-VL built under --out)")
    p.add_argument("--clients", type=comma_ints, default=_D.clients, metavar="LIST",
                   help=f"comma-separated concurrent client counts (default {shown(_D.clients)})")
    p.add_argument("--requests", type=int, default=_D.requests,
                   help=f"requests per client count and mode (default {_D.requests})")
    p.add_argument("--max-tokens", type=int, default=_D.max_tokens, help=f"tokens per request (default {_D.max_tokens})")
    p.add_argument("--disconnects", type=int, default=_D.disconnects,
                   help=f"streaming clients that disconnect, timed (default {_D.disconnects})")
    p.add_argument("--device", default=_D.device, help="cpu | cuda | cuda:N (default cuda when available)")
    p.add_argument("--dtype", default=_D.dtype, help="fp32 | bf16 | fp16 (default bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--seed", type=int, default=_D.seed, help=f"seed of the built model and the images (default {_D.seed})")
    p.add_argument("--out", default="bench-serve", help="output folder (default bench-serve)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> ServeBenchConfig:
    return ServeBenchConfig(model=args.model, clients=args.clients, requests=args.requests, max_tokens=args.max_tokens,
                            disconnects=args.disconnects, device=args.device, dtype=args.dtype, seed=args.seed)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from vtcr.bench.serve import format_report, run_serve_bench

    report = run_serve_bench(config_from_args(args), args.out, progress=not args.no_progress)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
