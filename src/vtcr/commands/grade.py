"""`vtcr grade`: grade the answers in a JSONL file; write it back with `pred` and `correct` added."""

from __future__ import annotations

import argparse
import json

from vtcr.grade import GradeConfig

from ._common import default_of, shown


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "grade",
        help="grade answers in a JSONL file against gold answers",
        description=(
            "Grade each record of FILE.jsonl: --response-field holds a full model response (the answer is "
            "extracted: <answer> tags after </think>, else the last \\boxed{}, ...), --pred-field an already "
            "extracted answer. Writes every record with `pred` and `correct` added to --out (default "
            "FILE.graded.jsonl) and prints {n, correct, accuracy}. Without --benchmark answers are graded "
            "as math; with it, that benchmark's answer type and gold reader are used."
        ),
    )
    parser.add_argument("file", metavar="FILE.jsonl", help="records to grade")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pred-field", metavar="F", help="field holding an extracted answer")
    source.add_argument("--response-field", metavar="F", help="field holding a full model response")
    parser.add_argument("--gold-field", metavar="G", required=True, help="field holding the gold answer")
    parser.add_argument("--benchmark", metavar="NAME", help="benchmark whose answer type to use (default: math)")
    parser.add_argument("--out", metavar="FILE", help="graded output (default: FILE.graded.jsonl)")
    timeout = default_of(GradeConfig, "timeout_s")
    parser.add_argument("--timeout", type=float, default=timeout,
                        help=f"seconds per symbolic comparison (default {shown(timeout)})")
    parser.add_argument("--json", action="store_true", help="print only the summary JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vtcr.evaluate.grade_file import grade_file

    summary = grade_file(
        args.file, gold_field=args.gold_field, pred_field=args.pred_field, response_field=args.response_field,
        benchmark=args.benchmark, out=args.out, config=GradeConfig(timeout_s=args.timeout), progress=not args.json,
    )  # fmt: skip
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        print(f"graded {summary.n} records: {summary.correct} correct, accuracy {summary.accuracy:.2%}")
        print(f"wrote {summary.out}")
    return 0
