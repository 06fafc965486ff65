"""Small file helpers every stage shares: atomic writes, page-file names, the shared data folder.

Atomic writes go to a hidden temporary file in the target's folder and are renamed into place, so a
killed process leaves either the old file or the new one, never half of one. Files are made
world-readable (0o644): they are ordinary outputs, not secrets (`mkstemp` alone would make them
private).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

DATA_ENV = "VTCR_DATA"


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """A file to stream into that appears at `path` only when the block ends without an error
    (text modes are UTF-8). For outputs too large to build in memory first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """JSON (UTF-8, non-ASCII kept) plus a final newline."""
    return write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=indent, sort_keys=sort_keys) + "\n")


def page_file_name(page: int, round_index: int | None = None) -> str:
    """The one naming scheme for saved page images: `page_001.png` for a rendered text, and
    `round_01_page_001.png` for the pages of a reasoning round (1-based numbers)."""
    if page < 1 or (round_index is not None and round_index < 1):
        raise ValueError(f"page and round numbers start at 1, got page={page}, round={round_index}")
    name = f"page_{page:03d}.png"
    return name if round_index is None else f"round_{round_index:02d}_{name}"


def _checkout_roots() -> list[Path]:
    """Project checkouts this vtcr may run from: the one holding the imported package (an editable
    install or a source tree), then the working directory and its parents."""
    roots: list[Path] = []
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for folder in (start, *start.parents):
            pyproject = folder / "pyproject.toml"
            if pyproject.is_file() and 'name = "vtcr"' in pyproject.read_text(encoding="utf-8", errors="replace"):
                if folder not in roots:
                    roots.append(folder)
                break
    return roots


def find_shared_data(required: bool = True) -> Path | None:
    """The shared data folder (benchmarks/ and traces/): `$VTCR_DATA`, else `../shared/data` next to
    the project checkout. Raises FileNotFoundError saying how to point at it (None when not
    `required`)."""
    env = os.environ.get(DATA_ENV)
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            return path
        if required:
            raise FileNotFoundError(f"${DATA_ENV}={env} is not a folder")
        return None
    tried = []
    for root in _checkout_roots():
        candidate = root.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
        tried.append(str(candidate))
    if not required:
        return None
    where = f" (looked in {', '.join(tried)})" if tried else ""
    raise FileNotFoundError(
        f"shared data folder not found{where}: set {DATA_ENV}=/path/to/shared/data, the folder that holds "
        "benchmarks/ and traces/"
    )
