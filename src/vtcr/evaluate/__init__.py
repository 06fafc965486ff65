"""Evaluation: benchmark descriptions and loading (grading lives in `vtcr.grade`)."""

from vtcr.evaluate.benchmarks import (
    BENCHMARKS,
    Benchmark,
    Problem,
    benchmarks_root,
    get_benchmark,
    list_benchmarks,
    load_benchmark,
    read_gold,
)

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "Problem",
    "benchmarks_root",
    "get_benchmark",
    "list_benchmarks",
    "load_benchmark",
    "read_gold",
]
