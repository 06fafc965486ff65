"""`vtcr bench efficiency`: replay real traces through a random-weight model of a real architecture in
every mode and print time, tokens and memory beside the analytic cost model (one call to
vtcr.bench.efficiency.run_efficiency)."""

from __future__ import annotations

import argparse
import json

from vtcr.bench.efficiency import SELECT, EfficiencyConfig
from vtcr.bench.replay import MODES
from vtcr.models.architectures import ARCHS

from ._common import comma_ints, comma_list, shown

_D = EfficiencyConfig()  # every flag's default and the default shown in its help come from here

EPILOG = """\
examples:
  vtcr bench efficiency --arch qwen3-vl --size small --limit 4 --select spread --out eff/
  vtcr bench efficiency --arch qwen3-vl --size 8b --device cuda --limit 8 --select longest   # on a GPU

Every mode decodes the trace's own tokens (teacher forcing). --device cuda runs bf16; it is meant for
the 2b and 8b sizes on a GPU and is never needed by the tests.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "efficiency", help="replay real traces in every mode: prefill, decode, KV cache, memory, cost model",
        description="Replay reasoning traces (teacher-forced) through a random-weight model of a real VLM "
                    "architecture in the standard, vtc, vtc_no_reuse and text modes; report time, tokens and "
                    "memory per trace, mode and batch size beside an analytic FLOPs/bytes cost model.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=ARCHS, default=_D.arch,
                   help=f"architecture (default {_D.arch})")
    p.add_argument("--size", default=_D.size, help=f"tiny, small, 2b or 8b (default {_D.size})")
    p.add_argument("--like", default=_D.like, metavar="DIR",
                   help="a real checkpoint's metadata folder: its config.json shrunk to --size")
    p.add_argument("--traces", default=_D.traces, metavar="FILE",
                   help="JSONL(.gz) of traces (default: the shared Sky-T1 traces)")
    p.add_argument("--limit", type=int, default=_D.limit, help="N traces (default: all usable)")
    p.add_argument("--select", choices=SELECT, default=_D.select,
                   help=f"which N traces: the first, the longest, or spread over the lengths (default {_D.select})")
    p.add_argument("--segment-tokens", type=int, default=_D.segment_tokens,
                   help=f"segment length, as build-data splits traces (default {_D.segment_tokens})")
    p.add_argument("--batch-sizes", type=comma_ints, default=_D.batch_sizes, metavar="LIST",
                   help=f"comma-separated batch sizes (default {shown(_D.batch_sizes)})")
    p.add_argument("--modes", type=comma_list, default=_D.modes, metavar="LIST",
                   help=f"comma-separated modes (default {shown(MODES)})")
    p.add_argument("--device", default=_D.device, help=f"cpu or cuda (default {_D.device})")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=_D.dtype,
                   help="weights dtype (default float32 on cpu, bfloat16 on cuda)")
    p.add_argument("--preset", default=_D.preset, help=f"render preset of the pages (default {_D.preset})")
    p.add_argument("--decode-stride", type=int, default=_D.decode_stride,
                   help=f"time every S-th decode step, feed the rest as untimed chunks (default {_D.decode_stride}: all)")
    p.add_argument("--clock", choices=("wall", "process"), default=_D.clock,
                   help=f"wall time, or this process's CPU time (steadier on a shared CPU; cpu only) (default {_D.clock})")
    p.add_argument("--problem-field", default=_D.problem_field, help=f"question field (default {_D.problem_field})")
    p.add_argument("--trace-field", default=_D.trace_field, help=f"trace field (default {_D.trace_field})")
    p.add_argument("--answer-field", default=_D.answer_field, help=f"gold answer field (default {_D.answer_field})")
    p.add_argument("--id-field", default=_D.id_field, help=f"id field (default {_D.id_field})")
    p.add_argument("--drop-if", type=comma_list, default=_D.drop_if, metavar="LIST",
                   help=f"skip rows where these fields are true (default {shown(_D.drop_if)})")
    p.add_argument("--seed", type=int, default=_D.seed, help=f"weights seed (default {_D.seed})")
    p.add_argument("--out", default="efficiency-out", help="output folder (default efficiency-out)")
    p.add_argument("--no-plot", action="store_true", help="skip the plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true",
                   help='print {"traces": [...], "summary": {"batch_sizes": {...}}, "cost_model": {...}}')
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> EfficiencyConfig:
    return EfficiencyConfig(
        arch=args.arch, size=args.size, like=args.like, traces=args.traces, limit=args.limit, select=args.select,
        segment_tokens=args.segment_tokens, batch_sizes=args.batch_sizes, modes=args.modes, device=args.device,
        dtype=args.dtype, preset=args.preset, decode_stride=args.decode_stride, clock=args.clock, problem_field=args.problem_field,
        trace_field=args.trace_field, answer_field=args.answer_field, id_field=args.id_field,
        drop_if=args.drop_if, seed=args.seed, plot=not args.no_plot,
    )


def run(args: argparse.Namespace) -> int:
    from vtcr.bench.efficiency import RESULT_FILE, format_report, run_efficiency

    config = config_from_args(args)
    report = run_efficiency(config, args.out, progress=not (args.no_progress or args.json))
    if args.json:
        print(json.dumps(report))
        return 0
    print(format_report(report))
    print(f"\nwritten: {args.out}/{RESULT_FILE}" + "".join(f", {p}" for p in report.get("plots", [])))
    return 0
