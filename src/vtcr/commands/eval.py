"""`vtcr eval`: run benchmarks in several modes, grade, and write results, report, plots and viewer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vtcr.engine.modes import MODES
from vtcr.evaluate.benchmarks import DEFAULT_GENERATED
from vtcr.evaluate.config import EvalConfig
from vtcr.evaluate.figures import format_figure
from vtcr.evaluate.run import run_eval

from ._common import add_engine_args, comma_list, default_of, engine_config_from_args, param_default, shown


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
    parser.add_argument("--benchmarks", required=True, type=comma_list, metavar="LIST",
                        help="comma-separated benchmark names (e.g. math500,aime25,amc23,gpqa_diamond)")
    source = parser.add_argument_group("model (one of)")
    source.add_argument("--model", metavar="PATH", help="checkpoint folder (or hub id) run in-process with transformers "
                        "(default: vtcr's built-in models: standard for standard mode, vtc for the others)")
    source.add_argument("--server", metavar="URL", help="OpenAI-compatible server (vllm serve, SGLang, vtcr serve)")
    source.add_argument("--served-model", metavar="NAME", help="model name on --server")
    modes = default_of(EvalConfig, "modes")
    parser.add_argument("--modes", type=comma_list, default=modes, metavar="LIST",
                        help=f"comma-separated modes: {', '.join(MODES)} (default {shown(modes)})")
    parser.add_argument("--samples", type=int, metavar="K", help="samples per problem (default: per benchmark)")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N problems of each benchmark "
                        f"(builtin: N generated problems, default {DEFAULT_GENERATED})")
    seed, lengths = default_of(EvalConfig, "task_seed"), default_of(EvalConfig, "task_length")
    parser.add_argument("--task-seed", type=int, default=seed, metavar="S",
                        help=f"seed of the generated builtin problems (default {seed})")
    parser.add_argument("--task-length", default=f"{lengths[0]}:{lengths[1]}", metavar="MIN:MAX",
                        help=f"steps of the generated builtin problems (default and supported {lengths[0]}:{lengths[1]})")
    add_engine_args(parser, default_of(EvalConfig, "engine"),
                    seed_help="base seed; each problem x sample gets a seed derived from it, the same in every mode")
    batch = default_of(EvalConfig, "batch_size")
    parser.add_argument("--batch-size", type=int, default=batch, metavar="N",
                        help=f"problem x sample runs handed to the engine at once (default {batch})")
    parser.add_argument("--no-images", action="store_true", help="do not save page images for the viewer")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty, or with --resume)")
    parser.add_argument("--resume", action="store_true", help="continue the run in DIR, skipping finished work")
    runtime = parser.add_argument_group("runtime (not part of the run's settings)")
    runtime.add_argument("--data-root", metavar="DIR", help="benchmarks folder (default: benchmarks/ of $VTCR_DATA or ../shared/data)")
    runtime.add_argument("--device", help="device for --model (default cuda when available)")
    runtime.add_argument("--dtype", help="dtype for --model (default bf16 on GPU, fp32 on CPU)")
    for flag, name, kind, text in (
        ("--concurrency", "concurrency", int, "requests in flight: rows decoded together with --model, HTTP requests with --server"),
        ("--render-workers", "render_workers", int, "rendering threads"),
        ("--grade-timeout", "grade_timeout_s", float, "seconds per symbolic comparison"),
    ):
        value = param_default(run_eval, name)
        runtime.add_argument(flag, type=kind, default=value, dest=name, help=f"{text} (default {shown(value)})")
    runtime.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


BUILTIN_MODEL = "vtcr-builtin"  # EvalConfig.model of a run on the built-in models


def uses_builtin(args: argparse.Namespace) -> bool:
    return args.model is None and args.server is None


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    # A local checkpoint is recorded by absolute path, so --resume works from any folder.
    model = str(Path(args.model).expanduser().resolve()) if args.model and Path(args.model).expanduser().exists() else args.model
    base = default_of(EvalConfig, "engine")
    if uses_builtin(args):
        from vtcr.builtin import builtin_engine_config

        model, base = BUILTIN_MODEL, builtin_engine_config()
    return EvalConfig(
        benchmarks=args.benchmarks, modes=args.modes, samples=args.samples, limit=args.limit,
        engine=engine_config_from_args(args, base), model=model, server=args.server,
        served_model=args.served_model, batch_size=args.batch_size, save_images=not args.no_images,
        task_seed=args.task_seed, task_length=args.task_length,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    backend = None
    if uses_builtin(args):
        import sys

        from vtcr.builtin import default_notice, eval_warning, load_backends

        print(default_notice(config.modes), file=sys.stderr)
        warning = eval_warning(config.benchmarks)
        if warning:
            print(warning, file=sys.stderr)
        backend = load_backends(config.modes, device=args.device or "cpu", dtype=args.dtype)
    summary = run_eval(
        config, args.out, resume=args.resume, backend=backend, data_root=args.data_root, device=args.device, dtype=args.dtype,
        concurrency=args.concurrency, render_workers=args.render_workers, grade_timeout_s=args.grade_timeout_s,
        progress=not args.quiet,
    )  # fmt: skip
    for g in summary["groups"]:
        acc = "–" if g["avg_at_k"] is None else f"{format_figure(g['avg_at_k'], 'pct')}%"  # report.md's rounding
        lines = "" if g.get("trace_right_rate") is None else f"  every line right {format_figure(g['trace_right_rate'], 'pct')}%"
        wrong = g.get("first_wrong")
        if wrong:  # where the runs that left the gold trace first went wrong
            lines += "  first wrong line: " + ", ".join(f"{kind} {n}" for kind, n in wrong.items())
        print(f"{g['benchmark']:<14} {g['mode']:<10} avg@{g['samples']} {acc:>6}  runs {g['runs']}{lines}")
    print(json.dumps({"out": args.out, "runs": summary["runs"], "complete": summary["complete"]}))
    return 0
