"""How often does vtcr's grader agree with an external oracle: the math-evaluation-harness verdicts
stored with the shared Sky-T1 traces (`pred`, `gt_answer`, `correct`)?

Two measurements:
  from pred   grade the harness's own extracted answer against its gold (equivalence only);
  from trace  extract the answer from the raw generation ourselves, then grade (extraction + equivalence).
Both are reported against the harness verdict as is ("raw") and against the verdict with the
hand-checked harness errors of HARNESS_ERRORS corrected ("adjudicated"); docs/grading.md explains
each class. Every disagreement is classified and printed with ids (math answers only, never GPQA).

    python -m perf.grader_agreement                 # all 1,052 traces, both modes
    python -m perf.grader_agreement --every 4 --no-trace --json out.json
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import time
from fractions import Fraction
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from vtcr._io import find_shared_data
from vtcr.evaluate.benchmarks import get_benchmark, load_benchmark
from vtcr.grade import Grader, GradeConfig
from vtcr.grade.equivalence import _number

PROJECT_ROOT = Path(__file__).resolve().parents[1]

_P = "skyt1/Sky-T1-math-correct-5K-27B/"
# Records whose harness verdict is wrong, checked by hand (truth, class). Only unambiguous cases:
# the response's final answer is (or is not) the gold answer whatever convention one grades by.
HARNESS_ERRORS: dict[str, tuple[bool, str]] = {
    **{f"{_P}minerva_math/{i}": (True, "function_label") for i in (30, 35, 72, 76, 95, 96, 99, 115, 118, 122, 124, 127, 252)},
    **{f"{_P}minerva_math/{i}": (True, "scientific_notation") for i in (10, 129, 136, 171, 175, 178, 236, 263)},
    f"{_P}minerva_math/5": (True, "equal_value"),  # arcsin(1/1.3) = arcsin(10/13)
    f"{_P}minerva_math/123": (True, "side_condition"),  # "x(t) = b delta(t) + 1 - e^{-at} for t > 0"
    f"{_P}math500/355": (False, "percent_rescaling"),  # truncated, never answered; "1" taken as 100%
}

CLASS_TEXT = {
    "function_label": "harness wrong: answer written as `f(x) = ...` against a bare gold (it strips a left side of <= 2 chars only)",
    "scientific_notation": "harness wrong: `a\\times10^{n}` against gold `aen` (its float() reader takes only the second)",
    "equal_value": "harness wrong: same value in another form (math-verify proves it)",
    "side_condition": "harness wrong: answer with a side condition (`... for t > 0`) kept as part of the answer",
    "percent_rescaling": "harness wrong: pred = gold / 100 or gold x 100 accepted as a percentage",
    "corrupted_gold": "harness gold mangled by its normalisation (differs from the benchmark's own answer)",
    "run_on_pred": "harness pred ran past the answer into the following text",
    "partial_answer": "harness accepted one item of a multi-item gold",
    "truncated": "truncated response without a final answer: the two extractions took different fragments",
    "other": "other",
}


@dataclass
class ModeReport:
    mode: str
    n: int = 0
    agree_raw: int = 0
    agree_adjudicated: int = 0
    seconds: float = 0.0
    reasons: collections.Counter = field(default_factory=collections.Counter)
    classes: dict = field(default_factory=lambda: collections.defaultdict(list))  # class -> [(id, ours, harness, pred, gold, note)]

    def summary(self) -> dict:
        return {
            "mode": self.mode,
            "n": self.n,
            "agreement_raw": self.agree_raw / self.n if self.n else 0.0,
            "agreement_adjudicated": self.agree_adjudicated / self.n if self.n else 0.0,
            "disagreements_raw": self.n - self.agree_raw,
            "seconds": round(self.seconds, 2),
            "reasons": dict(self.reasons),
            "classes": {k: [i for i, *_ in v] for k, v in sorted(self.classes.items())},
        }


def load_traces(path: str | Path | None = None) -> list[dict]:
    path = path or find_shared_data() / "traces" / "sky_t1_traces.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def adjudicated(record: dict) -> bool:
    """The harness verdict, corrected where HARNESS_ERRORS shows it wrong."""
    entry = HARNESS_ERRORS.get(record["id"])
    return entry[0] if entry else bool(record["correct"])


def _run_on(pred: str) -> bool:
    # Ordinary words glued together (the harness removes spaces), outside LaTeX commands.
    return bool(re.search(r"(?<![\\A-Za-z])[A-Za-z']{10,}", pred)) or "<|" in pred


def classify(record: dict, ours: bool, pred: str | None, mode: str, grader: Grader, bench_gold: str | None) -> str:
    """Why our verdict differs from the harness's (rule based; HARNESS_ERRORS first)."""
    if record["id"] in HARNESS_ERRORS:
        return HARNESS_ERRORS[record["id"]][1]
    gold, hpred = record["gt_answer"], record["pred"]
    if bench_gold is not None and not (gold.strip() and grader.is_equivalent(gold, bench_gold)):
        return "corrupted_gold"
    if mode == "trace" and record["likely_truncated"]:
        return "truncated"
    if _run_on(hpred):
        return "run_on_pred"
    items = [s for s in gold.split(",") if s]
    if record["correct"] and len(items) > 1 and any(grader.is_equivalent(hpred, s) for s in items):
        return "partial_answer"
    p, g = _number(hpred), _number(gold)
    if record["correct"] and p and g and g[0] and p[0] / g[0] in (100, Fraction(1, 100)):
        return "percent_rescaling"
    return "other"


