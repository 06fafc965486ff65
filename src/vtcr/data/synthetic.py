"""The built-in long-reasoning task: Fibonacci mod 10 with an accumulator (seeded, exact gold answers).

A question gives a start pair and a running sum; the recurrence runs until y=1 and s=0 after a step,
and the answer is x at that point::

    x=3 y=8 s=4. Repeat z=(x+y)%10, s=(s+z)%10, x=y, y=z until y=1 s=0. Answer x.

The reasoning writes one line per step: the state the step starts from (x, y, s), both
computations, then the state the next step starts from (written without spaces)::

    384 (3+8)%10=1 (4+1)%10=5 ->    8      1      5
    815 (8+1)%10=9 (5+9)%10=4 ->    1      9      4
    ...

and stops (``</think>``) after the first line whose state ends ``1 0``; the answer is its first
digit. The spaces before the state's digits (`STATE_GAPS`) put each digit alone in its own 32x32 px
vision token of the built-in pages (`vtcr.builtin.recipe.builtin_render_config`): a page's state
digits are the only thing in their tokens, the same glyph for the same digit wherever it is, which
is what lets the built-in vision tower be aligned to the digits' embeddings (MODEL_CARD.md).

Why this stop rule. Whether to stop is read off the line just written (its state ends ``10``), the
same local rule at every length, so a model trained on short problems can stop right on longer
ones. Two earlier versions failed in ways this one avoids: a stop pair named by each question must
be compared with the question far back in the context at every line, and the tiny built-in models
never learned that (they stopped after the longest trained trace instead); a fixed stop *pair*
((x, y) = (0, 1)) makes the start pair alone fix the length and the whole (x, y) trajectory, so the
31 start pairs of the trained lengths were memorized (round one went wrong from the first unseen
start pair). Here the stop involves the sum, so the length and the trajectory depend on all three
start digits: 270 problems of 2-32 steps from 72 start pairs, and every start pair of a longer
problem also starts a trained one (with another sum). The state is a permutation of 1,000 triples,
so a length has at most 10 problems; lengths 1-60 occur.

Every line has the same width in characters and (DejaVu Sans digits are all one advance wide) in
pixels, so a page of optical memory holding several lines always has the same layout, and what the
next round needs -- the three digits that end the page's last line -- is always in the same place,
three vision tokens of the page's last row. A round's first line copies
them first (the state is written at both ends of a line), so every digit read from a page is read
one after the other at the start of the round. Each line is one token per character with the
built-in tokenizer.

`problems` makes seeded problem sets; `solve` recomputes a question's answer from its text alone
(an independent check of the generator); `parse_length_range` reads ``MIN:MAX`` and refuses
lengths outside the supported range.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

TASK_NAME = "builtin"
MODULUS = 10
MAX_LENGTH = 60  # the longest first passage to (y, s) = (1, 0) from any start
TRAIN_LENGTHS = (2, 32)  # steps per problem the built-in models are trained on
SUPPORTED_LENGTHS = (2, 48)  # 1.5x the longest trained: what evaluation accepts
LINES_PER_SEGMENT = 6  # steps per round of optical memory (one page)
STOP = (1, 0)  # (y, s) after the step that ends a run
TRAIN_SEED = 0  # the built-in models' training problems: problems(TRAIN_PROBLEMS, TRAIN_SEED, TRAIN_LENGTHS)
# 216 of the 270 problems of lengths 2-32: the other 54 stay held out, so that held-out problems
# exist at every trained length too.
TRAIN_PROBLEMS = 216
HELDOUT_SEED = 1  # the default seed of held-out evaluation problems
STATE_GAPS = (4, 6, 6)  # spaces written before each digit of a line's final state (after "->")

_QUESTION = re.compile(
    r"^\s*x=(\d) y=(\d) s=(\d)\. Repeat z=\(x\+y\)%10, s=\(s\+z\)%10, x=y, y=z until y=1 s=0\. Answer x\.\s*$"
)


def _step(x: int, y: int, s: int) -> tuple[int, int, int]:
    z = (x + y) % MODULUS
    return y, z, (s + z) % MODULUS


def first_passage(x: int, y: int, s: int, max_steps: int = MAX_LENGTH) -> int | None:
    """Steps from (x, y, s) until y=1 and s=0 after a step (None if not within `max_steps`)."""
    for n in range(1, max_steps + 1):
        x, y, s = _step(x, y, s)
        if (y, s) == STOP:
            return n
    return None


def problems_of_length(length: int) -> list[Problem]:
    """Every problem of exactly `length` steps, in (x, y, s) order (at most 10)."""
    check_length(length, (1, MAX_LENGTH))
    return list(_by_length().get(length, ()))


@lru_cache(maxsize=1)
def _by_length() -> dict[int, tuple[Problem, ...]]:
    out: dict[int, list[Problem]] = {}
    for x in range(MODULUS):
        for y in range(MODULUS):
            for s in range(MODULUS):
                length = first_passage(x, y, s)
                if length is not None:
                    out.setdefault(length, []).append(Problem(x, y, s, length))
    return {k: tuple(v) for k, v in out.items()}


@dataclass(frozen=True)
class Problem:
    """One task problem: start pair (x, y), start sum s, and its length in steps."""

    x: int
    y: int
    s: int
    length: int

    def question(self) -> str:
        return f"x={self.x} y={self.y} s={self.s}. Repeat z=(x+y)%10, s=(s+z)%10, x=y, y=z until y=1 s=0. Answer x."

    def lines(self) -> list[str]:
        """The reasoning, one line per step (each ends with a newline): the state the step starts
        from, the two computations, then the next state (``->`` and its digits, `state_text`)."""
        out, x, y, s = [], self.x, self.y, self.s
        for _ in range(self.length):
            z = (x + y) % MODULUS
            s_new = (s + z) % MODULUS
            out.append(f"{x}{y}{s} ({x}+{y})%10={z} ({s}+{z})%10={s_new} ->{state_text(y, z, s_new)}\n")
            x, y, s = y, z, s_new
        return out

    def answer(self) -> str:
        return str(solve(self.question()))

    def trace(self) -> str:
        """The whole generation in the `reasoning</think>` form the builder reads (no opening tag,
        so every page holds state lines only)."""
        return "".join(self.lines()) + "</think>"

    def rounds(self, lines_per_segment: int = LINES_PER_SEGMENT) -> int:
        """Rounds a model that writes `lines_per_segment` lines per round needs (the answer rides
        on the round of the last line)."""
        return -(-self.length // lines_per_segment)


def state_text(*digits: int) -> str:
    """A line's final state as written after ``->``: each digit after its `STATE_GAPS` spaces."""
    return "".join(" " * gap + str(d) for gap, d in zip(STATE_GAPS, digits, strict=True))


