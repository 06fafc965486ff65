"""vtcr demo: the main job on a built-in default, offline.

1. Optical memory and its cost: a reasoning trace (the built-in sample, or --input FILE) rendered with
   both presets, pages written to --out, tokens compared per model family.
2. Optical-memory reasoning: vtcr's built-in model (a tiny Qwen3-VL that vtcr trains itself on a
   synthetic running-sum task, ~9 minutes on a 2-core CPU the first time, then cached) answers
   held-out questions in `vtc` mode, reading its earlier rounds from page images, and in `no-memory`
   mode (no pages), where it starts over every round. The first question is shown round by round,
   then every question's answers and the accuracy per mode: the model is small and makes mistakes
   (about 75% correct in `vtc` mode, 0% without memory; recipes/builtin.md).
"""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="render, compress and reason with the built-in model (offline)")
    p.add_argument("--input", default=None, metavar="FILE", help="a reasoning text to render instead of the sample")
    p.add_argument("--out", default="vtcr-demo", metavar="DIR", help="where page images and run records go")
    p.add_argument("--tokenizer", default=None, metavar="PATH_OR_ID", help="default: the bundled Qwen3 tokenizer")
    p.add_argument("--question", default=None, help='one built-in task question, e.g. "Add: b7 d3 g9 p2"')
    p.add_argument("--questions", type=int, default=5, metavar="N", help="held-out questions to answer (default 5)")
    p.add_argument("--no-model", action="store_true", help="only the render-and-compress part")
    p.set_defaults(func=run)


def run(args) -> int:
    out = Path(args.out)
    questions = None if args.no_model else _demo_questions(args.question, args.questions)  # fail before any work
    _render_part(args, out)
    if questions is not None:
        from vtcr.builtin import ensure_builtin_model

        print("== 2. optical-memory reasoning with vtcr's built-in model")
        _reason_part(questions, ensure_builtin_model(progress=True), out)
    return 0


def _demo_questions(text: str | None, count: int) -> list[tuple[str, str]]:
    """The questions the built-in model answers in the demo, with their gold answers."""
    from vtcr.builtin import LETTERS, BuiltinRecipe, heldout_questions, parse_question

    if text is None:
        if not 1 <= count <= 1000:
            raise ValueError(f"--questions {count}: give between 1 and 1000")
        return heldout_questions(count)
    recipe = BuiltinRecipe()
    terms = parse_question(text)
    if terms is None or not recipe.min_terms <= len(terms) <= recipe.max_terms:
        raise ValueError(
            f"--question {text!r}: the built-in model answers questions like 'Add: b7 d3 g9' "
            f"({recipe.min_terms}-{recipe.max_terms} items named {' '.join(LETTERS[: recipe.max_terms])} "
            "in this order, each with a digit 1-9)"
        )
    return [(text, str(sum(terms)))]


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


def _reason_part(questions: list[tuple[str, str]], model_dir: Path, out: Path) -> dict[str, list]:
    """Answer `questions` in `vtc` and `no-memory` mode; the run records by mode.

    The first question is shown round by round; records and pages go to OUT/runs/MODE/qNN.json."""
    from vtcr.engine import TransformersBackend, reason_many, write_run
    from vtcr.builtin import answered_correctly, builtin_engine_config

    print(f"model: {model_dir}")
    backend = TransformersBackend.from_pretrained(model_dir, device="cpu")

    def show_first(index, rnd, record) -> None:
        if index == 0:
            print(f"  round {len(record.rounds)}: given {rnd.images} page(s) ({rnd.vision_tokens} vision tokens), "
                  f"wrote {rnd.text!r}")

    records = {}
    for mode in ("vtc", "no-memory"):
        print(f"\n[{mode}] {questions[0][0]}")
        config = builtin_engine_config(mode, save_images=True)
        records[mode] = reason_many([q for q, _ in questions], backend, config, on_round=show_first)
        for i, record in enumerate(records[mode], start=1):
            write_run(record, out / "runs" / mode, name=f"q{i:02d}")

    def verdict(record, gold: str) -> str:
        ok = answered_correctly(record, gold)
        return f"{record.answer or '-'} {'ok' if ok else 'wrong'} ({len(record.rounds)} rounds)"

    width = max(len(q) for q, _ in questions)
    print(f"\n{'question':<{width}}  gold  {'vtc':<22}  no-memory")
    for i, (q, gold) in enumerate(questions):
        print(f"{q:<{width}}  {gold:>4}  {verdict(records['vtc'][i], gold):<22}  {verdict(records['no-memory'][i], gold)}")
    for mode, recs in records.items():
        correct = sum(answered_correctly(r, g) for r, (_, g) in zip(recs, questions))
        finished = sum(r.finished for r in recs)
        print(f"{mode}: {correct}/{len(questions)} correct, {finished}/{len(questions)} finished")
    print(f"run records and pages in {out / 'runs'}/")
    return records
