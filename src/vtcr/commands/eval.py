"""`vtcr eval`: run benchmarks in several modes, grade, and write results, report, plots and viewer."""

from __future__ import annotations

import argparse
import json


def _csv(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model on benchmarks in several reasoning modes",
        description=(
            "Reason about every problem of each benchmark in each mode (samples per problem: --samples, "
            "else 16 for aime25/amc23 and 1 elsewhere), grade the answers, and write to --out: results.jsonl "
            "(one line per problem x sample x mode, appended as each finishes), summary.json, report.md, "
            "plots/*.png and index.html (a viewer of every run). A killed run continues with --resume."
        ),
    )
    parser.add_argument("--benchmarks", required=True, type=_csv, metavar="LIST",
                        help="comma-separated benchmark names (e.g. math500,aime25,amc23,gpqa_diamond)")
    source = parser.add_argument_group("model (one of)")
    source.add_argument("--model", metavar="PATH", help="checkpoint folder (or hub id) run in-process with transformers")
    source.add_argument("--server", metavar="URL", help="OpenAI-compatible server (vllm serve, SGLang, vtcr serve)")
    source.add_argument("--served-model", metavar="NAME", help="model name on --server")
    parser.add_argument("--modes", type=_csv, default=("vtc", "standard"), metavar="LIST",
                        help="comma-separated modes: vtc, standard, text, no-memory (default vtc,standard)")
    parser.add_argument("--samples", type=int, metavar="K", help="samples per problem (default: per benchmark)")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N problems of each benchmark")
    parser.add_argument("--max-rounds", type=int, default=8, metavar="N", help="rounds per problem (default 8)")
    parser.add_argument("--round-tokens", type=int, default=8192, metavar="N", help="new tokens per round (default 8192)")
    parser.add_argument("--temperature", type=float, default=0.6, metavar="T", help="sampling temperature (default 0.6)")
    parser.add_argument("--top-p", type=float, default=0.95, metavar="P", help="nucleus sampling (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="base seed; each problem x sample gets a seed derived from it, the same in every mode (default 0)")
    parser.add_argument("--render-preset", metavar="NAME", help="render preset (default: the model's own)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N",
                        help="problem x sample runs handed to the engine at once (default 64)")
    parser.add_argument("--no-images", action="store_true", help="do not save page images for the viewer")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty, or with --resume)")
    parser.add_argument("--resume", action="store_true", help="continue the run in DIR, skipping finished work")
    runtime = parser.add_argument_group("runtime (not part of the run's settings)")
    runtime.add_argument("--data-root", metavar="DIR", help="benchmarks folder (default: $VTCR_BENCHMARKS or shared data)")
    runtime.add_argument("--device", help="device for --model (default cuda when available)")
    runtime.add_argument("--dtype", help="dtype for --model (default bf16 on GPU, fp32 on CPU)")
    runtime.add_argument("--concurrency", type=int, default=8, help="requests in flight with --server (default 8)")
    runtime.add_argument("--render-workers", type=int, default=2, help="rendering threads (default 2)")
    runtime.add_argument("--grade-timeout", type=float, default=5.0, help="seconds per symbolic comparison (default 5)")
    runtime.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vtcr.evaluate.run import EvalConfig, run_eval

    # A local checkpoint is recorded by absolute path, so --resume works from any folder.
    model = str(Path(args.model).expanduser().resolve()) if args.model and Path(args.model).expanduser().exists() else args.model

    config = EvalConfig(
        benchmarks=args.benchmarks, modes=args.modes, samples=args.samples, limit=args.limit,
        max_rounds=args.max_rounds, round_tokens=args.round_tokens, temperature=args.temperature, top_p=args.top_p,
        seed=args.seed, model=model, server=args.server, served_model=args.served_model,
        render_preset=args.render_preset, batch_size=args.batch_size, save_images=not args.no_images,
    )  # fmt: skip
    summary = run_eval(
        config, args.out, resume=args.resume, data_root=args.data_root, device=args.device, dtype=args.dtype,
        concurrency=args.concurrency, render_workers=args.render_workers, grade_timeout_s=args.grade_timeout,
        progress=not args.quiet,
    )  # fmt: skip
    for g in summary["groups"]:
        acc = "–" if g["avg_at_k"] is None else f"{100 * g['avg_at_k']:.1f}%"
        print(f"{g['benchmark']:<14} {g['mode']:<10} avg@{g['samples']} {acc:>6}  runs {g['runs']}")
    print(json.dumps({"out": args.out, "runs": summary["runs"], "complete": summary["complete"]}))
    return 0