def line_state(line: str) -> str:
    """The three digits of the state that ends a task line ("" if the line has none)."""
    _, sep, tail = line.rpartition("->")
    digits = tail.split()
    return "".join(digits) if sep and len(digits) == 3 and all(len(d) == 1 and d.isdigit() for d in digits) else ""


def parse_question(text: str) -> Problem | None:
    """The problem a question states, or None for any text that is not a question of the task
    (including a start that does not reach y=1 s=0 within 60 steps)."""
    if not isinstance(text, str):
        return None
    m = _QUESTION.match(text)
    if not m:
        return None
    x, y, s = (int(g) for g in m.groups())
    length = first_passage(x, y, s)
    return None if length is None else Problem(x=x, y=y, s=s, length=length)


def trace_right(question: str, response: str) -> bool | None:
    """Whether `response` writes every step of the question's trace as `Problem.lines` has it, in
    order from the first (its task lines, those with ``->``, start with the whole gold trace);
    None for a text that is not a task question. Stricter than a right answer, which a run can
    reach by chance (1 in 10) after a wrong line."""
    problem = parse_question(question)
    if problem is None:
        return None
    written = [line + "\n" for line in response.splitlines() if "->" in line]
    gold = problem.lines()
    return written[: len(gold)] == gold


WRONG_LINE_KINDS = ("read", "compute", "stopped")  # what `first_wrong_line` calls each first wrong line


def first_wrong_line(question: str, round_texts: list[str]) -> dict[str, Any] | None:
    """Where a run written in rounds first leaves the question's gold trace: {"step" (1-based),
    "round" (1-based), "line" (0-based, in its round), "char" (the first wrong character), "kind"}.
    Kind "read": a round after the first wrote a wrong character among its first three, the
    state it copies from the last page; "compute": any other wrong character (a step computed
    wrong, or a state copied wrong from the line before); "stopped": the run wrote fewer task
    lines than the trace has (line and char None). None when every step is right, or for a text
    that is not a task question."""
    problem = parse_question(question)
    if problem is None:
        return None
    gold, step = problem.lines(), 0
    for number, text in enumerate(round_texts, start=1):
        for index, line in enumerate(ln + "\n" for ln in text.splitlines() if "->" in ln):
            if step == len(gold):
                return None
            want = gold[step]
            if line != want:
                char = next((k for k, (a, b) in enumerate(zip(line, want)) if a != b), min(len(line), len(want)))
                kind = "read" if number > 1 and index == 0 and char < 3 else "compute"
                return {"step": step + 1, "round": number, "line": index, "char": char, "kind": kind}
            step += 1
    if step < len(gold):
        return {"step": step + 1, "round": len(round_texts), "line": None, "char": None, "kind": "stopped"}
    return None


def solve(question: str, max_steps: int = 10 * MAX_LENGTH) -> int:
    """The answer of a task question, by running the recurrence the question states until y=1 s=0
    (independently of `Problem.lines`). ValueError for a text that is not a task question."""
    m = _QUESTION.match(question) if isinstance(question, str) else None
    if not m:
        raise ValueError(f"not a question of the built-in task: {question!r:.80}")
    x, y, s = (int(g) for g in m.groups())
    for _ in range(max_steps):
        z = (x + y) % MODULUS
        s = (s + z) % MODULUS
        x, y = y, z
        if y == 1 and s == 0:
            return x
    raise ValueError(f"y=1 s=0 is never reached from the start of {question!r:.80}")


