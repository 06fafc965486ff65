"""`vtcr reason QUESTION`: reason about one question with optical memory; print each round and the answer."""

from __future__ import annotations

import argparse
import sys

MODES = ("vtc", "standard", "text", "no-memory")  # kept in step with vtcr.engine.MODES (light import here)


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
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="PATH", help="checkpoint folder (or hub id) for the transformers backend")
    source.add_argument("--server", metavar="URL",
                        help="base URL of an OpenAI-compatible server (e.g. http://localhost:8000/v1)")
    p.add_argument("--served-model", metavar="NAME", help="model name on the server (required with --server)")
    p.add_argument("--mode", default="vtc", choices=MODES, help="vtc (default), standard, text or no-memory")
    p.add_argument("--max-rounds", type=int, default=8, metavar="N", help="most rounds (default 8)")
    p.add_argument("--round-tokens", type=int, default=8192, metavar="N",
                   help="most new tokens per round (default 8192)")
    p.add_argument("--temperature", type=float, default=0.6, metavar="T",
                   help="sampling temperature (default 0.6; 0: greedy)")
    p.add_argument("--top-p", type=float, default=0.95, metavar="P", help="nucleus sampling mass (default 0.95)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default 0)")
    p.add_argument("--render-preset", default=None, help="render preset of the optical memory (default: the model's)")
    p.add_argument("--no-boxed-final", action="store_true",
                   help="only <answer> tags end the run (default: a \\boxed{} after </think> does too)")
    p.add_argument("--answer-type", default="math", choices=("math", "multiple_choice"),
                   help="how the answer is extracted (default math)")
    p.add_argument("--device", default=None, help="device for --model (default cuda when available, else cpu)")
    p.add_argument("--dtype", default=None, help="fp32 | bf16 | fp16 for --model (default bf16 on GPU, fp32 on CPU)")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="per-request timeout for --server")
    p.add_argument("--out", metavar="DIR", help="write the run record to DIR/run.json")
    p.add_argument("--save-images", action="store_true", help="with --out: also save each round's page images")
    p.add_argument("--json", action="store_true", help="print the run record (JSON) instead of the rounds")
    p.set_defaults(func=run)


def _backend(args: argparse.Namespace):
    if args.server:
        if not args.served_model:
            raise ValueError("--server needs --served-model NAME (the model name the server serves)")
        from vtcr.engine.openai_backend import OpenAIBackend

        kwargs = {} if args.timeout is None else {"timeout_s": args.timeout}
        return OpenAIBackend(args.server, args.served_model, **kwargs)
    from vtcr.engine import TransformersBackend

    return TransformersBackend.from_pretrained(args.model, device=args.device, dtype=args.dtype)


def run(args: argparse.Namespace) -> int:
    from vtcr.engine import EngineConfig, reason, write_run

    question = sys.stdin.read() if args.question == "-" else args.question
    config = EngineConfig(
        mode=args.mode, max_rounds=args.max_rounds, round_tokens=args.round_tokens, temperature=args.temperature,
        top_p=args.top_p, seed=args.seed, boxed_counts_as_final=not args.no_boxed_final,
        render_preset=args.render_preset, save_images=bool(args.save_images and args.out),
        answer_type=args.answer_type,
    )  # fmt: skip
    from vtcr.engine.modes import check_question

    check_question(question)  # before loading a model
    backend = _backend(args)
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
        print(f"answer: {record.answer if record.answer is not None else '(none)'}")
    return 1 if record.error else 0
