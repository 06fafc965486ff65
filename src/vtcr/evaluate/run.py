"""The evaluation runner: reason about benchmark problems in every mode, grade, and record each run.

    from vtcr.evaluate.run import EvalConfig, run_eval
    cfg = EvalConfig(benchmarks=("math500", "aime25"), modes=("vtc", "standard"), model="path/to/ckpt")
    summary = run_eval(cfg, "runs/eval1")          # or resume=True to continue a killed run

Output folder (`DIR`):
  config.json     the EvalConfig; a resumed run must match it key for key
  results.jsonl   one line per benchmark x problem x sample x mode, appended (flushed, fsync'd) as
                  each run finishes: the engine's run record plus benchmark, id, sample, gold, pred,
                  correct, grade_reason, latency_s and batch_id
  batches.jsonl   one line per finished batch: its id, wall time and size (batch-amortised latency)
  images/         page images of each `vtc` round (when `save_images`), referenced by the rows'
                  `rounds[i].page_files` (paths relative to DIR) and by the viewer
  summary.json, report.md, plots/*.png, index.html   written at the end (`vtcr.evaluate.report`,
                  `vtcr.evaluate.viewer`), recomputed from results.jsonl alone

Work is grouped into batches of one mode and one benchmark (up to `batch_size` problem x sample
pairs, sample-major) handed to `vtcr.engine.reason_many`; sample k of a problem uses a sampling
seed derived from (`seed`, benchmark, problem id, k) -- the same in every mode, so modes are compared
on paired draws, different across problems -- so a resumed run draws exactly what an uninterrupted
one would.

Resume: rows already in results.jsonl are skipped; a torn last line (a kill mid-write) is dropped
and the file rewritten atomically; rows that recorded an `error` (e.g. a server that went away) are
dropped too and run again. So a run killed at any point and resumed ends with exactly one line per
key.

GPQA-Diamond (`is_protected`): its questions never leave the benchmark file. Rows store
`question: null` (the id identifies the problem; reload it with `load_benchmark` when needed), no
page images are saved for it (they would show the model's text, which may quote the question), and
the viewer and report show ids, letters and figures only. The model's own text stays in
results.jsonl, a data file, so that the answers can be re-graded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from vtcr.evaluate.benchmarks import Benchmark, Problem, get_benchmark, load_benchmark

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.jsonl"
BATCHES_FILE = "batches.jsonl"
IMAGES_DIR = "images"
DEFAULT_MODES = ("vtc", "standard")
# Benchmarks whose text must never appear in human-facing output (name prefixes).
PROTECTED_PREFIXES = ("gpqa",)

Key = tuple[str, str, int, str]  # (benchmark, problem id, sample, mode)


def is_protected(benchmark: str) -> bool:
    """Whether a benchmark's questions (and the model text about them) stay out of reports."""
    return benchmark.lower().startswith(PROTECTED_PREFIXES)


