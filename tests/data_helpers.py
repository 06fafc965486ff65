"""Test data for vtcr.data, made from the real shared traces.

OpenR1-Math-220K cannot be downloaded here, so `openr1_row` maps a real trace into the real
OpenR1 schema (DESIGN.md): several generations per problem with their completeness and
verification flags, and `write_openr1_parquet` writes them with the dataset's column types.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

OPENR1_SCHEMA = pa.schema(
    [
        ("problem", pa.string()),
        ("solution", pa.string()),
        ("answer", pa.string()),
        ("problem_type", pa.string()),
        ("question_type", pa.string()),
        ("source", pa.string()),
        ("uuid", pa.string()),
        ("is_reasoning_complete", pa.list_(pa.bool_())),
        ("generations", pa.list_(pa.string())),
        ("correctness_math_verify", pa.list_(pa.bool_())),
        ("correctness_llama", pa.list_(pa.bool_())),
        ("finish_reasons", pa.list_(pa.string())),
        ("correctness_count", pa.int64()),
        ("messages", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
    ]
)


def good_traces(shared_traces: list[dict], n: int, min_chars: int = 3000) -> list[dict]:
    """The first n R1-shaped, correct, finished traces of at least min_chars (source order)."""
    rows = [
        t
        for t in shared_traces
        if t["r1_style"] and t["correct"] and not t["likely_truncated"] and len(t["r1_style"]) >= min_chars
    ]
    assert len(rows) >= n, f"only {len(rows)} traces qualify"
    return rows[:n]


def generic_row(trace: dict, **changes) -> dict:
    """The shared-trace fields the generic JSONL source uses (plus the filter flags)."""
    row = {k: trace[k] for k in ("id", "problem", "gt_answer", "r1_style", "trace", "correct", "likely_truncated")}
    row.update(changes)
    return row


def openr1_row(trace: dict, uuid: str, *, complete=(False, True), math_verify=(True, True), llama=None,
               generations=None, answer: str | None = "gold") -> dict:
    """An OpenR1-schema row built on a real trace: generation 0 is the trace cut short (as an
    unfinished generation would be), generation 1 the whole R1-shaped trace."""
    full = trace["r1_style"]
    gens = list(generations) if generations is not None else [full[: len(full) // 3], full]
    return {
        "problem": trace["problem"],
        "solution": trace["gt_solution"],
        "answer": trace["gt_answer"] if answer == "gold" else answer,
        "problem_type": "Algebra",
        "question_type": "math-word-problem",
        "source": trace["benchmark"],
        "uuid": uuid,
        "is_reasoning_complete": list(complete),
        "generations": gens,
        "correctness_math_verify": list(math_verify),
        "correctness_llama": None if llama is None else list(llama),
        "finish_reasons": ["length" if not c else "stop" for c in complete],
        "correctness_count": sum(bool(x) for x in math_verify),
        "messages": [{"content": trace["problem"], "role": "user"}, {"content": gens[-1], "role": "assistant"}],
    }


def write_openr1_parquet(path: Path, rows: list[dict], row_group_size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=OPENR1_SCHEMA), path, row_group_size=row_group_size)
    return path


def write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n" for row in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def corrupt_mid_file(src: Path, dst: Path, row_group: int) -> Path:
    """Copy a parquet file with one row group's data page scrambled: readers fail part-way."""
    data = bytearray(src.read_bytes())
    offset = pq.ParquetFile(src).metadata.row_group(row_group).column(0).data_page_offset
    for i in range(offset + 4, offset + 200):
        data[i] ^= 0x5A
    dst.write_bytes(bytes(data))
    return dst
