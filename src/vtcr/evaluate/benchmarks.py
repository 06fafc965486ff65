"""Benchmarks as declarative descriptions: which file, which fields, how to read the gold answer.

One frozen `Benchmark` per evaluation set (lm-evaluation-harness style). `load_benchmark(name)` turns
its data file into `Problem`s with the gold answer already in final form. Data files live in a
benchmarks folder (`<root>/<name>/test.jsonl[.gz]`): `root` argument, else `benchmarks/` of the shared
data folder (`$VTCR_DATA`, else `../shared/data` next to the project checkout).

GPQA-Diamond's authors ask that its questions never appear in plain text: `Problem.__repr__` leaves
the question out, and nothing here prints one.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import asdict, dataclass, field, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from vtcr._io import DATA_ENV, find_shared_data
from vtcr.grade import ANSWER_TYPES, last_boxed

GoldReader = Literal["plain", "gsm8k_hashes", "last_boxed", "number", "letter"]
GOLD_READERS: tuple[str, ...] = ("plain", "gsm8k_hashes", "last_boxed", "number", "letter")

# VTC-R1 is trained on bare problem statements (OpenR1-Math), so math benchmarks ask exactly that.
MATH_PROMPT = "{question}"
# GPQA questions inline options A-D; the model must name one letter.
CHOICE_PROMPT = (
    "{question}\n\nAnswer with the letter (A, B, C or D) of the correct option, "
    "as <answer>X</answer> or \\boxed{{X}}."
)


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark's data is and how to read it.

    path: file inside the benchmarks folder (`.gz` is read transparently).
    id_field: row field used as the problem id; None numbers rows from 0 (files without ids).
    prompt: template for the user turn, with `{question}`.
    default_samples: samples per problem (avg@16 on AIME25 and AMC23 in the paper, 1 elsewhere).
    """

    name: str
    path: str
    question_field: str
    gold_field: str
    gold_reader: str = "plain"
    answer_type: str = "math"
    prompt: str = MATH_PROMPT
    default_samples: int = 1
    id_field: str | None = None
    generator: str | None = None  # a seeded task family (`vtcr.data.synthetic`) instead of a data file

    def __post_init__(self) -> None:
        if self.gold_reader not in GOLD_READERS:
            raise ValueError(f"benchmark {self.name!r}: unknown gold_reader {self.gold_reader!r}; expected one of {', '.join(GOLD_READERS)}")
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"benchmark {self.name!r}: unknown answer_type {self.answer_type!r}; expected one of {', '.join(ANSWER_TYPES)}")
        if "{question}" not in self.prompt:
            raise ValueError(f"benchmark {self.name!r}: prompt template must contain {{question}}")
        if self.default_samples < 1:
            raise ValueError(f"benchmark {self.name!r}: default_samples must be >= 1")
        if Path(self.path).is_absolute() or ".." in Path(self.path).parts:
            raise ValueError(f"benchmark {self.name!r}: path must be relative to the benchmarks folder, got {self.path!r}")

    def format_prompt(self, question: str) -> str:
        return self.prompt.format(question=question)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Benchmark":
        data = json.loads(text)
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown Benchmark keys: {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class Problem:
    id: str
    question: str = field(repr=False)  # never in repr: GPQA questions must not leak into logs
    gold: str
    answer_type: str
    benchmark: str


FIB10 = "fib10"  # the generator of the built-in task's benchmark (vtcr.data.synthetic): problems drawn, not read

BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("math500", "math500/test.jsonl", "problem", "answer", id_field="unique_id"),
    Benchmark("aime25", "aime25/test.jsonl", "problem", "answer", "number", "integer", default_samples=16, id_field="id"),
    Benchmark("amc23", "amc23/test.jsonl", "question", "answer", "number", "number", default_samples=16, id_field="id"),
    Benchmark("gsm8k", "gsm8k/test.jsonl", "question", "answer", "gsm8k_hashes", "number", id_field="idx"),
    Benchmark("gpqa_diamond", "gpqa_diamond/test.jsonl.gz", "question", "answer", "letter", "multiple_choice", prompt=CHOICE_PROMPT),
    Benchmark("aime24", "aime24/test.jsonl", "problem", "answer", "number", "integer", id_field="id"),
    Benchmark("minerva_math", "minerva_math/test.jsonl", "problem", "solution", "last_boxed", id_field="idx"),
    # The built-in task (Fibonacci mod 10 with an accumulator): problems generated from
    # EvalConfig.task_seed / task_length, none of them in the built-in models' training set.
    Benchmark("builtin", "builtin", "question", "answer", "plain", "integer", id_field="id", generator=FIB10),
)
DEFAULT_GENERATED = 100  # problems of a generated benchmark when no limit is given


def list_benchmarks() -> list[str]:
    """Names of the registered benchmarks, in registry order."""
    return [b.name for b in BENCHMARKS]


def get_benchmark(name: str) -> Benchmark:
    for bench in BENCHMARKS:
        if bench.name == name:
            return bench
    raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(list_benchmarks())}")


