"""vtcr's own calls use current APIs: `vtcr train` and `vtcr reason` on tiny models cause no deprecation warning.

Each command runs in a fresh process (tests/warning_probe.py) that records every Python warning
and every `transformers` log record with its call stack. A notice is vtcr's when it points at a
vtcr file, or when the innermost vtcr call on its stack passes (as a keyword) or reads (as an
attribute) the name the message calls deprecated: "`past_key_values` is deprecated ... Use `cache`"
raised inside transformers because vtcr called `model(past_key_values=...)` counts; a deprecation
inside peft or transformers that vtcr's arguments did not cause does not.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import vtcr  # noqa: E402
from data_helpers import good_traces, write_jsonl  # noqa: E402
from warning_probe import is_deprecation, record_notices, vtcr_caused  # noqa: E402

PROBE = Path(__file__).resolve().parent / "warning_probe.py"
VTCR_SRC = str(Path(vtcr.__file__).resolve().parent) + os.sep
ENGINE_DECODE = os.path.join("engine", "transformers_backend.py")  # the engine's own decode loop


def probe(cwd: Path, argv: list[str]) -> list[dict]:
    """Run `vtcr ARGV` in a fresh process; its deprecation notices that vtcr caused."""
    out = cwd / f"notices-{argv[0]}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, str(PROBE), str(out), *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, f"vtcr {argv[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    notices = json.loads(out.read_text(encoding="utf-8"))["notices"]
    return [n for n in notices if vtcr_caused(n, VTCR_SRC)]


def described(notices: list[dict]) -> str:
    lines = []
    for n in notices:
        own = [f for f in n["stack"] if f["file"].startswith(VTCR_SRC)]
        at = f"{own[-1]['file'].removeprefix(VTCR_SRC)}:{own[-1]['line']}" if own else n["file"]
        lines.append(f"{n['category']}: {n['message'][:160]} (vtcr call at {at})")
    return "\n".join(sorted(set(lines)))


def in_engine_decode(notice: dict) -> bool:
    own = [f for f in notice["stack"] if f["file"].startswith(VTCR_SRC)]
    return bool(own) and own[-1]["file"].endswith(ENGINE_DECODE)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shared_traces, qwen3_tokenizer_dir) -> Path:
    """A tiny Qwen3-VL (real tokenizer) and a small real build, made in this process."""
    from vtcr.data import BuildConfig, SourceConfig, build_dataset
    from vtcr.models import init_model

    root = tmp_path_factory.mktemp("warnings")
    init_model("qwen3-vl", "tiny", qwen3_tokenizer_dir, root / "model", seed=0)
    rows = [{"id": t["id"], "problem": t["problem"], "answer": t["gt_answer"], "trace": t["r1_style"]}
            for t in good_traces(shared_traces, 2, min_chars=3000)]  # fmt: skip
    src = write_jsonl(root / "traces.jsonl", rows)
    build_dataset(BuildConfig(SourceConfig(str(src)), segment_tokens=256), root / "build", progress=False, plots=False)
    return root


@pytest.fixture(scope="module")
def reason_notices(workdir) -> list[dict]:
    return probe(workdir, ["reason", "What is 2 + 3?", "--model", "model", "--max-rounds", "2", "--round-tokens", "6"])


def test_train_causes_no_deprecation_warning(workdir):
    notices = probe(workdir, ["train", "--data", "build", "--model", "model", "--out", "trained", "--max-steps", "1",
                              "--grad-accum", "1", "--cutoff-len", "480"])  # fmt: skip
    assert not notices, "vtcr train causes deprecation warnings:\n" + described(notices)


def test_reason_causes_no_deprecation_warning_outside_the_decode_loop(reason_notices):
    others = [n for n in reason_notices if not in_engine_decode(n)]
    assert not others, "vtcr reason causes deprecation warnings:\n" + described(others)


def test_reason_decode_loop_uses_current_transformers_arguments(reason_notices):
    decode = [n for n in reason_notices if in_engine_decode(n)]
    assert not decode, "the engine's model calls use deprecated arguments:\n" + described(decode)


# --- the attribution rule itself ---------------------------------------------------------------


LIBRARY = '''
import warnings

class Out:
    @property
    def old(self):
        warnings.warn("`old` is deprecated; use `new`", FutureWarning)
        return 1

def api(**kwargs):
    if "old" in kwargs:
        warnings.warn("`old` is deprecated; use `new`", FutureWarning)  # attributed to this file
    return Out()

def api_internal(**kwargs):
    return api(old=1)  # the library's own use of the old name
'''

OWN = '''
from library import api, api_internal

def passes_old():
    return api(
        x=1,
        old=2,
    )

def reads_old():
    return api(new=1).old

def passes_new():
    return api_internal(new=1)
'''


def test_attribution_blames_the_caller_that_passes_or_reads_the_deprecated_name(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "own").mkdir()
    (tmp_path / "lib" / "library.py").write_text(LIBRARY, encoding="utf-8")
    (tmp_path / "own" / "own_code.py").write_text(OWN, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    monkeypatch.syspath_prepend(str(tmp_path / "own"))
    import own_code

    own_root = str(tmp_path / "own") + os.sep
    verdicts = {}
    for name in ("passes_old", "reads_old", "passes_new"):
        notices: list[dict] = []
        with warnings.catch_warnings():  # restores the filters and showwarning afterwards
            handler = record_notices(notices)
            try:
                getattr(own_code, name)()
            finally:
                logging.getLogger("transformers").removeHandler(handler)
        assert notices and all(is_deprecation(n) for n in notices)
        verdicts[name] = [vtcr_caused(n, own_root) for n in notices]
    assert verdicts == {"passes_old": [True], "reads_old": [True], "passes_new": [False]}