def benchmark_golds(root: str | None) -> dict[tuple[str, int], str]:
    """(benchmark, idx) -> the benchmark file's own gold (trace idx is the row number)."""
    golds = {}
    for name in ("math500", "minerva_math", "aime24", "amc23"):
        for i, problem in enumerate(load_benchmark(name, root)):
            golds[(name, i)] = problem.gold
    return golds


def measure(records: list[dict], grader: Grader, mode: str, golds: dict | None = None, progress: bool = True) -> ModeReport:
    report = ModeReport(mode)
    t0 = time.perf_counter()
    for record in tqdm(records, desc=f"grading ({mode})", disable=not progress or None):
        answer_type = get_benchmark(record["benchmark"]).answer_type
        if mode == "pred":
            pred = record["pred"]
            ours, reason = grader.judge(pred, record["gt_answer"], answer_type)
        else:
            result = grader.grade(record["trace"], record["gt_answer"], answer_type)
            pred, ours, reason = result.pred, result.correct, result.reason
        report.n += 1
        report.reasons[reason] += 1
        report.agree_raw += ours == bool(record["correct"])
        report.agree_adjudicated += ours == adjudicated(record)
        if ours != bool(record["correct"]):
            bench_gold = golds.get((record["benchmark"], record["idx"])) if golds else None
            cls = classify(record, ours, pred, mode, grader, bench_gold)
            note = ""
            if cls == "corrupted_gold":  # what the verdict is against the benchmark's own answer
                note = f"benchmark gold {_short(bench_gold, 24)!r}: ours={grader.is_equivalent(pred, bench_gold, answer_type)}"
            report.classes[cls].append((record["id"], ours, bool(record["correct"]), pred, record["gt_answer"], note))
    report.seconds = time.perf_counter() - t0
    return report


def _short(s: str | None, n: int = 48) -> str:
    s = "" if s is None else " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def print_report(report: ModeReport) -> None:
    s = report.summary()
    print(f"\n== from {report.mode}: n={s['n']}  agreement raw {s['agreement_raw']:.2%} "
          f"({s['disagreements_raw']} disagree), adjudicated {s['agreement_adjudicated']:.2%}  [{s['seconds']} s]")
    print("   verdict reasons:", dict(sorted(report.reasons.items())))
    for cls, rows in sorted(report.classes.items(), key=lambda kv: -len(kv[1])):
        print(f"-- {cls} ({len(rows)}): {CLASS_TEXT[cls]}")
        for rid, ours, harness, pred, gold, note in rows:
            print(f"   {rid.removeprefix('skyt1/Sky-T1-math-')}: ours={ours} harness={harness} "
                  f"pred={_short(pred)!r} gold={_short(gold)!r}" + (f"  [{note}]" if note else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", default=None, help="sky_t1_traces.jsonl.gz (default: traces/ of $VTCR_DATA or ../shared/data)")
    ap.add_argument("--benchmarks", default=None, help="benchmarks folder (for the corrupted-gold check)")
    ap.add_argument("--every", type=int, default=1, help="use every k-th record (a quick slice)")
    ap.add_argument("--no-trace", action="store_true", help="only grade the harness preds")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per math-verify comparison")
    ap.add_argument("--json", default=None, help="also write the summaries here")
    args = ap.parse_args(argv)

    records = load_traces(args.traces)[:: args.every]
    golds = benchmark_golds(args.benchmarks)
    modes = ["pred"] if args.no_trace else ["pred", "trace"]
    reports = []
    with Grader(GradeConfig(timeout_s=args.timeout)) as grader:
        for mode in modes:
            reports.append(measure(records, grader, mode, golds))
            print_report(reports[-1])
    if args.json:
        Path(args.json).write_text(json.dumps([r.summary() for r in reports], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