def read_gold(value: Any, reader: str, *, strict: bool = True, where: str = "gold") -> str:
    """The final gold answer from a raw gold field.

    strict=False keeps a value that is already in final form (no `####`, no `\\boxed`), so a file
    whose gold was read before can be graded with the benchmark's reader too.
    """
    if reader not in GOLD_READERS:
        raise ValueError(f"unknown gold_reader {reader!r}; expected one of {', '.join(GOLD_READERS)}")
    if value is None:
        raise ValueError(f"{where}: gold answer is null")
    text = str(value).strip()
    if reader == "gsm8k_hashes":
        if "####" in text:
            text = text.rsplit("####", 1)[1].strip().replace(",", "")
        elif strict:
            raise ValueError(f"{where}: no '####' final answer in the gold field")
    elif reader == "last_boxed":
        boxed = last_boxed(text)
        if boxed is not None:
            text = boxed
        elif strict:
            raise ValueError(f"{where}: no \\boxed{{}} answer in the gold field")
    elif reader == "number":
        text = _number_text(text, where)
    elif reader == "letter":
        if not re.fullmatch(r"[A-D]", text.upper()):
            raise ValueError(f"{where}: gold is not a letter A-D")
        text = text.upper()
    if not text:
        raise ValueError(f"{where}: empty gold answer")
    return text


def _number_text(text: str, where: str) -> str:
    """`27.0` -> `27`, `0.50` -> `0.5`: a canonical decimal string."""
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:
        raise ValueError(f"{where}: gold {text!r} is not a number") from None
    if not value.is_finite():
        raise ValueError(f"{where}: gold {text!r} is not a finite number")
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def benchmarks_root(root: str | Path | None = None) -> Path:
    """The benchmarks folder: `root`, else `benchmarks/` of the shared data (`$VTCR_DATA`, else
    `../shared/data` next to the project checkout; `vtcr._io.find_shared_data`)."""
    if root is not None:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"benchmarks folder {root} does not exist")
        return path
    path = find_shared_data() / "benchmarks"
    if not path.is_dir():
        raise FileNotFoundError(f"the shared data folder has no benchmarks/ folder ({path}); set {DATA_ENV} or pass root=")
    return path


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def generate_benchmark(
    benchmark: str | Benchmark, n: int = DEFAULT_GENERATED, seed: int | None = None, lengths: Any = None
) -> list[Problem]:
    """`n` problems of a generated benchmark (`builtin`): seeded, held out from the built-in models'
    training set, lengths `lengths` ("MIN:MAX" steps; default: the supported range, which spans
    the trained lengths and goes 1.5x beyond). ValueError for an unsupported length range."""
    from vtcr.data import synthetic

    bench = benchmark if isinstance(benchmark, Benchmark) else get_benchmark(benchmark)
    if bench.generator != FIB10:
        raise ValueError(f"benchmark {bench.name!r} is not a generated benchmark")
    seed = synthetic.HELDOUT_SEED if seed is None else seed
    rows = synthetic.heldout_problems(n, seed, synthetic.SUPPORTED_LENGTHS if lengths is None else lengths)
    return [Problem(id=r["id"], question=r["question"], gold=r["answer"], answer_type=bench.answer_type, benchmark=bench.name)
            for r in rows]  # fmt: skip


def gold_trace_check(bench: Benchmark, problem: Problem, round_texts: list[str]) -> dict[str, Any] | None:
    """For a problem of a generated benchmark, checked against its gold trace: {"trace_right":
    every step written right (`vtcr.data.synthetic.trace_right`), "first_wrong": where the run
    first left it, or None (`vtcr.data.synthetic.first_wrong_line`)}; None for any other
    benchmark (no gold trace)."""
    from vtcr.data import synthetic

    if bench.generator != FIB10:
        return None
    return {"trace_right": synthetic.trace_right(problem.question, "".join(round_texts)),
            "first_wrong": synthetic.first_wrong_line(problem.question, round_texts)}  # fmt: skip


def load_benchmark(benchmark: str | Benchmark, root: str | Path | None = None) -> list[Problem]:
    """The problems of a benchmark (a registered name, or your own `Benchmark`), in file order
    (a generated benchmark: its default problems, see `generate_benchmark`)."""
    bench = benchmark if isinstance(benchmark, Benchmark) else get_benchmark(benchmark)
    if bench.generator is not None:
        return generate_benchmark(bench)
    path = benchmarks_root(root) / bench.path
    if not path.is_file():
        raise FileNotFoundError(f"benchmark {bench.name!r}: data file not found: {path}")
    problems: list[Problem] = []
    seen: set[str] = set()
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
            needed = [bench.question_field, bench.gold_field] + ([bench.id_field] if bench.id_field else [])
            for name in needed:
                if not isinstance(row, dict) or name not in row:
                    raise ValueError(f"{where}: missing field {name!r}")
            pid = str(row[bench.id_field]) if bench.id_field else str(len(problems))
            if pid in seen:
                raise ValueError(f"{where}: duplicate id {pid!r} in field {bench.id_field!r}")
            seen.add(pid)
            gold = read_gold(row[bench.gold_field], bench.gold_reader, where=f"{where}: field {bench.gold_field!r}")
            problems.append(Problem(pid, str(row[bench.question_field]), gold, bench.answer_type, bench.name))
    return problems
