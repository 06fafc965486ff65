"""Trace sources: OpenR1-Math-220K (parquet / JSONL / hub id) and generic long-trace JSONL.

`iter_source(config)` streams one item per source row, in source order: a `SourceProblem` (question,
one `<think>…</think>` generation, gold answer) or a `Rejected` row with a reason from `REJECT_REASONS`.
Whole files that cannot be read (a corrupt parquet, a broken gzip) come out as a `Rejected` with
`index=None` and the file name, after whatever rows of that file were read. Nothing is held in
memory beyond one batch of rows.

OpenR1-Math-220K rows (schema in DESIGN.md) hold several DeepSeek-R1 generations per problem. The
`selection` rule picks one: the first generation whose `is_reasoning_complete` is true and that is
verified correct -- by `correctness_math_verify` ("math_verify"), by `correctness_llama`
("llama"), or by math-verify with llama as fallback when no generation passes math-verify
("math_verify_then_llama", the default). A verified generation without `</think>` is passed over.

Generic JSONL (or parquet) names its fields: `problem_field`, `trace_field`, `answer_field`, and
optionally `id_field`; `keep_if`/`drop_if` keep only rows whose named field is true / false. A trace
must contain `</think>`, or Sky-T1 thought tags, which are mapped to `<think>` form by
`vtcr.data.segment.normalize_trace`. Field names missing from a file are refused up front.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vtcr.data.segment import THINK_CLOSE, normalize_trace

FORMATS = ("auto", "openr1", "jsonl")
SELECTION_RULES = ("math_verify_then_llama", "math_verify", "llama")
OPENR1_ID_FIELD = "uuid"
OPENR1_GENERATIONS = "generations"
OPENR1_COMPLETE = "is_reasoning_complete"
OPENR1_MATH_VERIFY = "correctness_math_verify"
OPENR1_LLAMA = "correctness_llama"

# Why a row (or file) was not used. Counted in stats.json and printed by the CLI.
REJECT_REASONS = {
    "filtered": "excluded by --keep-if / --drop-if",
    "missing_field": "a required field is absent or null",
    "non_string_field": "a text field is not a string",
    "empty_problem": "the question is empty",
    "empty_answer": "the gold answer is empty",
    "no_think_close": "the trace has no </think> (nor Sky-T1 thought tags)",
    "no_verified_generation": "no generation is both complete and verified correct",
    "malformed_row": "not a JSON object, or OpenR1 lists that do not line up",
    "invalid_text": "a text field is not valid Unicode (a lone surrogate escape)",
    "empty_reasoning": "nothing between <think> and </think>",
    "shorter_than_one_segment": "the reasoning fits in fewer segments than --min-segments",
    "image_placeholder_in_text": "the text contains the <image> placeholder itself",
    "build_error": "segmenting or rendering this problem failed (detail has the error)",
    "corrupt_file": "a source file could not be read (counted per file)",
}

_TABLE_SUFFIXES = (".parquet",)
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")
_BATCH_ROWS = 64


@dataclass(frozen=True)
class SourceConfig:
    """Where traces come from and how to read them. Round-trips through `to_dict`/`from_dict`."""

    path: str
    format: str = "auto"
    problem_field: str = "problem"
    trace_field: str = "trace"
    answer_field: str = "answer"
    id_field: str | None = None
    keep_if: tuple[str, ...] = ()
    drop_if: tuple[str, ...] = ()
    selection: str = "math_verify_then_llama"
    hub_config: str | None = None
    split: str = "train"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown source format {self.format!r}; known: {', '.join(FORMATS)}")
        if self.selection not in SELECTION_RULES:
            raise ValueError(f"unknown selection rule {self.selection!r}; known: {', '.join(SELECTION_RULES)}")
        for name in ("problem_field", "trace_field", "answer_field"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string")
        object.__setattr__(self, "keep_if", tuple(self.keep_if))
        object.__setattr__(self, "drop_if", tuple(self.drop_if))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["keep_if"], out["drop_if"] = list(self.keep_if), list(self.drop_if)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceConfig:
        return cls(**data)


@dataclass(frozen=True)
class SourceProblem:
    """One usable source row: the question, the chosen generation (in `<think>` form), the gold answer."""

    index: int
    id: str
    question: str
    generation: str
    answer: str
    origin: dict = field(default_factory=dict)  # file, row, and for OpenR1 the generation chosen


@dataclass(frozen=True)
class Rejected:
    """A row (index set) or a whole file (index None, file set) that was not used, and why."""

    index: int | None
    id: str | None
    reason: str
    detail: str
    file: str | None = None


# --- locating the input ------------------------------------------------------------------------


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~")) and "." not in parts[1][-8:]


def source_files(path: str | os.PathLike) -> list[Path]:
    """The data files of a local source, in their fixed (sorted relative path) order."""
    root = Path(path).expanduser()
    if root.is_file():
        return [root]
    if root.is_dir():
        files = [
            p
            for p in root.rglob("*")
            if p.is_file() and p.name.endswith(_TABLE_SUFFIXES + _JSONL_SUFFIXES)
        ]
        if not files:
            raise ValueError(f"no .parquet or .jsonl[.gz] files under {root}")
        return sorted(files, key=lambda p: p.relative_to(root).as_posix())
    raise FileNotFoundError(f"source not found: {path}")


def _is_parquet(path: Path) -> bool:
    return path.name.endswith(_TABLE_SUFFIXES)


def _open_text(path: Path):
    with path.open("rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8") if gz else path.open("r", encoding="utf-8")


# --- field checks ------------------------------------------------------------------------------


def _required_fields(config: SourceConfig, openr1: bool) -> list[tuple[str, str]]:
    """(field, flag) pairs that must exist in every file."""
    fields = [(config.problem_field, "--problem-field"), (config.answer_field, "--answer-field")]
    if openr1:
        fields += [(OPENR1_GENERATIONS, "OpenR1 schema"), (OPENR1_COMPLETE, "OpenR1 schema")]
        if config.selection != "llama":
            fields.append((OPENR1_MATH_VERIFY, "OpenR1 schema"))
        if config.selection == "llama":
            fields.append((OPENR1_LLAMA, "OpenR1 schema"))
    else:
        fields.append((config.trace_field, "--trace-field"))
    if config.id_field:
        fields.append((config.id_field, "--id-field"))
    fields += [(name, "--keep-if") for name in config.keep_if]
    fields += [(name, "--drop-if") for name in config.drop_if]
    return fields


def _is_openr1(config: SourceConfig, names: set[str]) -> bool:
    if config.format != "auto":
        return config.format == "openr1"
    return OPENR1_GENERATIONS in names and OPENR1_COMPLETE in names


def _check_fields(config: SourceConfig, names: set[str], where: str) -> bool:
    """Raise ValueError naming an unknown field; return whether `names` is an OpenR1 schema."""
    openr1 = _is_openr1(config, names)
    for name, flag in _required_fields(config, openr1):
        if name not in names:
            raise ValueError(
                f"unknown field {name!r} ({flag}) in {where}; its fields are: {', '.join(sorted(names))}"
            )
    return openr1


def _first_row_fields(path: Path) -> set[str] | None:
    """Field names of the first JSON object in a JSONL file (None if it has none readable)."""
    try:
        with _open_text(path) as fh:
            for n, line in enumerate(fh):
                if n > 1000:
                    break
                try:
                    row = json.loads(line) if line.strip() else None
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict):
                    return set(row)
    except (OSError, EOFError, UnicodeDecodeError):
        return None
    return None


@dataclass(frozen=True)
class SourceInfo:
    """What `inspect_source` found: the files (or hub id), whether each is OpenR1, total rows if known."""

    files: tuple[str, ...]
    openr1: tuple[bool | None, ...]
    total_rows: int | None
    hub: bool = False


def inspect_source(config: SourceConfig) -> SourceInfo:
    """Check every file's fields before any work (refusing unknown names); count rows when cheap."""
    if not Path(config.path).expanduser().exists() and _looks_like_hub_id(config.path):
        return SourceInfo(files=(config.path,), openr1=(None,), total_rows=None, hub=True)
    files = source_files(config.path)
    kinds: list[bool | None] = []
    total: int | None = 0
    for path in files:
        if _is_parquet(path):
            import pyarrow.parquet as pq

            try:
                meta = pq.ParquetFile(path)
            except Exception:  # unreadable: reported as a corrupt file while streaming
                kinds.append(None)
                continue
            kinds.append(_check_fields(config, set(meta.schema_arrow.names), str(path)))
            if total is not None:
                total += meta.metadata.num_rows
        else:
            names = _first_row_fields(path)
            kinds.append(None if names is None else _check_fields(config, names, str(path)))
            total = None
    return SourceInfo(files=tuple(str(p) for p in files), openr1=tuple(kinds), total_rows=total)


