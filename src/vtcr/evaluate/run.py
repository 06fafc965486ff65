"""The evaluation runner: reason about benchmark problems in every mode, grade, and record each run.

    from vtcr.evaluate import EvalConfig, run_eval
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
pairs, sample-major) handed to `vtcr.engine.iter_reason`, and each run is graded and appended the
moment the engine yields it; sample k of a problem uses a sampling seed derived from
(`engine.seed`, benchmark, problem id, k) -- the same in every mode, so modes are compared
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
import re
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Iterator

from vtcr._io import write_text_atomic
from vtcr.engine import iter_reason, open_backend
from vtcr.engine.record import save_round_pages
from vtcr.evaluate.benchmarks import (
    DEFAULT_GENERATED, Benchmark, Problem, generate_benchmark, get_benchmark, gold_trace_check, load_benchmark,
)  # fmt: skip
from vtcr.evaluate.config import EvalConfig
from vtcr.evaluate.figures import format_figure
from vtcr.evaluate.report import write_reports
from vtcr.evaluate.results import (
    BATCHES_FILE, CONFIG_FILE, IMAGES_DIR, RESULTS_FILE, Key, is_protected, read_batches, read_config, read_rows,
    row_key, summarize_dir,
)  # fmt: skip
from vtcr.grade import GradeConfig, Grader

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# The output folder
# ------------------------------------------------------------------------------------------------


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


def make_row(
    record: Any, unit: "Unit", batch_id: str, grader: Any, page_files: list[list[str]] | None
) -> dict[str, Any]:
    """The results.jsonl row of one finished run of `unit`: identity, grade, then the run record."""
    problem, sample, mode = unit.problem, unit.sample, unit.mode
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
    checked = gold_trace_check(unit.benchmark, problem, [r["text"] for r in data["rounds"]])
    if checked is not None:  # generated benchmarks only: every step as the gold trace, and the first wrong one
        row.update(checked)
    row.update({k: v for k, v in data.items() if k not in row and k != "mode"})
    return row


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
        bench = get_benchmark(name)
        if bench.generator is not None:
            out[name] = generate_benchmark(bench, config.limit or DEFAULT_GENERATED, config.task_seed, config.task_length)
            continue
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
    """Reason about one batch; grade and append each run as the engine yields it. Returns the batch
    wall time (rendering and grading included)."""
    mode, bench = units[0].mode, units[0].benchmark
    save_images = config.save_images and mode == "vtc" and not is_protected(bench.name)
    engine_cfg = config.engine_config(mode, bench.answer_type, save_images)
    questions = [bench.format_prompt(u.problem.question) for u in units]
    seeds = [unit_seed(config.engine.seed, bench.name, u.problem.id, u.sample) for u in units]
    start = time.perf_counter()
    for index, record in iter_reason(questions, backend, engine_cfg, render_workers=render_workers, seeds=seeds):
        u = units[index]
        files = None
        if save_images and record.page_images:
            files = save_round_pages(record.page_images, out, image_dir(bench.name, mode, u.problem.id, u.sample))
        row = make_row(record, u, batch_id, grader, files)
        results.write(row)
        on_row(row)
    return time.perf_counter() - start


class _Tally:
    """The eval bar of one mode: runs done, and the accuracy of the runs graded so far on it."""

    def __init__(self, bar: Any, done_rows: list[dict[str, Any]]) -> None:
        self.bar = bar
        self.runs = len(done_rows)
        self.correct = sum(bool(r.get("correct")) for r in done_rows)
        self._show()

    def add(self, row: dict[str, Any]) -> None:
        self.runs += 1
        self.correct += bool(row.get("correct"))
        self.bar.update(1)
        self._show()

    def _show(self) -> None:
        if self.runs:
            self.bar.set_postfix_str(f"correct {self.correct}/{self.runs} ({format_figure(self.correct / self.runs, 'pct')}%)")


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

    backend: a ready `vtcr.engine` backend, or a mapping mode -> backend (e.g. a model trained on whole
    traces for `standard` and an optical-memory model for the other modes; every mode of the config
    needs one), else built from the config: `model` in-process on `device`/`dtype`, decoding
    `concurrency` rows together, or `server` with `concurrency` requests in flight). data_root: the
    benchmarks folder (default: see `vtcr.evaluate.benchmarks.benchmarks_root`). report: write
    summary.json, report.md, plots and index.html at the end.
    """
    from tqdm.auto import tqdm

    if isinstance(backend, Mapping):
        missing = [m for m in config.modes if m not in backend]
        if missing:
            raise ValueError(f"no backend given for mode(s) {', '.join(missing)}")
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
        if backend is None:
            backend = open_backend(config.model, server=config.server, served_model=config.served_model, device=device,
                                   dtype=dtype, concurrency=concurrency)  # fmt: skip
        results, batches = _AppendLog(results_path), _AppendLog(out / BATCHES_FILE)
        try:
            with Grader(GradeConfig(timeout_s=grade_timeout_s)) as grader:
                for mode in config.modes:
                    mode_units = [u for u in units if u.mode == mode]
                    mode_todo = [u for u in todo if u.mode == mode]
                    if not mode_todo:
                        continue
                    bar = tqdm(total=len(mode_units), initial=len(mode_units) - len(mode_todo), desc=f"eval {mode}",
                               unit="run", disable=not progress, dynamic_ncols=True)  # fmt: skip
                    tally = _Tally(bar, [r for r in rows if r.get("mode") == mode])
                    try:
                        for name in config.benchmarks:
                            bench_todo = [u for u in mode_todo if u.benchmark.name == name]
                            for chunk in _chunks(bench_todo, config.batch_size):
                                n_batches += 1
                                batch_id = f"b{n_batches:05d}"
                                wall = _run_batch(
                                    chunk, config, backend[mode] if isinstance(backend, Mapping) else backend, out,
                                    results, grader, batch_id, render_workers, on_row=tally.add,
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
    return write_reports(out, expected_runs=len(units))


