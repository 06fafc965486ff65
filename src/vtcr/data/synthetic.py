"""The built-in long-reasoning task: Fibonacci mod 10 with an accumulator (seeded, exact gold answers).

A question gives a start pair and a running sum and names a stop pair::

    x=3 y=8 s=4. Repeat z=(x+y)%10, s=(s+z)%10, x=y, y=z until x=1 y=5. Answer s.

The reasoning writes one line per step: both computations, then the state the next step starts
from (x, y, s after the step)::

    (3+8)%10=1 (4+1)%10=5 -> 8 1 5
    (8+1)%10=9 (5+9)%10=4 -> 1 9 4
    ...

and stops (``</think>``) after the step whose new pair ``(y, z)`` is the stop pair (the line ends
``-> a b s``, the stop pair and the answer); the answer is the last ``s``. Start pairs lie on the
60-step cycle of the Fibonacci recurrence mod 10 (the Pisano period), so every pair of a run is new
until step 60: the stop pair, taken `length` steps ahead of the start, is first reached exactly at
step `length` (1 <= length < 60).

Every line has the same width in characters and (DejaVu Sans digits are all one advance wide) in
pixels, so a page of optical memory holding several lines always has the same layout, and what the
next round needs -- the three digits that end the page's last line -- is always in the same place,
side by side. Each line is one token per character with the built-in byte-level tokenizer.

`problems` makes seeded problem sets; `solve` recomputes a question's answer from its text alone
(an independent check of the generator); `parse_length_range` reads ``MIN:MAX`` and refuses
lengths outside the supported range.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

TASK_NAME = "builtin"
MODULUS = 10
CYCLE = 60  # the Pisano period mod 10: the cycle through (0, 1)
TRAIN_LENGTHS = (2, 32)  # steps per problem the built-in models are trained on
SUPPORTED_LENGTHS = (2, 48)  # 1.5x the longest trained: what evaluation accepts
LINES_PER_SEGMENT = 6  # steps per round of optical memory (one page)
TRAIN_SEED = 0  # the built-in models' training problems: problems(TRAIN_PROBLEMS, TRAIN_SEED, TRAIN_LENGTHS)
TRAIN_PROBLEMS = 6000
HELDOUT_SEED = 1  # the default seed of held-out evaluation problems

_QUESTION = re.compile(
    r"^\s*x=(\d) y=(\d) s=(\d)\. Repeat z=\(x\+y\)%10, s=\(s\+z\)%10, x=y, y=z until x=(\d) y=(\d)\. Answer s\.\s*$"
)


def cycle_pairs() -> list[tuple[int, int]]:
    """The 60 pairs of the cycle through (0, 1), in recurrence order."""
    pairs, (x, y) = [], (0, 1)
    for _ in range(CYCLE):
        pairs.append((x, y))
        x, y = y, (x + y) % MODULUS
    if (x, y) != (0, 1) or len(set(pairs)) != CYCLE:  # a guard on the arithmetic above
        raise AssertionError("the Fibonacci recurrence mod 10 does not have period 60")
    return pairs


@dataclass(frozen=True)
class Problem:
    """One task problem: start pair (x, y), start sum s, stop pair, and its length in steps."""

    x: int
    y: int
    s: int
    stop: tuple[int, int]
    length: int

    def question(self) -> str:
        return (
            f"x={self.x} y={self.y} s={self.s}. Repeat z=(x+y)%10, s=(s+z)%10, x=y, y=z "
            f"until x={self.stop[0]} y={self.stop[1]}. Answer s."
        )

    def lines(self) -> list[str]:
        """The reasoning, one line per step (each ends with a newline): the two computations,
        then the next state ``-> x y s``."""
        out, x, y, s = [], self.x, self.y, self.s
        for _ in range(self.length):
            z = (x + y) % MODULUS
            s_new = (s + z) % MODULUS
            out.append(f"({x}+{y})%10={z} ({s}+{z})%10={s_new} -> {y} {z} {s_new}\n")
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


def problem_at(start_index: int, s: int, length: int) -> Problem:
    """The problem that starts at pair `start_index` of the cycle with sum `s` and runs `length` steps."""
    check_length(length, (1, CYCLE - 1))
    pairs = cycle_pairs()
    x, y = pairs[start_index % CYCLE]
    return Problem(x=x, y=y, s=s % MODULUS, stop=pairs[(start_index + length) % CYCLE], length=length)


def parse_question(text: str) -> Problem | None:
    """The problem a question states, or None for any text that is not a question of the task
    (including a start pair off the 60-cycle, or a stop pair it never reaches)."""
    if not isinstance(text, str):
        return None
    m = _QUESTION.match(text)
    if not m:
        return None
    x, y, s, a, b = (int(g) for g in m.groups())
    pairs = cycle_pairs()
    if (x, y) not in pairs or (a, b) not in pairs:
        return None
    start = pairs.index((x, y))
    length = (pairs.index((a, b)) - start) % CYCLE
    if length == 0:
        return None
    return Problem(x=x, y=y, s=s, stop=(a, b), length=length)


def solve(question: str, max_steps: int = 10 * CYCLE) -> int:
    """The answer of a task question, by running the recurrence the question states until its stop
    pair (independently of `Problem.lines`). ValueError for a text that is not a task question."""
    m = _QUESTION.match(question) if isinstance(question, str) else None
    if not m:
        raise ValueError(f"not a question of the built-in task: {question!r:.80}")
    x, y, s, a, b = (int(g) for g in m.groups())
    for _ in range(max_steps):
        z = (x + y) % MODULUS
        s = (s + z) % MODULUS
        x, y = y, z
        if (x, y) == (a, b):
            return s
    raise ValueError(f"the stop pair x={a} y={b} is never reached from the start pair of {question!r:.80}")


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


def random_problem(rng: random.Random, lengths: tuple[int, int]) -> Problem:
    length = rng.randint(lengths[0], lengths[1])
    return problem_at(rng.randrange(CYCLE), rng.randrange(MODULUS), length)


def problems(
    n: int, seed: int, lengths: tuple[int, int] = TRAIN_LENGTHS, *, exclude: frozenset[str] | set[str] = frozenset()
) -> list[dict[str, Any]]:
    """`n` distinct problems (id, question, trace, answer, length), the same for the same seed.

    `exclude`: questions never to produce (e.g. a training set's, for held-out problems).
    Lengths are drawn uniformly from `lengths` (both ends included)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"number of problems must be a non-negative int, got {n!r}")
    lo, hi = parse_length_range(lengths, (1, CYCLE - 1))
    capacity = CYCLE * MODULUS * (hi - lo + 1)
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
    "HELDOUT_SEED", "TRAIN_PROBLEMS", "TRAIN_SEED", "heldout_problems", "training_questions",
    "CYCLE", "LINES_PER_SEGMENT", "SUPPORTED_LENGTHS", "TASK_NAME", "TRAIN_LENGTHS", "Problem", "check_length",
    "cycle_pairs", "parse_length_range", "parse_question", "problem_at", "problems", "random_problem", "solve",
]  # fmt: skip
