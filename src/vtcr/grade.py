"""Answer grading: pull the final answer out of a response and decide whether it equals the gold.

Three layers, each usable alone:

* `extract_answer(response, answer_type)` -> the answer string (or None): the `<answer>...</answer>`
  after the last `</think>`, else the last `\\boxed{...}`, else "the answer is ...", else the last
  number; for multiple choice a letter A-D.
* `is_equivalent(pred, gold, answer_type)` -> bool: a fast exact/numeric check first, then
  math-verify (`parse` + `verify`) for everything symbolic, under a time limit.
* `grade_response(response, gold, answer_type)` -> `GradeResult(pred, correct, reason)`.

math-verify guards itself with `signal.alarm`, which only works in the main thread. vtcr turns that
off and enforces its own limit instead: in the main thread an interval timer (cheap); in any other
thread, or whenever `GradeConfig.isolate` is set, the math-verify call runs in a worker process that
is killed when it overruns. An answer that hits the limit is counted wrong, logged, and its reason is
"timeout". For many calls from threads, hold one `Grader` (it keeps its worker process alive);
the module-level functions build a throwaway one per call.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import queue
import re
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Literal

logger = logging.getLogger(__name__)

AnswerType = Literal["math", "integer", "number", "multiple_choice"]
ANSWER_TYPES: tuple[str, ...] = ("math", "integer", "number", "multiple_choice")

# Reasons a verdict was reached (GradeResult.reason); stable strings an evaluator can count.
REASONS = ("exact", "numeric", "math_verify", "letter", "mismatch", "no_answer", "timeout")

# Ends of the thinking part: R1 / VTC-R1 style, and Sky-T1 style (the shared traces).
_THINK_END = re.compile(r"</think>|<\|end_of_thought\|>")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# "The final answer is: $x$", "the answer is x", "**Answer:** x" (a literal first, for speed)
_ANSWER_IS = re.compile(r"answer(?:\s+is|\s*[:=])\s*:?\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+)")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?:[eE][-+]?\d+)?")


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
    reason: str  # one of REASONS


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def _check_answer_type(answer_type: str) -> None:
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"unknown answer_type {answer_type!r}; expected one of {', '.join(ANSWER_TYPES)}")


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The content of the `{...}` group opening at `text[start]`, and the index after it.

    Counts nesting and skips escaped braces (`\\{`), which are literal in LaTeX.
    """
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None  # unbalanced: the response was cut off inside the box


def boxed_contents(text: str) -> list[str]:
    """Contents of every `\\boxed{...}`, `\\boxed x` and `\\fbox{...}` in `text`, in order."""
    found = []
    for match in _BOXED.finditer(text):
        i = match.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            group = _braced(text, i)
            if group is not None:
                found.append(group[0])
        elif i > match.end():  # `\boxed 5`: the next token
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                found.append(token.group(0))
    return found


def last_boxed(text: str) -> str | None:
    """The last non-empty boxed content in `text`, stripped, or None."""
    for content in reversed(boxed_contents(text)):
        if content.strip():
            return content.strip()
    return None


def _strip_math(text: str) -> str:
    """Drop math delimiters, Markdown emphasis and trailing punctuation around an answer."""
    s = text.strip()
    for _ in range(3):  # nested wrappers like `**$x$**.`
        before = s
        s = s.strip().strip("*").strip()
        s = re.sub(r"[.,;:]+$", "", s).strip()  # not "!": 5! is a factorial
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
                s = s[len(left) : len(s) - len(right)].strip()
        if s == before:
            break
    return s


# Phrases after "the answer is" that judge the work instead of stating a result.
_NOT_ANSWERS = {"correct", "incorrect", "right", "wrong", "consistent", "confirmed", "verified", "valid",
                "the same", "as follows", "below", "above", "clear", "indeed", "yes, correct"}
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)


def _answer_phrase(rest: str) -> str | None:
    """The answer named by the words after "the answer is" (None when they name none)."""
    line = rest.split("\n")[0]
    boxed = last_boxed(line)
    if boxed:
        return boxed
    sentence = re.split(r"\.(?:\s|$)", line)[0]
    span = _MATH_SPAN.search(sentence)  # "... is definitely \\(8000\\)."
    if span:
        inner = next(g for g in span.groups() if g is not None).strip()
        if inner:
            return inner
    phrase = _strip_math(sentence)
    if not phrase or phrase.lower() in _NOT_ANSWERS:
        return None
    words = phrase.split()
    lead = words[0].lower().strip(",;:")
    if re.fullmatch(r"-?\d+(?:\.\d+)?", lead) or lead in _NUMBER_WORDS:
        # "three boxes contain neither pens nor pencils" -> "3"; "27 miles" keeps its unit
        return _NUMBER_WORDS.get(lead, phrase if len(words) <= 3 else lead)
    return phrase if len(words) <= 3 else None  # a long sentence is prose, not an answer


