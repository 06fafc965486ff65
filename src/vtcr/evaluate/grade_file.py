"""Grading a JSONL file of model outputs against gold answers (the `vtcr grade` verb).

It lives in `evaluate` rather than `grade` because a benchmark name supplies the answer type and the
gold reader (`vtcr.evaluate.benchmarks`), and grading stays free of benchmark knowledge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from vtcr._io import atomic_open
from vtcr.evaluate.benchmarks import get_benchmark, read_gold
from vtcr.grade import GradeConfig, Grader
from vtcr.grade.extract import _check_answer_type, _strip_math


@dataclass(frozen=True)
class GradeSummary:
    n: int
    correct: int
    out: str  # where the graded records were written

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def to_dict(self) -> dict:
        return {"n": self.n, "correct": self.correct, "accuracy": self.accuracy}


def default_graded_path(path: str | Path) -> Path:
    """`runs.jsonl` -> `runs.graded.jsonl` (next to the input)."""
    path = Path(path)
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(stem + ".graded.jsonl")


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def grade_file(
    path: str | Path,
    *,
    gold_field: str,
    pred_field: str | None = None,
    response_field: str | None = None,
    benchmark: str | None = None,
    answer_type: str | None = None,
    out: str | Path | None = None,
    config: GradeConfig | None = None,
    progress: bool = True,
) -> GradeSummary:
    """Grade every record of a JSONL file; write it with `pred` and `correct` added.

    Exactly one of `pred_field` (an extracted answer, graded as is) and `response_field` (a full
    response, answer extracted first) must be given. `benchmark` (a registered name) supplies the
    answer type and gold reader (lenient: a gold already in final form is kept, a raw gsm8k
    `... #### 18` is read as 18); `answer_type` overrides it; with neither, answers are "math".
    Output goes to `out` (default `<file>.graded.jsonl`), written atomically.
    """
    from tqdm import tqdm

    gold_reader = "plain"
    if benchmark is not None:
        bench = get_benchmark(benchmark)
        gold_reader = bench.gold_reader
        answer_type = answer_type or bench.answer_type
    answer_type = answer_type or "math"
    _check_answer_type(answer_type)
    if (pred_field is None) == (response_field is None):
        raise ValueError("give exactly one of pred_field and response_field")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such JSONL file: {path}")
    out_path = Path(out) if out is not None else default_graded_path(path)
    if out_path.resolve() == path.resolve():
        raise ValueError(f"refusing to overwrite the input file {path}; choose another --out")
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {out_path.parent}")
    field = pred_field if pred_field is not None else response_field
    n = n_correct = 0
    with atomic_open(out_path) as fh, Grader(config) as grader:
        for lineno, record in tqdm(_read_jsonl(path), desc="grading", unit="rec", disable=not progress or None):
            for name in (field, gold_field):
                if name not in record:
                    raise ValueError(f"{path}:{lineno}: missing field {name!r}")
            gold = read_gold(record[gold_field], gold_reader, strict=False, where=f"{path}:{lineno}: field {gold_field!r}")
            value = record[field]
            if pred_field is not None:
                pred = None if value is None else _strip_math(str(value))
                correct, _ = grader.judge(pred, gold, answer_type)
            else:
                result = grader.grade(None if value is None else str(value), gold, answer_type)
                pred, correct = result.pred, result.correct
            fh.write(json.dumps({**record, "pred": pred, "correct": correct}, ensure_ascii=False) + "\n")
            n += 1
            n_correct += bool(correct)
    return GradeSummary(n=n, correct=n_correct, out=str(out_path))