# --- rows -> problems --------------------------------------------------------------------------


def _text_field(row: dict, name: str, what: str) -> str | Rejected:
    value = row.get(name)
    if value is None:
        return Rejected(None, None, "missing_field", f"{what} field {name!r} is missing or null")
    if not isinstance(value, str):
        return Rejected(None, None, "non_string_field", f"{what} field {name!r} is {type(value).__name__}, not str")
    if not _valid_unicode(value):
        return Rejected(None, None, "invalid_text", f"{what} field {name!r} has a lone surrogate")
    return value


def _valid_unicode(text: str) -> bool:
    # JSON may carry lone surrogate escapes ("\ud83d"): they cannot be written as UTF-8 later.
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _filter(row: dict, config: SourceConfig) -> str | None:
    for name in config.keep_if:
        if not row.get(name):
            return f"{name} is not true"
    for name in config.drop_if:
        if row.get(name):
            return f"{name} is true"
    return None


def _select_generation(row: dict, rule: str) -> tuple[int, str, str] | Rejected:
    """(index, generation, verifier) of the generation `rule` picks, or why none qualifies."""
    gens = row.get(OPENR1_GENERATIONS)
    complete = row.get(OPENR1_COMPLETE)
    if not isinstance(gens, list) or not isinstance(complete, list) or len(complete) != len(gens):
        return Rejected(None, None, "malformed_row", "generations / is_reasoning_complete are not lists of one length")
    verifiers = {"math_verify": [OPENR1_MATH_VERIFY], "llama": [OPENR1_LLAMA]}.get(
        rule, [OPENR1_MATH_VERIFY, OPENR1_LLAMA]
    )
    verified_without_close = False
    for name in verifiers:
        flags = row.get(name)
        if flags is None:  # correctness_llama is null when llama never judged the row
            continue
        if not isinstance(flags, list) or len(flags) != len(gens):
            return Rejected(None, None, "malformed_row", f"{name} does not line up with generations")
        for i, (gen, done, ok) in enumerate(zip(gens, complete, flags)):
            if done is True and ok is True:
                if not isinstance(gen, str):
                    return Rejected(None, None, "non_string_field", f"generations[{i}] is {type(gen).__name__}")
                if not _valid_unicode(gen):
                    return Rejected(None, None, "invalid_text", f"generations[{i}] has a lone surrogate")
                if THINK_CLOSE in gen:
                    return i, gen, name
                verified_without_close = True
    if verified_without_close:
        return Rejected(None, None, "no_think_close", "every verified generation lacks </think>")
    return Rejected(None, None, "no_verified_generation", f"rule {rule}: no complete, verified generation")