def _answer_is(text: str) -> str | None:
    """The answer after the last "the answer is" / "Answer:" that names one."""
    for match in reversed(list(_ANSWER_IS.finditer(text))):
        found = _answer_phrase(match.group(1))
        if found:
            return found
    return None


def _last_number(text: str) -> str | None:
    # Numbers sit near the end of a long response: scan its tail first.
    tail = text[-4000:]
    matches = _NUMBER.findall(tail)
    if len(tail) < len(text) and (not matches or tail.startswith(matches[0]) and len(matches) == 1):
        matches = _NUMBER.findall(text)
    if not matches:
        return None
    number = matches[-1].rstrip(",")
    if "," in number:  # 1,000 is a thousand; in "1,2,3" the last number is 3
        number = number.replace(",", "") if _THOUSANDS.fullmatch(number) else number.rsplit(",", 1)[1]
    return number or None


def _letter(text: str | None) -> str | None:
    """The choice letter a short answer names: `C`, `(C)`, `\\text{C}`, `C) 42`, `Option C`."""
    if not text:
        return None
    s = _strip_math(text)
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}", r"\1", s)
    s = _strip_math(s)
    s = re.sub(r"^(?:option|choice|answer)\s*:?\s*", "", s, flags=re.IGNORECASE)
    m = re.match(r"^[(\[]?\s*([A-Da-d])\s*[)\]]?(?=$|[\s.:,)])", s)
    if m and (m.group(1).isupper() or len(s) <= 3):  # a lone lower-case "c" is a letter; "c is ..." is not
        return m.group(1).upper()
    return None


def _regions(response: str) -> list[str]:
    """Where to look for the answer: the text after the last end-of-thinking mark, then everything."""
    ends = list(_THINK_END.finditer(response))
    if ends:
        tail = response[ends[-1].end() :]
        return [tail, response] if tail.strip() else [response]
    return [response]


def _answer_tag(text: str) -> str | None:
    for inner in reversed(_ANSWER_TAG.findall(text)):
        if inner.strip():
            boxed = last_boxed(inner)
            return boxed if boxed else _strip_math(inner)
    return None


def extract_answer(response: str | None, answer_type: str = "math") -> str | None:
    """The final answer of a model response, or None when it gives none.

    Math: `<answer>` tags after the last `</think>`, else the last `\\boxed{}`, else the phrase
    after "the answer is", else the last number. The part after the last `</think>` is searched
    first; the whole text only when it holds no tag, box or answer phrase (a truncated response).
    Multiple choice: a letter A-D from the same places, or from "answer is (C)"-style phrases.
    """
    _check_answer_type(answer_type)
    if not response:
        return None
    regions = _regions(response)
    if answer_type == "multiple_choice":
        return _extract_letter(regions)
    for region in regions:
        for finder in (_answer_tag, last_boxed, _answer_is):
            found = finder(region)
            if found:
                return found
    return _last_number(regions[0]) or _last_number(response)


def _extract_letter(regions: list[str]) -> str | None:
    for region in regions:
        for finder in (_answer_tag, last_boxed, _answer_is):
            letter = _letter(finder(region))
            if letter:
                return letter
        # Looser phrasings, last one wins: "the correct option is (B)", "**Answer: C**".
        loose = re.findall(
            r"(?:answer|option|choice)\W{0,6}(?:is\W{0,6})?(?:option\s+)?\(?([A-D])\)?(?![A-Za-z])",
            region,
            flags=re.IGNORECASE,
        )
        if loose:
            return loose[-1].upper()
    return None


# --------------------------------------------------------------------------------------------
# Equivalence: fast checks
# --------------------------------------------------------------------------------------------

_SPACING = re.compile(r"\\[,;:! ]|\\q?quad|~")


def _canon(s: str) -> str:
    """A spelling-insensitive form of a LaTeX answer, for the exact-match shortcut only."""
    s = _strip_math(s)
    s = re.sub(r"\\(?:left|right|displaystyle)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = _SPACING.sub("", s)
    s = re.sub(r"([_^])\{(\w)\}", r"\1\2", s)  # E_{1} -> E_1, x^{2} -> x^2
    s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s)  # degrees
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\s+", "", s)
    return s


_REMARK = re.compile(r",?\s*(?:\\q?quad|\\text\s*\{\s*(?:for|if|when|where|with)\b).*$", re.DOTALL)


def _drop_remark(s: str) -> str:
    """`x = 2, \\quad \\text{for } y > 0` -> `x = 2`: a side condition is not part of the answer."""
    head = _REMARK.sub("", s).strip()
    return head if head else s


