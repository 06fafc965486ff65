"""An eval folder's files and how to read them back: results.jsonl rows, batches, the saved config,
and the summary computed from them. The runner (`run`) writes these files; the report and the viewer
only read them, through this module.

    DIR/config.json     the EvalConfig (`vtcr.evaluate.config`)
    DIR/results.jsonl   one row per benchmark x problem x sample x mode
    DIR/batches.jsonl   one line per finished batch: its id, wall time and size
    DIR/images/         page images of `vtc` rounds, referenced by rows' `rounds[i].page_files`
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from vtcr._io import write_text_atomic
from vtcr.evaluate.config import EvalConfig

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.jsonl"
BATCHES_FILE = "batches.jsonl"
IMAGES_DIR = "images"
# Benchmarks whose text must never appear in human-facing output (name prefixes).
PROTECTED_PREFIXES = ("gpqa",)

Key = tuple[str, str, int, str]  # (benchmark, problem id, sample, mode)


def is_protected(benchmark: str) -> bool:
    """Whether a benchmark's questions (and the model text about them) stay out of reports."""
    return benchmark.lower().startswith(PROTECTED_PREFIXES)


def read_config(out_dir: str | os.PathLike) -> EvalConfig:
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} holds no {CONFIG_FILE}: not a vtcr eval folder")
    try:
        return EvalConfig.from_json(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{path}: not a valid eval config ({exc})") from None


def row_key(row: dict[str, Any]) -> Key:
    return (str(row["benchmark"]), str(row["id"]), int(row["sample"]), str(row["mode"]))


def read_rows(path: str | os.PathLike, *, repair: bool = False, drop_errors: bool = False) -> list[dict[str, Any]]:
    """The rows of a results.jsonl file.

    A torn last line (no newline, or JSON cut short: the run was killed mid-write) is dropped;
    anything else unreadable raises naming the line. With `repair`, a file that had a torn line,
    lacked its final newline or (with `drop_errors`) held error rows is rewritten atomically
    without them. Duplicate keys raise: a results file never holds two lines for one run.
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete = data.endswith(b"\n") or not data
    rows: list[dict[str, Any]] = []
    seen: dict[Key, int] = {}
    dirty = not complete
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        last = lineno == len(lines) or (lineno == len(lines) - 1 and not lines[-1])
        try:
            row = json.loads(raw)
            key = row_key(row)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            if last:
                logger.warning("%s:%d: dropping a torn last line (%s)", path, lineno, type(exc).__name__)
                dirty = True
                continue
            raise ValueError(f"{path}:{lineno}: not a results row ({exc})") from None
        if key in seen:
            raise ValueError(f"{path}:{lineno}: duplicate row for {key} (first at line {seen[key]})")
        if drop_errors and row.get("error"):
            dirty = True
            continue
        seen[key] = lineno
        rows.append(row)
    if repair and dirty:
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


def read_batches(out_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """batch_id -> {wall_s, size, ...} from batches.jsonl (a torn last line is ignored)."""
    path = Path(out_dir) / BATCHES_FILE
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            b = json.loads(line)
            out[str(b["batch_id"])] = b
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return out


def load_rows_with_batches(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """results.jsonl rows with their batch's wall time and size attached (`batch_wall_s`,
    `batch_size`; absent for a batch that was killed before it finished)."""
    out = Path(out_dir)
    batches = read_batches(out)
    rows = read_rows(out / RESULTS_FILE)
    for r in rows:
        b = batches.get(str(r.get("batch_id")))
        if b is not None:
            r["batch_wall_s"], r["batch_size"] = b["wall_s"], b["size"]
    return rows


def summarize_dir(out_dir: str | os.PathLike, expected_runs: int | None = None) -> dict[str, Any]:
    """The summary of an eval folder: its config, runs done (of `expected_runs`, when known) and the
    metrics per benchmark x mode (see `vtcr.evaluate.metrics`). Ids and numbers only, no text."""
    from vtcr.evaluate.metrics import summarise

    out = Path(out_dir)
    config = read_config(out)
    summary = summarise(load_rows_with_batches(out))
    complete = None if expected_runs is None else summary["runs"] >= expected_runs
    return {"config": config.to_dict(), "expected_runs": expected_runs, "complete": complete, **summary}
