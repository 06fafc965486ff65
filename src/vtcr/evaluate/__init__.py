"""Evaluation: benchmarks, the evaluation runner and what it writes, in pipeline order.

    benchmarks   declarative benchmark descriptions and loading (`load_benchmark`)
    grade_file   grading a JSONL file against gold answers (`vtcr grade`)
    config       `EvalConfig` (holds the engine's `EngineConfig`)
    results      an eval folder's files read back (rows, batches, summary)
    metrics      avg@k, pass@k, tokens, latency per benchmark x mode
    viewer, report   index.html, report.md, summary.json and plots, from results alone
    run          `run_eval`: reason, grade and record every problem x sample x mode

Answer grading itself is `vtcr.grade`. Names are imported lazily (the runner loads the engine).
"""

from vtcr._lazy import lazy_exports

_EXPORTS = {
    "BENCHMARKS": "benchmarks",
    "Benchmark": "benchmarks",
    "Problem": "benchmarks",
    "benchmarks_root": "benchmarks",
    "get_benchmark": "benchmarks",
    "list_benchmarks": "benchmarks",
    "load_benchmark": "benchmarks",
    "read_gold": "benchmarks",
    "grade_file": "grade_file",
    "EvalConfig": "config",
    "read_rows": "results",
    "summarize_dir": "results",
    "write_reports": "report",
    "run_eval": "run",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
