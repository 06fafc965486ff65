"""The Grader: extraction plus equivalence under a time limit, safe to share between threads.

For many calls from threads hold one `Grader` (it keeps its worker processes alive); the module-level
`is_equivalent` and `grade_response` build a throwaway one per call.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import asdict, dataclass, fields

from .equivalence import _canon, _drop_remark, _numeric_verdict, _warm_math_verify, math_verify_equal
from .extract import _check_answer_type, _letter, extract_answer
from .isolation import _call_with_alarm, _can_use_alarm, _Timeout, _Worker

logger = logging.getLogger(__name__)

# Why a verdict was reached (GradeResult.reason): stable strings an evaluator can count.
GRADE_REASONS = ("exact", "numeric", "math_verify", "letter", "mismatch", "no_answer", "timeout")

@dataclass(frozen=True)
class GradeConfig:
    """How answers are compared.

    timeout_s: wall-clock limit on one math-verify comparison; over it the answer counts wrong.
    rel_tol: relative tolerance for numbers (as the math-evaluation-harness: 1e-4).
    isolate: always run math-verify in a worker process (robust even to hangs in C code, and it
        frees the caller's GIL); by default only calls made outside the main thread are isolated.
    workers: most worker processes one Grader runs at once (each holds sympy, ~150 MB); more
        concurrent callers wait for a free one.
    """

    timeout_s: float = 5.0
    rel_tol: float = 1e-4
    isolate: bool = False
    workers: int = 2

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s!r}")
        if not 0 <= self.rel_tol < 1:
            raise ValueError(f"rel_tol must be in [0, 1), got {self.rel_tol!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "GradeConfig":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown GradeConfig keys: {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class GradeResult:
    pred: str | None  # the extracted answer (None: nothing found)
    correct: bool
    reason: str  # one of GRADE_REASONS


class Grader:
    """Grades answers; safe to share between threads. Use as a context manager (or call close()).

    Worker processes (for calls outside the main thread, or all calls with `isolate=True`) start
    lazily, are reused, and are killed and replaced when a comparison overruns its time limit.
    """

    def __init__(self, config: GradeConfig | None = None) -> None:
        self.config = config or GradeConfig()
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(self.config.workers)
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._closed = False

    # -- public API --------------------------------------------------------------------------

    def judge(self, pred: str | None, gold: str, answer_type: str = "math") -> tuple[bool, str]:
        """(correct, reason) for an already extracted answer against the gold answer."""
        _check_answer_type(answer_type)
        if pred is None or not str(pred).strip():
            return False, "no_answer"
        pred, gold = _drop_remark(str(pred)), str(gold)
        if answer_type == "multiple_choice":
            p, g = _letter(pred), _letter(gold)
            if g is None:
                raise ValueError(f"multiple-choice gold must be a letter A-D, got {gold!r}")
            return (p == g, "letter" if p == g else "mismatch")
        if _canon(pred) == _canon(gold) and _canon(gold):
            return True, "exact"
        numeric = _numeric_verdict(pred, gold, answer_type, self.config.rel_tol)
        if numeric is not None:
            return numeric, "numeric" if numeric else "mismatch"
        try:
            same = self._math_verify(pred, gold)
        except _Timeout:
            logger.warning(
                "grading timed out after %.1f s, counted wrong: pred=%.200r gold=%.200r",
                self.config.timeout_s, pred, gold,
            )
            return False, "timeout"
        return same, "math_verify" if same else "mismatch"

    def is_equivalent(self, pred: str | None, gold: str, answer_type: str = "math") -> bool:
        return self.judge(pred, gold, answer_type)[0]

    def grade(self, response: str | None, gold: str, answer_type: str = "math") -> GradeResult:
        pred = extract_answer(response, answer_type)
        correct, reason = self.judge(pred, gold, answer_type)
        return GradeResult(pred=pred, correct=correct, reason=reason)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, []
        while True:  # forget idle ones; all are in `workers`
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break
        for worker in workers:
            worker.stop()

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- time-limited math-verify ------------------------------------------------------------

    def _math_verify(self, pred: str, gold: str) -> bool:
        cfg = self.config
        if not cfg.isolate and _can_use_alarm():
            _warm_math_verify()
            return _call_with_alarm(cfg.timeout_s, math_verify_equal, pred, gold, cfg.rel_tol)
        with self._slots:
            worker = self._take_worker()
            try:
                status, value = worker.call((pred, gold, cfg.rel_tol), cfg.timeout_s)
            except _Timeout:
                self._drop(worker)
                raise
            except (OSError, EOFError) as exc:  # the worker died (killed from outside, out of memory)
                self._drop(worker)
                logger.warning("grading worker died (%s); answer counted wrong", exc)
                return False
            self._idle.put(worker)
        if status == "error":
            logger.debug("math-verify raised %s", value)
            return False
        return bool(value)

    def _take_worker(self) -> _Worker:
        """An idle worker, or a new one (the caller holds a slot, so at most `workers` exist)."""
        if self._closed:
            raise ValueError("this Grader is closed")
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        worker = _Worker()  # seconds: outside the lock
        with self._lock:
            if self._closed:
                worker.stop(kill=True)
                raise ValueError("this Grader is closed")
            self._workers.append(worker)
        return worker

    def _drop(self, worker: _Worker) -> None:
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
        worker.stop(kill=True)


def is_equivalent(pred: str | None, gold: str, answer_type: str = "math", *, timeout_s: float = 5.0) -> bool:
    """Whether `pred` (an extracted answer) equals `gold`. See `Grader` for repeated threaded use."""
    with Grader(GradeConfig(timeout_s=timeout_s)) as grader:
        return grader.is_equivalent(pred, gold, answer_type)


def grade_response(response: str | None, gold: str, answer_type: str = "math", *, timeout_s: float = 5.0) -> GradeResult:
    """Extract the answer of `response` and grade it against `gold`."""
    with Grader(GradeConfig(timeout_s=timeout_s)) as grader:
        return grader.grade(response, gold, answer_type)
