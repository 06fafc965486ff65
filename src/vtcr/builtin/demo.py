"""`run_demo`: the README's main job on the built-in models, offline.

1. One held-out problem of the built-in task reasoned in ``vtc`` mode, round by round: what each
   round was given (pages, vision tokens) and wrote; its pages are saved.
2. `vtcr.evaluate.run_eval` on held-out problems (`builtin` benchmark) in the four modes of the
   paper's comparison -- ``vtc``, ``standard`` (the standard built-in model, whole traces), ``text``
   and ``no-memory`` (the vtc model without rendering / without pages) -- and the ``blank-memory``
   control (the vtc model given blank pages: are the pages read, or only counted?), and the comparison table: accuracy, rounds, peak
   context tokens, generated tokens, latency. The eval folder's index.html is the viewer (it shows
   every vtc round's pages).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vtcr.data.synthetic import SUPPORTED_LENGTHS, parse_length_range

DEMO_MODES = ("vtc", "standard", "text", "no-memory", "blank-memory")
DEMO_PROBLEMS = 4
DEMO_SEED = 2


def comparison_table(summary: dict[str, Any]) -> str:
    """The eval summary's groups as a plain-text table of the figures the demo compares."""
    from vtcr.evaluate.figures import format_figure

    cols = (("mode", "mode", "str"), ("exact %", "exact_rate", "pct"), ("accuracy %", "avg_at_k", "pct"),
            ("lines right %", "trace_right_rate", "pct"), ("rounds", "rounds", "num"),
            ("peak context", "peak_context_tokens", "int"), ("gen. tokens", "generated_tokens", "int"),
            ("latency s", "latency_s", "s"), ("finished %", "finished_rate", "pct"))  # fmt: skip
    rows = [[h for h, _, _ in cols]]
    for g in summary["groups"]:
        rows.append([format_figure(g.get(key), kind) for _, key, kind in cols])
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


def run_demo(
    out: str | os.PathLike = "vtcr-demo",
    *,
    problems: int = DEMO_PROBLEMS,
    seed: int = DEMO_SEED,
    lengths: Any = SUPPORTED_LENGTHS,
    modes: tuple[str, ...] = DEMO_MODES,
    weights: str | os.PathLike | None = None,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:
    """Run the demo into `out` (a fresh eval each time); returns the eval summary."""
    import shutil

    from vtcr.builtin import builtin_engine_config, load_backends, read_manifest, weights_root
    from vtcr.engine import reason, write_run
    from vtcr.evaluate import EvalConfig, run_eval
    from vtcr.evaluate.benchmarks import generate_benchmark

    lo, hi = parse_length_range(lengths)
    out = Path(out)
    backends = load_backends(modes, root=weights)  # verifies the weights before any work
    config = EvalConfig(benchmarks=("builtin",), modes=tuple(modes), limit=problems, engine=builtin_engine_config(),
                        model="vtcr-builtin", task_seed=seed, task_length=(lo, hi), batch_size=problems)  # fmt: skip
    held_out = generate_benchmark("builtin", problems, seed, (lo, hi))
    example = max(held_out, key=lambda p: _steps(p.question))  # the longest: the most rounds
    log(f"vtcr's built-in models ({weights_root(weights)}): a tiny Qwen3-VL trained on optical-memory samples (vtc) "
        f"and one trained on whole traces (standard): same architecture, initial weights, problems and batch; "
        f"{_steps_trained(read_manifest(weights))} (see MODEL_CARD.md). exact % = runs that ended with the right answer; "
        "accuracy % is the grader's avg@1 (it also credits the last number of an unfinished run); finished % = runs that "
        "ended with an answer.")
    log(f"\n== 1. one held-out problem in vtc mode, round by round ({_steps(example.question)} steps, gold {example.gold})")
    log(example.question)

    def on_round(_index, rnd, record) -> None:
        lines = rnd.text.strip("\n").split("\n")
        shown = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]} ({len(lines)} lines)"
        log(f"  round {len(record.rounds)}: read {rnd.images} page(s) = {rnd.vision_tokens} vision tokens, "
            f"prompt {rnd.prompt_tokens} tokens; wrote {shown}")

    record = reason(example.question, backends["vtc"], builtin_engine_config("vtc", save_images=True), on_round=on_round)
    example_dir = out / "example"
    if example_dir.exists():
        shutil.rmtree(example_dir)
    path = write_run(record, example_dir)
    verdict = "correct" if record.finished and (record.answer or "").strip() == example.gold else "wrong"
    log(f"  answer {record.answer} ({verdict}); run record {path}, pages in {example_dir / 'run_pages'}/")

    log(f"\n== 2. {problems} held-out problems ({lo}-{hi} steps, seed {seed}) in {len(modes)} modes")
    eval_dir = out / "eval"
    if eval_dir.exists():
        shutil.rmtree(eval_dir)
    summary = run_eval(config, eval_dir, backend=backends, progress=progress)
    log("")
    log(comparison_table(summary))
    log("\nvtc: question + page images of earlier rounds (vtc model); standard: one long text context (standard model); "
        "text: earlier rounds as text (vtc model); no-memory: the question only, every round (vtc model); "
        "blank-memory: as vtc, but every page sent blank (vtc model: are the pages read, or only counted?). "
        "peak context = the largest round's prompt + generated tokens.")
    log(f"\nviewer: {eval_dir / 'index.html'} (every run, with the pages of each vtc round); report: {eval_dir / 'report.md'}")
    return summary


def _steps_trained(manifest: dict[str, Any]) -> str:
    """"vtc 5,000 steps, standard 5,000" from the manifest's training record (every stage summed)."""
    parts = []
    for mode, record in (manifest.get("trained") or {}).items():
        steps = sum((v or {}).get("global_step") or 0 for k, v in record.items() if k.startswith("stage"))
        parts.append(f"{mode} {steps:,} steps")
    return ", ".join(parts) or "training steps not recorded"


def _steps(question: str) -> int:
    from vtcr.data.synthetic import parse_question

    problem = parse_question(question)
    return problem.length if problem else 0
