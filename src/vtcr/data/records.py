"""The build's durable state: an append-only JSONL of per-problem records.

One line per finished source row (a built problem or a rejected row) and one per unreadable file,
written with flush + fsync before the next, so a killed build loses at most the rows in flight.
Every final output is derived from this file, in source order, so a resumed build and an
uninterrupted one produce the same bytes.

Record kinds (`kind`): "problem" (index, id, question, answer, turns, turn_tokens, pages, origin),
"rejected" (index, id, reason, detail) and "file_error" (file, reason, detail). `key` identifies a
record: `row:<index>` or `file:<name>`; when a key repeats, the last record wins.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

RECORDS_FILE = "problems.jsonl"


def record_key(record: dict[str, Any]) -> str:
    return f"file:{record['file']}" if record["kind"] == "file_error" else f"row:{record['index']}"


def _sort_key(record: dict[str, Any]) -> tuple:
    # Rows in source order, then file errors by name (they only feed the stats).
    return (1, record["file"], 0) if record["kind"] == "file_error" else (0, "", record["index"])


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _truncate_partial_tail(path: Path) -> None:
    """Drop a last line without its newline: the write a kill interrupted."""
    with path.open("rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        # Scan back for the previous newline in blocks.
        pos = size
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            fh.seek(pos)
            block = fh.read(step)
            nl = block.rfind(b"\n")
            if nl >= 0:
                fh.truncate(pos + nl + 1)
                return
        fh.truncate(0)


def _scan(path: Path) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(offset, length, record) of every line; a corrupt line in the middle is an error."""
    offset = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {lineno} is not a record ({exc}); delete the folder to rebuild") from None
            yield offset, len(raw), record
            offset += len(raw)


class RecordLog:
    """Append-only record file of one build folder."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / RECORDS_FILE
        self._fh: BinaryIO | None = None

    def finished_keys(self) -> set[str]:
        """Keys of records already written whose images all exist (truncating a torn last line)."""
        if not self.path.exists():
            return set()
        _truncate_partial_tail(self.path)
        done: set[str] = set()
        for _, _, record in _scan(self.path):
            key = record_key(record)
            if record["kind"] == "problem" and not all(
                (self.out_dir / page["file"]).is_file() for pages in record["pages"] for page in pages
            ):
                done.discard(key)  # an image went missing: build this problem again
                continue
            if record["kind"] != "file_error":  # unreadable files are retried every run
                done.add(key)
        return done

    def __enter__(self) -> RecordLog:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("ab")
        return self

    def append(self, record: dict[str, Any]) -> None:
        assert self._fh is not None, "use RecordLog as a context manager"
        self._fh.write(dumps(record).encode("utf-8") + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def iter_sorted(self) -> Iterator[dict[str, Any]]:
        """Every record once (last one per key), rows in source order, reading one line at a time."""
        if not self.path.exists():
            return
        latest: dict[str, tuple[tuple, int, int]] = {}
        for offset, length, record in _scan(self.path):
            latest[record_key(record)] = (_sort_key(record), offset, length)
        with self.path.open("rb") as fh:
            for _, offset, length in sorted(latest.values()):
                fh.seek(offset)
                yield json.loads(fh.read(length))