def row_to_problem(row: Any, index: int, config: SourceConfig, openr1: bool, where: str) -> SourceProblem | Rejected:
    """One source row as a SourceProblem, or a Rejected with the first reason it cannot be used."""
    if not isinstance(row, dict):
        return Rejected(index, None, "malformed_row", f"row is {type(row).__name__}, not an object")
    id_field = config.id_field or (OPENR1_ID_FIELD if openr1 else "id")
    raw_id = row.get(id_field)
    pid = str(raw_id) if raw_id is not None and raw_id != "" else where
    pid = pid if _valid_unicode(pid) else where

    def reject(r: Rejected) -> Rejected:
        return Rejected(index, pid, r.reason, r.detail)

    why = _filter(row, config)
    if why:
        return Rejected(index, pid, "filtered", why)
    question = _text_field(row, config.problem_field, "problem")
    if isinstance(question, Rejected):
        return reject(question)
    answer = _text_field(row, config.answer_field, "answer")
    if isinstance(answer, Rejected):
        return reject(answer)
    if not question.strip():
        return Rejected(index, pid, "empty_problem", f"problem field {config.problem_field!r} is empty")
    if not answer.strip():
        return Rejected(index, pid, "empty_answer", f"answer field {config.answer_field!r} is empty")
    origin: dict[str, Any] = {"where": where}
    if openr1:
        picked = _select_generation(row, config.selection)
        if isinstance(picked, Rejected):
            return reject(picked)
        gen_index, trace, verifier = picked
        origin.update(generation=gen_index, verified_by=verifier)
    else:
        trace = _text_field(row, config.trace_field, "trace")
        if isinstance(trace, Rejected):
            return reject(trace)
    trace = normalize_trace(trace)
    if THINK_CLOSE not in trace:
        return Rejected(index, pid, "no_think_close", "trace has no </think>")
    return SourceProblem(index=index, id=pid, question=question.strip(), generation=trace, answer=answer.strip(), origin=origin)


