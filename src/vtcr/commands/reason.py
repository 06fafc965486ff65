"""`vtcr reason QUESTION`: reason about one question with optical memory; print each round and the answer."""

from __future__ import annotations

import argparse
import sys

from vtcr.engine.modes import MODES, EngineConfig, check_question
from vtcr.grade import ANSWER_TYPES

from ._common import add_engine_args, engine_config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reason",
        help="reason about a question: generate, render each round into page images, feed them back",
        description=(
            "Run the VTC-R1 loop on one question with a local checkpoint (--model) or an OpenAI-compatible "
            "server such as `vllm serve` or `vtcr serve` (--server). Each round prints as it ends; "
            "--json prints the run record instead."
        ),
    )
    p.add_argument("question", help="the question text, or - to read it from standard input")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="PATH", help="checkpoint folder (or hub id) for the transformers backend "
                        "(default: vtcr's built-in model for the mode, which solves only the built-in task)")
    source.add_argument("--server", metavar="URL",
                        help="base URL of an OpenAI-compatible server (e.g. http://localhost:8000/v1)")
    p.add_argument("--served-model", metavar="NAME", help="model name on the server (required with --server)")
    defaults = EngineConfig()
    p.add_argument("--mode", default=defaults.mode, choices=MODES, help=f"one of {', '.join(MODES)} (default {defaults.mode})")
    add_engine_args(p, defaults)
    p.add_argument("--answer-type", default=defaults.answer_type, choices=ANSWER_TYPES,
                   help=f"how the answer is extracted (default {defaults.answer_type})")
    p.add_argument("--device", default=None, help="device for --model (default cuda when available, else cpu)")
    p.add_argument("--dtype", default=None, help="fp32 | bf16 | fp16 for --model (default bf16 on GPU, fp32 on CPU)")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="per-request timeout for --server")
    p.add_argument("--out", metavar="DIR", help="write the run record to DIR/run.json")
    p.add_argument("--save-images", action="store_true", help="with --out: also save each round's page images")
    p.add_argument("--json", action="store_true", help="print the run record (JSON) instead of the rounds")
    p.set_defaults(func=run)


def uses_builtin(args: argparse.Namespace) -> bool:
    return args.model is None and args.server is None


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    settings = {"mode": args.mode, "answer_type": args.answer_type, "save_images": bool(args.save_images and args.out)}
    if uses_builtin(args):  # the built-in models' own settings (greedy, short rounds) under the user's flags
        from vtcr.builtin import builtin_engine_config

        base = builtin_engine_config(**settings)
    else:
        base = EngineConfig(**settings)
    return engine_config_from_args(args, base)


def run(args: argparse.Namespace) -> int:
    from vtcr.engine import open_backend, reason, write_run

    question = sys.stdin.read() if args.question == "-" else args.question
    config = config_from_args(args)
    check_question(question)  # before loading a model
    if uses_builtin(args):
        from vtcr.builtin import default_notice, load_backends, off_task_warning

        print(default_notice([config.mode]), file=sys.stderr)
        warning = off_task_warning(question)
        if warning:
            print(warning, file=sys.stderr)
        backend = load_backends([config.mode], device=args.device or "cpu", dtype=args.dtype)[config.mode]
    else:
        backend = open_backend(args.model, server=args.server, served_model=args.served_model, device=args.device,
                               dtype=args.dtype, timeout_s=args.timeout)  # fmt: skip
    out = sys.stderr if args.json else sys.stdout

    def on_round(_index, rnd, record) -> None:
        print(
            f"--- round {len(record.rounds)}: {rnd.generated_tokens} tokens ({rnd.finish_reason}), {rnd.images} image(s) = "
            f"{rnd.vision_tokens} vision tokens, prefill {rnd.prefill_tokens}/{rnd.prompt_tokens} tokens, "
            f"{rnd.generate_s:.2f} s generate, {rnd.render_s:.2f} s render -> {rnd.pages} page(s)",
            file=out, flush=True,
        )  # fmt: skip
        if not args.json:
            print(rnd.text, file=out, flush=True)

    record = reason(question, backend, config, on_round=on_round)
    if args.out:
        path = write_run(record, args.out)
        print(f"run record: {path}", file=sys.stderr)
    if args.json:
        print(record.to_json())
    else:
        why = {
            "answer": "finished",
            "max_rounds": f"not finished: no final answer after {config.max_rounds} round(s)",
            "empty_round": "stopped: the last round generated no text (nothing to render or continue)",
            "length": "not finished: the token limit was reached without a final answer",
            "no_answer": "not finished: the model ended its turn without a final answer",
            "error": f"stopped by an error: {record.error}",
        }[record.stop_reason]
        print(f"=== {why}; {len(record.rounds)} round(s), {record.generated_tokens} tokens, {record.seconds:.2f} s")
        print(answer_line(record))
    return 1 if record.error else 0


def answer_line(record) -> str:
    """The last line of a run: its answer, or plainly that there is none. An unfinished run's
    extraction from its partial text (the grader's fallback) is shown only as such, never as the answer."""
    if record.finished and record.answer is not None:
        return f"answer: {record.answer}"
    if record.answer is None:
        return "no final answer"
    return f"no final answer (partial extraction from the unfinished text: {record.answer})"
