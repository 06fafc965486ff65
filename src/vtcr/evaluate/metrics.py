"""Aggregate evaluation rows (one per benchmark x problem x sample x mode) into the paper's figures.

Pure functions over plain dicts, so that a summary can be recomputed from `results.jsonl` alone:

* accuracy avg@K (mean correctness over a problem's K samples, averaged over problems) and pass@K
  (a problem counts when any of its samples is right);
* mean generated tokens, vision tokens, rounds; finished rate; error and grading-timeout counts;
* on a generated benchmark (`builtin`), the rate of runs with every step of the gold trace written
  right and the answer right (`trace_right_rate`);
* latency per problem (each run's own wall time from its first request to its answer, rendering
  included) and batch-amortised (a batch's wall time divided by the runs in it: the paper's "batch
  wall time / samples"); `compute_s` is the generate + render seconds of the run alone;
* speed-up of each mode over `standard` (standard latency / mode latency) when both ran.

Per run: `generated_tokens` sums its rounds; `vision_tokens` is the largest image-token count of any
round's prompt, i.e. the optical memory the run ended up holding; `prefill_tokens` sums its rounds;
`peak_context_tokens` is the largest round's context, its prompt plus the tokens it generated (the KV
cache the round ends with: what bounds memory, and what optical memory keeps small).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from typing import Any, Iterable, Mapping

BASELINE_MODE = "standard"


def run_generated_tokens(row: Mapping[str, Any]) -> int:
    return sum(int(r.get("generated_tokens") or 0) for r in row.get("rounds") or [])


def run_vision_tokens(row: Mapping[str, Any]) -> int:
    return max((int(r.get("vision_tokens") or 0) for r in row.get("rounds") or []), default=0)


def run_prefill_tokens(row: Mapping[str, Any]) -> int:
    return sum(int(r.get("prefill_tokens") or 0) for r in row.get("rounds") or [])


def run_peak_context_tokens(row: Mapping[str, Any]) -> int:
    return max(
        (int(r.get("prompt_tokens") or 0) + int(r.get("generated_tokens") or 0) for r in row.get("rounds") or []),
        default=0,
    )


def run_compute_s(row: Mapping[str, Any]) -> float:
    """Seconds the run itself kept the backend and renderer busy (no waiting for other runs)."""
    return sum(float(r.get("generate_s") or 0) + float(r.get("render_s") or 0) for r in row.get("rounds") or [])


def run_rounds(row: Mapping[str, Any]) -> int:
    return len(row.get("rounds") or [])


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _quantile(values: list[float], q: float) -> float | None:
    """Linear-interpolated quantile (numpy's default), None for no values."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def avg_at_k(correct_by_problem: Mapping[str, list[bool]]) -> float | None:
    """Mean over problems of the fraction of its samples that are correct (avg@K)."""
    per_problem = [sum(v) / len(v) for v in correct_by_problem.values() if v]
    return _mean(per_problem)


def pass_at_k(correct_by_problem: Mapping[str, list[bool]]) -> float | None:
    """Fraction of problems with at least one correct sample (pass@K with n = K)."""
    per_problem = [float(any(v)) for v in correct_by_problem.values() if v]
    return _mean(per_problem)


def amortised_latency(rows: Iterable[Mapping[str, Any]]) -> float | None:
    """Wall time of the batches these rows ran in, divided by the runs in them (`batch_wall_s`,
    `batch_size` per row; rows of a batch that never finished, e.g. killed, are left out).

    Each row contributes its batch's wall_s / size, so the mean over rows is the total batch wall time
    over the total runs, and a batch split across groups is never double-counted.
    """
    shares = [float(r["batch_wall_s"]) / int(r["batch_size"]) for r in rows
              if r.get("batch_wall_s") is not None and r.get("batch_size")]
    return _mean(shares)


def _first_wrong_counts(rows: list[Mapping[str, Any]]) -> dict[str, int] | None:
    """Generated benchmarks only (rows with `first_wrong`): how many runs first left the gold trace
    by each kind of wrong line ("read", "compute", "stopped"); None for other benchmarks."""
    checked = [r["first_wrong"] for r in rows if "first_wrong" in r]
    if not checked:
        return None
    from vtcr.data.synthetic import WRONG_LINE_KINDS

    counts = Counter(w["kind"] for w in checked if w)
    return {kind: counts.get(kind, 0) for kind in WRONG_LINE_KINDS}


def group_metrics(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The figures of one benchmark x mode group."""
    correct: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        correct[str(r["id"])].append(bool(r.get("correct")))
    latencies = [float(r["latency_s"]) for r in rows if r.get("latency_s") is not None]
    samples = max((len(v) for v in correct.values()), default=0)
    return {
        "problems": len(correct),
        "runs": len(rows),
        "samples": samples,
        "avg_at_k": avg_at_k(correct),
        "pass_at_k": pass_at_k(correct),
        "generated_tokens": _mean([run_generated_tokens(r) for r in rows]),
        "vision_tokens": _mean([run_vision_tokens(r) for r in rows]),
        "prefill_tokens": _mean([run_prefill_tokens(r) for r in rows]),
        "peak_context_tokens": _mean([run_peak_context_tokens(r) for r in rows]),
        "peak_context_tokens_max": max((run_peak_context_tokens(r) for r in rows), default=None),
        "rounds": _mean([run_rounds(r) for r in rows]),
        "finished_rate": _mean([float(bool(r.get("finished"))) for r in rows]),
        # solved: ended with a final answer that is right (avg@K also credits the last number of
        # an unfinished run, as the paper's harness does)
        "exact_rate": _mean([float(bool(r.get("finished")) and bool(r.get("correct"))) for r in rows]),
        # generated benchmarks only (rows with `trace_right`): every step written as the gold trace
        # has it and the answer right -- a right answer alone is 1 in 10 by chance on the built-in task
        "trace_right_rate": _mean([float(bool(r["trace_right"]) and bool(r.get("correct"))) for r in rows if "trace_right" in r]),
        "first_wrong": _first_wrong_counts(rows),
        "errors": sum(1 for r in rows if r.get("error")),
        "grade_timeouts": sum(1 for r in rows if r.get("grade_reason") == "timeout"),
        "latency_s": _mean(latencies),
        "latency_median_s": _quantile(latencies, 0.5),
        "latency_p90_s": _quantile(latencies, 0.9),
        "amortised_latency_s": amortised_latency(rows),
        "compute_s": _mean([run_compute_s(r) for r in rows]),
    }


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def summarise(rows: Iterable[Mapping[str, Any]], baseline: str = BASELINE_MODE) -> dict[str, Any]:
    """{"groups": [{benchmark, mode, ...figures, speedup, speedup_amortised}], "runs": n}.

    Groups are ordered by benchmark, then mode, in order of first appearance in `rows` (the
    runner writes them in its configured order). Speed-ups compare against the `baseline` mode
    of the same benchmark; None when it did not run.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    bench_order: dict[str, int] = {}
    mode_order: dict[str, int] = {}
    n = 0
    for r in rows:
        key = (str(r["benchmark"]), str(r["mode"]))
        bench_order.setdefault(key[0], len(bench_order))
        mode_order.setdefault(key[1], len(mode_order))
        groups.setdefault(key, []).append(r)
        n += 1
    out = []
    for key in sorted(groups, key=lambda k: (bench_order[k[0]], mode_order[k[1]])):
        out.append({"benchmark": key[0], "mode": key[1], **group_metrics(groups[key])})
    base = {g["benchmark"]: g for g in out if g["mode"] == baseline}
    for g in out:
        b = base.get(g["benchmark"])
        g["speedup"] = _ratio(b["latency_s"], g["latency_s"]) if b else None
        g["speedup_amortised"] = _ratio(b["amortised_latency_s"], g["amortised_latency_s"]) if b else None
    return {"runs": n, "baseline": baseline, "groups": out}