@dataclass(frozen=True)
class EvalConfig:
    """Everything that decides the numbers of an evaluation; saved as DIR/config.json.

    samples: samples per problem; None uses each benchmark's default (16 for aime25/amc23, else 1).
    limit: only the first `limit` problems of each benchmark (file order).
    model: a checkpoint folder or hub id (in-process transformers), or with `server` the served
    model name is `served_model`. render_preset: None uses the model's own.
    batch_size: problem x sample pairs handed to the engine at once (bounds memory; the unit of the
    batch-amortised latency). save_images: keep each vtc round's page images for the viewer.
    Runtime-only choices (device, dtype, concurrency, render workers, grading time limit) are
    arguments of `run_eval`, not part of the config.
    """

    benchmarks: tuple[str, ...]
    modes: tuple[str, ...] = DEFAULT_MODES
    samples: int | None = None
    limit: int | None = None
    max_rounds: int = 8
    round_tokens: int = 8192
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 0
    model: str | None = None
    server: str | None = None
    served_model: str | None = None
    render_preset: str | None = None
    batch_size: int = 64
    save_images: bool = True

    def __post_init__(self) -> None:
        from vtcr.engine.modes import MODES

        # JSON gives lists; keep tuples so the config stays hashable and compares equal.
        for name in ("benchmarks", "modes"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(v.strip() for v in value.split(",") if v.strip())
            object.__setattr__(self, name, tuple(value))
        if not self.benchmarks:
            raise ValueError("no benchmarks given")
        for name in self.benchmarks:
            get_benchmark(name)  # raises naming the known ones
        if not self.modes:
            raise ValueError("no modes given")
        for mode in self.modes:
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        for name in ("benchmarks", "modes"):
            value = getattr(self, name)
            if len(set(value)) != len(value):
                raise ValueError(f"{name} lists an entry twice: {', '.join(value)}")
        for name in ("samples", "limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.server is not None and not self.served_model:
            raise ValueError("a server needs the served model name (served_model / --served-model)")
        if self.server is not None and self.model is not None:
            raise ValueError("give either a model (in-process) or a server, not both")
        self.engine_config(self.modes[0])  # validates rounds, tokens, temperature, top_p, seed

    # -- JSON ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["benchmarks"], d["modes"] = list(self.benchmarks), list(self.modes)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalConfig":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown EvalConfig keys: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "EvalConfig":
        return cls.from_dict(json.loads(text))

    # -- derived ---------------------------------------------------------------------------------

    def samples_for(self, benchmark: str) -> int:
        return self.samples if self.samples is not None else get_benchmark(benchmark).default_samples

    def engine_config(self, mode: str, answer_type: str = "math", save_images: bool = False):
        from vtcr.engine import EngineConfig

        return EngineConfig(
            mode=mode, max_rounds=self.max_rounds, round_tokens=self.round_tokens, temperature=self.temperature,
            top_p=self.top_p, seed=self.seed, render_preset=self.render_preset, save_images=save_images,
            answer_type=answer_type,
        )  # fmt: skip

    def differences(self, other: "EvalConfig") -> list[str]:
        """`key: this -> other` for every setting that differs."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(a) if a[k] != b[k]]


# ------------------------------------------------------------------------------------------------
# The output folder
# ------------------------------------------------------------------------------------------------


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_config(out_dir: str | os.PathLike) -> EvalConfig:
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} holds no {CONFIG_FILE}: not a vtcr eval folder")
    try:
        return EvalConfig.from_json(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{path}: not a valid eval config ({exc})") from None


def prepare_out_dir(out_dir: str | os.PathLike, config: EvalConfig, resume: bool) -> Path:
    """Create DIR with config.json, or check that a run there may be continued.

    A non-empty folder needs `resume`; a resumed folder must hold a run with the same settings.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a folder")
    busy = out.is_dir() and any(out.iterdir())
    if busy and not resume:
        raise ValueError(f"output folder {out} is not empty; pass --resume to continue the run in it, or choose another --out")
    if busy:
        saved = read_config(out)
        diffs = saved.differences(config)
        if diffs:
            raise ValueError(
                f"output folder {out} holds a run with different settings; refusing to mix them "
                f"({'; '.join(diffs)}). Use the same settings, or another --out"
            )
        return out
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / CONFIG_FILE, config.to_json() + "\n")
    return out


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


def _cut_torn_tail(path: Path) -> None:
    """Truncate a file to its last newline, so that appending never glues onto a torn line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


class _AppendLog:
    """An append-only JSONL file: each line flushed and fsync'd, so a kill loses only unwritten lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _cut_torn_tail(path)
        self._fh = path.open("a", encoding="utf-8")

    def write(self, obj: dict[str, Any]) -> None:
        self._fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


# ------------------------------------------------------------------------------------------------
# One run -> one row
# ------------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    """A file-name-safe, collision-free folder name for a problem id (ids may hold '/')."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:60]
    return f"{safe}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def image_dir(benchmark: str, mode: str, problem_id: str, sample: int) -> str:
    """Relative folder of one run's page images inside DIR."""
    return f"{IMAGES_DIR}/{_slug(benchmark)}/{_slug(mode)}/{_slug(problem_id)}/s{sample}"


def save_run_images(out: Path, rel_dir: str, page_images: list[list[Any]]) -> list[list[str]]:
    """Write each round's pages as `r{round}_p{page}.png`; returns their paths relative to `out`."""
    from vtcr.render import save_png

    files = []
    for r, pages in enumerate(page_images, 1):
        names = [f"{rel_dir}/r{r:02d}_p{p:03d}.png" for p in range(1, len(pages) + 1)]
        for name, img in zip(names, pages):
            save_png(img, out / name)
        files.append(names)
    return files


def make_row(
    record: Any, problem: Problem, sample: int, mode: str, batch_id: str, grader: Any, page_files: list[list[str]] | None
) -> dict[str, Any]:
    """The results.jsonl row of one finished run: identity, grade, then the run record."""
    data = record.to_dict()
    response = "".join(r["text"] for r in data["rounds"])
    result = grader.grade(response, problem.gold, problem.answer_type)
    if page_files is not None:
        for rnd, files in zip(data["rounds"], page_files):
            rnd["page_files"] = files
    if is_protected(problem.benchmark):
        data["question"] = None  # the id identifies it; never copy GPQA text out of its file
    row = {
        "benchmark": problem.benchmark, "id": problem.id, "sample": sample, "mode": mode,
        "gold": problem.gold, "pred": result.pred, "correct": result.correct, "grade_reason": result.reason,
        "latency_s": data.get("seconds"), "batch_id": batch_id,
    }  # fmt: skip
    row.update({k: v for k, v in data.items() if k not in row and k != "mode"})
    return row


# ------------------------------------------------------------------------------------------------
# Backends
# ------------------------------------------------------------------------------------------------


def build_backend(config: EvalConfig, *, device: str | None = None, dtype: str | None = None, concurrency: int = 8):
    """The backend the config names: OpenAIBackend for a server, else an in-process TransformersBackend."""
    if config.server is not None:
        from vtcr.engine.openai_backend import OpenAIBackend

        return OpenAIBackend(config.server, config.served_model, concurrency=concurrency)
    if config.model is None:
        raise ValueError("no model: give --model PATH, or --server URL with --served-model NAME")
    from vtcr.engine import TransformersBackend

    return TransformersBackend.from_pretrained(config.model, device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One run to do: a problem, a sample index, a mode."""

    benchmark: Benchmark
    problem: Problem
    sample: int
    mode: str

    @property
    def key(self) -> Key:
        return (self.problem.benchmark, self.problem.id, self.sample, self.mode)


def plan(config: EvalConfig, problems: dict[str, list[Problem]]) -> Iterator[Unit]:
    """Every run of the config, in execution order: mode, benchmark, sample, problem."""
    for mode in config.modes:
        for name in config.benchmarks:
            bench = get_benchmark(name)
            for k in range(config.samples_for(name)):
                for p in problems[name]:
                    yield Unit(bench, p, k, mode)


def load_problems(config: EvalConfig, data_root: str | os.PathLike | None = None) -> dict[str, list[Problem]]:
    """Each benchmark's first `limit` problems (all of them are read, so a bad line fails early)."""
    out = {}
    for name in config.benchmarks:
        problems = load_benchmark(name, root=data_root)
        out[name] = problems[: config.limit] if config.limit else problems
    return out


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def unit_seed(seed: int, benchmark: str, problem_id: str, sample: int) -> int:
    """The sampling seed of one problem x sample: stable across runs, modes and resumes."""
    digest = hashlib.sha256(f"{benchmark}/{problem_id}/{sample}".encode()).digest()
    return (seed + int.from_bytes(digest[:4], "big")) % (2**31)


def _run_batch(
    units: list[Unit], config: EvalConfig, backend: Any, out: Path, results: _AppendLog, grader: Any,
    batch_id: str, render_workers: int, on_row: Any,
) -> float:  # fmt: skip
    """Reason about one batch in a background thread; grade and write each run as it finishes.

    The engine calls `on_round` in its scheduler thread; finished records are queued to this (the
    main) thread, which grades them (math-verify's time limit is cheapest here) and appends them.
    Returns the batch wall time (rendering and grading included).
    """
    from vtcr.engine import reason_many

    mode, bench = units[0].mode, units[0].benchmark
    save_images = config.save_images and mode == "vtc" and not is_protected(bench.name)
    engine_cfg = config.engine_config(mode, bench.answer_type, save_images)
    questions = [bench.format_prompt(u.problem.question) for u in units]
    seeds = [unit_seed(config.seed, bench.name, u.problem.id, u.sample) for u in units]
    done: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def on_round(index: int, _round: Any, record: Any) -> None:
        if record.stop_reason is not None:
            done.put((index, record))

    def work() -> None:
        try:
            outcome["records"] = reason_many(
                questions, backend, engine_cfg, render_workers=render_workers, on_round=on_round, seeds=seeds
            )
        except BaseException as exc:  # re-raised in the main thread
            outcome["error"] = exc
        finally:
            done.put(None)

    written: set[int] = set()

    def write(index: int, record: Any) -> None:
        if index in written:
            return
        u = units[index]
        files = None
        if save_images and record.page_images:
            files = save_run_images(out, image_dir(bench.name, mode, u.problem.id, u.sample), record.page_images)
        row = make_row(record, u.problem, u.sample, mode, batch_id, grader, files)
        results.write(row)
        written.add(index)
        on_row(row)

    start = time.perf_counter()
    thread = threading.Thread(target=work, name=f"vtcr-eval-{batch_id}", daemon=True)
    thread.start()
    while True:
        item = done.get()
        if item is None:
            break
        write(*item)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    # Problems that failed before any round never reach on_round: write them from the result list.
    for index, record in enumerate(outcome["records"]):
        write(index, record)
    return time.perf_counter() - start


def run_eval(
    config: EvalConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    backend: Any = None,
    data_root: str | os.PathLike | None = None,
    device: str | None = None,
    dtype: str | None = None,
    concurrency: int = 8,
    render_workers: int = 2,
    grade_timeout_s: float = 5.0,
    progress: bool = True,
    report: bool = True,
) -> dict[str, Any]:
    """Run (or continue) an evaluation into `out_dir`; returns the summary (also DIR/summary.json).

    backend: a ready `vtcr.engine` backend (else built from the config: `model` in-process on
    `device`/`dtype`, or `server` with `concurrency` requests in flight). data_root: the
    benchmarks folder (default: see `vtcr.evaluate.benchmarks.benchmarks_root`). report: write
    summary.json, report.md, plots and index.html at the end.
    """
    from tqdm.auto import tqdm

    from vtcr.grade import GradeConfig, Grader

    if backend is None and config.model is None and config.server is None:
        raise ValueError("no model: give --model PATH, or --server URL with --served-model NAME")
    problems = load_problems(config, data_root)  # before touching DIR: bad data fails fast
    out = prepare_out_dir(out_dir, config, resume)
    results_path = out / RESULTS_FILE
    rows = read_rows(results_path, repair=True, drop_errors=True)
    done_keys = {row_key(r) for r in rows}
    units = list(plan(config, problems))
    todo = [u for u in units if u.key not in done_keys]
    # Batch ids continue after every id already used, including batches killed before they ended.
    used = [str(b) for b in read_batches(out)] + [str(r.get("batch_id")) for r in rows]
    n_batches = max((int(m.group(1)) for b in used if (m := re.fullmatch(r"b(\d+)", b))), default=0)

    if todo:
        backend = backend if backend is not None else build_backend(config, device=device, dtype=dtype, concurrency=concurrency)
        results, batches = _AppendLog(results_path), _AppendLog(out / BATCHES_FILE)
        try:
            with Grader(GradeConfig(timeout_s=grade_timeout_s)) as grader:
                for mode in config.modes:
                    mode_units = [u for u in units if u.mode == mode]
                    mode_todo = [u for u in todo if u.mode == mode]
                    if not mode_todo:
                        continue
                    bar = tqdm(total=len(mode_units), initial=len(mode_units) - len(mode_todo), desc=f"eval {mode}",
                               unit="problem", disable=not progress, dynamic_ncols=True)  # fmt: skip
                    try:
                        for name in config.benchmarks:
                            bench_todo = [u for u in mode_todo if u.benchmark.name == name]
                            for chunk in _chunks(bench_todo, config.batch_size):
                                n_batches += 1
                                batch_id = f"b{n_batches:05d}"
                                wall = _run_batch(
                                    chunk, config, backend, out, results, grader, batch_id, render_workers,
                                    on_row=lambda _row: bar.update(1),
                                )  # fmt: skip
                                batches.write({"batch_id": batch_id, "benchmark": name, "mode": mode,
                                               "size": len(chunk), "wall_s": round(wall, 6)})  # fmt: skip
                    finally:
                        bar.close()
        finally:
            results.close()
            batches.close()

    if not report:
        return summarize_dir(out, expected_runs=len(units))
    from vtcr.evaluate.report import write_reports

    return write_reports(out, expected_runs=len(units))


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