# --- streaming ---------------------------------------------------------------------------------


def _parquet_rows(path: Path, config: SourceConfig, openr1: bool) -> Iterator[dict]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    wanted = {name for name, _ in _required_fields(config, openr1)}
    wanted |= {OPENR1_ID_FIELD, "id", OPENR1_LLAMA, OPENR1_MATH_VERIFY}
    columns = [name for name in pf.schema_arrow.names if name in wanted]
    # Row group by row group, so damage in one group stops the file exactly there.
    for group in range(pf.num_row_groups):
        for batch in pf.iter_batches(batch_size=_BATCH_ROWS, row_groups=[group], columns=columns):
            yield from batch.to_pylist()


def _jsonl_rows(path: Path) -> Iterator[Any]:
    """Parsed rows; a line that is not JSON yields a `_BadLine` so it is counted, not dropped."""
    with _open_text(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                yield _BadLine(str(exc))


@dataclass(frozen=True)
class _BadLine:
    error: str


def _hub_rows(config: SourceConfig) -> Iterator[dict]:
    try:
        import datasets

        ds = datasets.load_dataset(config.path, name=config.hub_config, split=config.split, streaming=True)
        first = True
        for row in ds:
            if first:
                _check_fields(config, set(row), f"hub dataset {config.path}")
                first = False
            yield row
    except (ValueError, FileNotFoundError):
        raise
    except Exception as exc:  # network / hub errors: name the id, no traceback
        raise ValueError(f"cannot stream hub dataset {config.path!r} (offline? pass a local file): {exc}") from exc


def iter_source(config: SourceConfig, info: SourceInfo | None = None) -> Iterator[SourceProblem | Rejected]:
    """Every row of the source as a SourceProblem or Rejected, in source order (global row index)."""
    info = info or inspect_source(config)
    index = 0
    if info.hub:
        for n, row in enumerate(_hub_rows(config)):
            openr1 = _is_openr1(config, set(row))
            yield row_to_problem(row, index, config, openr1, f"{config.path}#{n}")
            index += 1
        return
    root = Path(config.path).expanduser()
    for file_name, openr1 in zip(info.files, info.openr1):
        path = Path(file_name)
        label = path.name if root.is_file() else path.relative_to(root).as_posix()
        n = 0
        try:
            rows = _parquet_rows(path, config, bool(openr1)) if _is_parquet(path) else _jsonl_rows(path)
            for row in rows:
                where = f"{label}#{n}"
                if isinstance(row, _BadLine):
                    yield Rejected(index, where, "malformed_row", f"not JSON: {row.error}")
                else:
                    kind = openr1 if openr1 is not None else _is_openr1(config, set(row) if isinstance(row, dict) else set())
                    yield row_to_problem(row, index, config, kind, where)
                index += 1
                n += 1
        except Exception as exc:  # pyarrow / gzip / decoding errors: the file is damaged
            yield Rejected(None, None, "corrupt_file", f"{label}: stopped after {n} rows: {type(exc).__name__}: {exc}", file=label)
