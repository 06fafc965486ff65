"""Answer grading: pull the final answer out of a response and decide whether it equals the gold.

Three layers, each usable alone (Math-Verify's shape: small pure functions, frozen configs):

* `extract_answer(response, answer_type)` -> the answer string or None (`vtcr.grade.extract`).
* `is_equivalent(pred, gold, answer_type)` -> bool: fast exact / numeric checks, then math-verify
  for everything symbolic (`vtcr.grade.equivalence`), under a time limit (`vtcr.grade.isolation`).
* `grade_response(response, gold, answer_type)` -> `GradeResult(pred, correct, reason)`; for many
  calls hold one `Grader` (`vtcr.grade.grader`).

An answer that hits the time limit is counted wrong, logged, and its reason is "timeout". Grading a
JSONL file against a benchmark's gold answers is `vtcr.evaluate.grade_file`.
"""

from vtcr.grade.equivalence import math_verify_equal
from vtcr.grade.extract import ANSWER_TYPES, AnswerType, boxed_contents, extract_answer, last_answer_box, last_boxed
from vtcr.grade.grader import GRADE_REASONS, GradeConfig, Grader, GradeResult, grade_response, is_equivalent

__all__ = [
    "ANSWER_TYPES", "AnswerType", "GRADE_REASONS", "GradeConfig", "GradeResult", "Grader", "boxed_contents",
    "extract_answer", "grade_response", "is_equivalent", "last_answer_box", "last_boxed", "math_verify_equal",
]  # fmt: skip