def _number(s: str) -> tuple[Fraction, bool] | None:
    """A plain number written in `s` (commas, %, $, degrees, `\\frac{1}{2}`, `1.2\\times10^{5}`).

    Returns (value, had_percent) or None when `s` is not just a number.
    """
    t = _strip_math(s)
    # Trailing unit words and ordinals: "12^{\\text{th}}\\text{ grade}", "5\\ \\mathrm{cm}"
    t = re.sub(r"(?:\s*\\(?:text|mbox|mathrm)\s*\{[~\s]*[A-Za-z][^{}]*\}(?:\^\{?-?\d+\}?)?)+\s*$", "", t)
    t = re.sub(r"\^\s*\{?\s*(?:\\text\s*\{)?\s*(?:st|nd|rd|th)\s*\}?\}?\s*$", "", t)
    t = re.sub(r"\\text\s*\{\s*\}|\\[,;:! ]|\s+", "", t)
    t = re.sub(r"^\\\$|^\$", "", t)
    t = re.sub(r"\^\{?\\circ\}?$|°$", "", t)
    percent = bool(re.search(r"\\?%$", t))
    t = re.sub(r"\\?%$", "", t)
    m = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", t) or re.fullmatch(r"(-?)(\d+)/(\d+)", t)
    if m:
        if int(m.group(3)) == 0:
            return None
        value = Fraction(int(m.group(2)), int(m.group(3)))
        return (-value if m.group(1) else value), percent
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?)\\times10\^\{?(-?\d+)\}?", t)
    if m:
        return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2)), percent
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", t):
        t = t.replace(",", "")
    if re.fullmatch(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", t):
        return Fraction(t), percent
    return None


def _close(a: Fraction, b: Fraction, rel_tol: float) -> bool:
    if a == b:
        return True
    return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=0.0)


def _numeric_verdict(pred: str, gold: str, answer_type: str, rel_tol: float) -> bool | None:
    """True/False when both sides are plain numbers, None when math-verify has to decide."""
    p, g = _number(pred), _number(gold)
    if p is None or g is None:
        return None
    (pv, p_pct), (gv, g_pct) = p, g
    if answer_type == "integer":
        return pv == gv
    candidates = [pv]
    if p_pct != g_pct:  # "50\%" against 0.5, or 0.5 against "50\%"
        candidates.append(pv / 100 if p_pct else pv * 100)
    return any(_close(c, gv, rel_tol) for c in candidates)


# --------------------------------------------------------------------------------------------
# Equivalence: math-verify under a time limit
# --------------------------------------------------------------------------------------------