def check_length(length: int, supported: tuple[int, int] = SUPPORTED_LENGTHS) -> int:
    if isinstance(length, bool) or not isinstance(length, int) or not supported[0] <= length <= supported[1]:
        raise ValueError(f"task length {length!r} is not supported: the built-in task supports {supported[0]}:{supported[1]} steps")
    return length


def parse_length_range(spec: Any, supported: tuple[int, int] = SUPPORTED_LENGTHS) -> tuple[int, int]:
    """`"MIN:MAX"` (or `"N"`, or a pair) as (min, max) steps; ValueError naming the supported range."""
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        lo, hi = spec
    else:
        text = str(spec).strip()
        m = re.fullmatch(r"(\d+)(?::(\d+))?", text)
        if not m:
            raise ValueError(f"task length {spec!r}: expected MIN:MAX steps (supported {supported[0]}:{supported[1]})")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
    if isinstance(lo, bool) or isinstance(hi, bool) or not isinstance(lo, int) or not isinstance(hi, int) or lo > hi:
        raise ValueError(f"task length {spec!r}: expected MIN:MAX with MIN <= MAX (supported {supported[0]}:{supported[1]})")
    if lo < supported[0] or hi > supported[1]:
        raise ValueError(
            f"task length {lo}:{hi} is not supported: the built-in models support {supported[0]}:{supported[1]} steps "
            f"(trained on {TRAIN_LENGTHS[0]}:{TRAIN_LENGTHS[1]})"
        )
    return lo, hi


def reading_lines(rng: random.Random, n: int = LINES_PER_SEGMENT) -> list[str]:
    """`n` lines of the task's shape whose every digit is drawn at random (they do not follow the
    recurrence): text that can only be written back right by reading it, for the built-in models'
    reading stage. Each ends with a newline, as `Problem.lines`."""
    def d() -> int:
        return rng.randrange(MODULUS)

    return [f"{d()}{d()}{d()} ({d()}+{d()})%10={d()} ({d()}+{d()})%10={d()} ->{state_text(d(), d(), d())}\n" for _ in range(n)]


def random_problem(rng: random.Random, lengths: tuple[int, int]) -> Problem:
    """A length uniform in `lengths`, then one of that length's problems."""
    return rng.choice(problems_of_length(rng.randint(lengths[0], lengths[1])))


def problems(
    n: int, seed: int, lengths: tuple[int, int] = TRAIN_LENGTHS, *, exclude: frozenset[str] | set[str] = frozenset()
) -> list[dict[str, Any]]:
    """`n` distinct problems (id, question, trace, answer, length), the same for the same seed.

    `exclude`: questions never to produce (e.g. a training set's, for held-out problems).
    Lengths are drawn uniformly from `lengths` (both ends included)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"number of problems must be a non-negative int, got {n!r}")
    lo, hi = parse_length_range(lengths, (1, MAX_LENGTH))
    capacity = sum(len(problems_of_length(k)) for k in range(lo, hi + 1))
    if n > capacity:
        raise ValueError(f"only {capacity} distinct problems have lengths {lo}:{hi}; asked for {n}")
    rng = random.Random(seed)
    seen = set(exclude)
    out: list[dict[str, Any]] = []
    for _ in range(100 * capacity):
        if len(out) == n:
            break
        p = random_problem(rng, (lo, hi))
        q = p.question()
        if q in seen:
            continue
        seen.add(q)
        out.append({"id": f"fib-{seed}-{len(out)}", "question": q, "trace": p.trace(), "answer": p.answer(),
                    "length": p.length})  # fmt: skip
    if len(out) < n:
        raise ValueError(f"only {len(out)} problems of lengths {lo}:{hi} are not excluded; asked for {n}")
    return out


def training_questions() -> frozenset[str]:
    """The questions of the built-in models' training set."""
    return frozenset(p["question"] for p in problems(TRAIN_PROBLEMS, TRAIN_SEED, TRAIN_LENGTHS))


def heldout_problems(n: int, seed: int = HELDOUT_SEED, lengths: Any = SUPPORTED_LENGTHS) -> list[dict[str, Any]]:
    """`n` problems none of which is in the training set, lengths within `lengths` ("MIN:MAX"
    or a pair; refused outside SUPPORTED_LENGTHS). Ids are `fib-h<seed>-<i>`."""
    lo, hi = parse_length_range(lengths)
    out = problems(n, seed, (lo, hi), exclude=training_questions())
    for i, p in enumerate(out):
        p["id"] = f"fib-h{seed}-{i}"
    return out


__all__ = [
    "HELDOUT_SEED", "TRAIN_PROBLEMS", "TRAIN_SEED", "heldout_problems", "training_questions", "MAX_LENGTH", "STOP",
    "LINES_PER_SEGMENT", "SUPPORTED_LENGTHS", "TASK_NAME", "TRAIN_LENGTHS", "Problem", "check_length",
    "first_passage", "parse_length_range", "parse_question", "problems", "problems_of_length", "random_problem", "reading_lines", "solve",
    "STATE_GAPS", "line_state", "state_text", "trace_right",
]  # fmt: skip
