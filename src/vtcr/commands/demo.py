"""vtcr demo: the main job on a built-in default, offline.

1. Optical memory and its cost: a reasoning trace (the built-in sample, or --input FILE) rendered with
   both presets, pages written to --out, tokens compared per model family.
2. Optical-memory reasoning: vtcr's built-in model (a tiny Qwen3-VL that vtcr trains itself on a
   synthetic running-sum task, ~1-2 minutes on a CPU the first time, then cached) answers a question
   in `vtc` mode, reading its earlier rounds from page images, and fails in `no-memory` mode.
"""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="render, compress and reason with the built-in model (offline)")
    p.add_argument("--input", default=None, metavar="FILE", help="a reasoning text to render instead of the sample")
    p.add_argument("--out", default="vtcr-demo", metavar="DIR", help="where page images and run records go")
    p.add_argument("--tokenizer", default=None, metavar="PATH_OR_ID", help="default: the bundled Qwen3 tokenizer")
    p.add_argument("--question", default=None, help='a built-in task question, e.g. "Add: b7 d3 g9 p2"')
    p.add_argument("--no-model", action="store_true", help="only the render-and-compress part")
    p.set_defaults(func=run)


def run(args) -> int:
    out = Path(args.out)
    question = None if args.no_model else _demo_question(args.question)  # bad input fails before any work
    _render_part(args, out)
    if question is not None:
        from vtcr.train.builtin import ensure_builtin_model

        print("== 2. optical-memory reasoning with vtcr's built-in model")
        _reason_part(*question, ensure_builtin_model(progress=True), out)
    return 0


def _demo_question(text: str | None) -> tuple[str, str]:
    """The question the built-in model answers in the demo, and its gold answer."""
    from vtcr.train.builtin import LETTERS, BuiltinRecipe, heldout_questions, parse_question

    if text is None:
        return heldout_questions(1)[0]
    recipe = BuiltinRecipe()
    terms = parse_question(text)
    if terms is None or not recipe.min_terms <= len(terms) <= recipe.max_terms:
        raise ValueError(
            f"--question {text!r}: the built-in model answers questions like 'Add: b7 d3 g9' "
            f"({recipe.min_terms}-{recipe.max_terms} items named {' '.join(LETTERS[: recipe.max_terms])} "
            "in this order, each with a digit 1-9)"
        )
    return text, str(sum(terms))


def _render_part(args, out: Path) -> None:
    from vtcr import sample
    from vtcr.commands._common import read_text_input
    from vtcr.commands.compress import format_report
    from vtcr.cost import measure_compression, resolve_tokenizer
    from vtcr.render import PRESETS, get_renderer, save_pages

    text = read_text_input(args.input) if args.input else sample.REASONING
    tokenizer = resolve_tokenizer(args.tokenizer)
    print(f"== 1. optical memory: {len(text)} characters of reasoning "
          f"({'built-in sample' if not args.input else args.input})\n")
    for name, config in PRESETS.items():
        report = measure_compression(text, config, tokenizer)
        paths = save_pages(get_renderer(config).render(text), out / "pages" / name)
        print(f"[preset {name}] {report.pages} page(s) in {report.render_seconds * 1000:.1f} ms -> {paths[0].parent}/")
        print(format_report(report) + "\n")


def _reason_part(question: str, gold: str, model_dir: Path, out: Path) -> dict[str, object]:
    """`question` in `vtc` and `no-memory` mode, round by round; the run records by mode."""
    from vtcr.engine import TransformersBackend, reason, write_run
    from vtcr.train.builtin import builtin_engine_config

    print(f"model: {model_dir}")
    backend = TransformersBackend.from_pretrained(model_dir, device="cpu")

    def show(_index, rnd, record) -> None:
        print(f"  round {len(record.rounds)}: given {rnd.images} page(s) ({rnd.vision_tokens} vision tokens), "
              f"wrote {rnd.text!r}")

    records = {}
    for mode in ("vtc", "no-memory"):
        print(f"\n[{mode}] {question}")
        record = reason(question, backend, builtin_engine_config(mode, save_images=True), on_round=show)
        verdict = "correct" if record.finished and record.answer == gold else f"gold {gold}"
        print(f"  -> answer: {record.answer or '(none)'} ({verdict}); finished={record.finished}, "
              f"{len(record.rounds)} round(s), stop: {record.stop_reason}")
        write_run(record, out / "runs" / mode)
        records[mode] = record
    print(f"\nrun records in {out / 'runs'}/")
    return records