class _DisabledTimeoutNotice(logging.Filter):
    """Drops math-verify's "Timeout is disabled" warning: vtcr enforces the limit itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


def _quiet_math_verify() -> None:
    for name in ("math_verify.parser", "math_verify.grader"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DisabledTimeoutNotice) for f in lg.filters):
            lg.addFilter(_DisabledTimeoutNotice())


# Spellings latex2sympy cannot read, rewritten the same way on both sides of a comparison:
# the astronomers' sun subscript, numpy function names and `1.`-style floats (minerva_math golds).
_MV_REWRITES = (
    (re.compile(r"_\{?\\odot\}?"), "_{odot}"),
    (re.compile(r"\bnp\.(arcsin|arccos|arctan|sin|cos|tan|exp|log|sqrt|pi)\b"), r"\\\1"),
    (re.compile(r"(\d)\.(?=[/*)\s]|$)"), r"\1"),
)


def _mv_parse(text: str) -> list:
    from math_verify import parse

    _quiet_math_verify()
    for pattern, repl in _MV_REWRITES:
        text = pattern.sub(repl, text)
    # Extracted answers are box contents, so box them again: math-verify then applies its
    # boxed-answer normalisation. An unbalanced fragment cannot be boxed; give it `$...$`.
    wrapped = f"\\boxed{{{text}}}" if _braced("{" + text + "}", 0) == (text, len(text) + 2) else f"${text}$"
    return parse(wrapped, parsing_timeout=None)


# A few answer shapes (sums, powers, roots, intervals, sets, tuples, equations) to compare once.
_WARMUP = (
    ("x^2+2x+1", "(x+1)^2"),
    ("\\frac{\\sqrt{3}}{2}", "0.866"),
    ("(1, 2]", "(1,2]"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
    ("y = 2x", "2x"),
)


@functools.lru_cache(maxsize=None)
def _warm_math_verify() -> None:
    """Import sympy and let the LaTeX parser and simplifier build their tables, once per process.

    The first comparisons take seconds; they must not run under a time limit, where they would
    count an answer wrong (and an interrupted import would leave the parser half-built).
    """
    for pred, gold in _WARMUP:
        math_verify_equal(pred, gold)


def math_verify_equal(pred: str, gold: str, rel_tol: float = 1e-4) -> bool:
    """math-verify's verdict, with its own signal timeouts off (the caller limits time).

    Two parsed numbers are also compared with `rel_tol`, which math-verify's fixed 6-digit
    rounding does not do (4.031882 vs 4.03188).
    """
    from math_verify import verify

    _quiet_math_verify()
    gold_parsed, pred_parsed = _mv_parse(gold), _mv_parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    if verify(gold_parsed, pred_parsed, timeout_seconds=None):
        return True
    g, p = gold_parsed[0], pred_parsed[0]
    if getattr(g, "is_number", False) and getattr(p, "is_number", False):
        try:
            gv, pv = complex(g.evalf()), complex(p.evalf())
        except (TypeError, ValueError):
            return False
        if gv.imag == 0 and pv.imag == 0:
            return math.isclose(gv.real, pv.real, rel_tol=rel_tol, abs_tol=0.0)
    return False


class _Timeout(BaseException):
    # BaseException, so that math-verify's and sympy's `except Exception` cannot swallow it.
    pass


def _raise_timeout(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Timeout()


def _can_use_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _call_with_alarm(timeout_s: float, fn, *args) -> Any:
    """Run fn(*args) in the main thread under an interval timer; raise _Timeout when it overruns.

    A timer the caller had set is re-armed afterwards with the time it had left.
    """
    previous_handler = signal.signal(signal.SIGALRM, _raise_timeout)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, timeout_s)
    start = time.monotonic()
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay > 0:
            left = previous_delay - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), previous_interval)


def _worker_main(fd: int) -> None:
    """Body of a grading worker process: answer (pred, gold, rel_tol) requests until None."""
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    _quiet_math_verify()
    _warm_math_verify()
    conn.send(("ready", None))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        try:
            conn.send(("ok", math_verify_equal(*request)))
        except Exception as exc:  # a crash in sympy is a "not equal", not a dead worker
            conn.send(("error", repr(exc)))


_WORKER_START_S = 120.0


class _Worker:
    """One grading process and the socket to it.

    A plain subprocess, not multiprocessing: spawn re-imports the caller's __main__ (breaking
    scripts without a main guard) and fork is unsafe in a process that runs other threads.
    """

    def __init__(self) -> None:
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        parent, child = socket.socketpair()
        package_parent = str(Path(__file__).resolve().parents[1])  # so the child imports this vtcr
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        code = "import sys; from vtcr.grade import _worker_main; _worker_main(int(sys.argv[1]))"
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, str(child.fileno())],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env,
            )  # fmt: skip
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        # Startup (importing sympy) must not eat into the first comparison's time limit.
        if not self.conn.poll(_WORKER_START_S) or self._recv_ready() is None:
            self.stop(kill=True)
            raise RuntimeError(f"grading worker did not start within {_WORKER_START_S:.0f} s")

    def _recv_ready(self):
        try:
            return self.conn.recv()
        except EOFError:
            return None

    def call(self, request: tuple, timeout_s: float) -> tuple[str, Any]:
        self.conn.send(request)
        if not self.conn.poll(timeout_s):
            raise _Timeout()
        return self.conn.recv()

    def stop(self, kill: bool = False) -> None:
        if not kill:
            try:
                self.conn.send(None)
                self.process.wait(timeout=5)
            except (OSError, ValueError, EOFError):
                pass
            except Exception:  # subprocess.TimeoutExpired
                kill = True
        if kill or self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.conn.close()


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


# --------------------------------------------------------------------------------------------
# Module-level convenience (one throwaway Grader per call)
# --------------------------------------------------------------------------------------------


def is_equivalent(pred: str | None, gold: str, answer_type: str = "math", *, timeout_s: float = 5.0) -> bool:
    """Whether `pred` (an extracted answer) equals `gold`. See `Grader` for repeated threaded use."""
    with Grader(GradeConfig(timeout_s=timeout_s)) as grader:
        return grader.is_equivalent(pred, gold, answer_type)


def grade_response(response: str | None, gold: str, answer_type: str = "math", *, timeout_s: float = 5.0) -> GradeResult:
    """Extract the answer of `response` and grade it against `gold`."""
    with Grader(GradeConfig(timeout_s=timeout_s)) as grader:
        return grader.grade(response, gold, answer_type)


# --------------------------------------------------------------------------------------------
# Grading a JSONL file (the `vtcr grade` verb)
# --------------------------------------------------------------------------------------------


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

    from vtcr.evaluate.benchmarks import get_benchmark, read_gold

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
    fd, tmp = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".tmp", dir=out_path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh, Grader(config) as grader:
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
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary output file
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return GradeSummary(n=n, correct=n_correct, out=str(out_path))
