"""The reasoning loop: `iter_reason` yields each problem's run record as it finishes; `reason_many`
(all records, in input order) and `reason` (one question) are thin wrappers over it.

Each problem is a small state machine (`_Problem`): request a round -> look at its text -> stop, or
render it (``vtc``) / continue (``text``, ``no-memory``) -> request the next round. `iter_reason`
drives all of them with no round barrier, in the caller's thread: it hands ready problems to the
backend (as many at once as the backend allows, `Backend.concurrency`, default 1) and renders
finished rounds in a thread pool while other problems generate. Ready problems that are further
along go first, so few problems are in flight at once (bounded prefix-cache memory) and records
complete early. A problem whose backend call or rendering fails records `error` and the others go
on.

Optical memory is rendered with `vtcr.render.resolve_render_config(config's, backend's)`: the
config's render preset or config, else the model's own (`backend.render_config`), else the
paper's layout with a warning; every run record's config says which one was used.

Real chat templates: a backend's `prompt_opens` (``<think>\n`` for Qwen3-VL Thinking, whose
generation prompt opens the think block; empty otherwise) is put in front of the first round's
generated text, so the round text that is recorded, given to the stop rule and rendered is exactly
the segment build-data holds (its segment 0 starts with ``<think>\n``); later rounds' text is what
the model generated, as build-data's later segments are.

Sampling seeds: problem i uses `seeds[i]` (default `config.seed + i`), and round k of it the
seed `round_seed(problem_seed, k)`, so the same inputs and seeds give the same record (timings
aside), whatever else runs at the same time.
"""

from __future__ import annotations

import heapq
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

from vtcr.grade import extract_answer
from vtcr.models.conventions import round_text

from .backend import Backend, GenerationRequest, GenerationResult
from .modes import PAGE_MODES, EngineConfig, check_question, is_final, round_messages
from .record import RoundRecord, RunRecord

# on_round(problem_index, round_record, run_record): called in the caller's thread after each round.
OnRound = Callable[[int, RoundRecord, RunRecord], None]


def round_seed(problem_seed: int, round_index: int) -> int:
    """The sampling seed of round `round_index` (0-based) of a problem: distinct per round, stable."""
    return (problem_seed * 1_000_003 + round_index) % (2**63 - 1)


def _rounded(value: Any) -> float | None:
    return None if value is None else round(float(value), 6)


def run_render_config(config: EngineConfig, backend: Backend):
    """The RenderConfig of a run: the config's, else the model's (`backend.render_config`), else the
    paper's layout with a warning. None for modes that render nothing when neither is known."""
    from vtcr.render import render_config, resolve_render_config

    model = getattr(backend, "render_config", None)
    if config.mode not in PAGE_MODES:  # nothing is rendered: record what is known, warn about nothing
        return render_config(config.render) or render_config(model)
    return resolve_render_config(config.render, model, model_name=f"model {getattr(backend, 'name', '?')!r}")


@dataclass
class _Problem:
    """One problem's progress. Pure bookkeeping: the scheduler runs the backend and the renderer."""

    index: int
    question: str
    config: EngineConfig
    seed: int
    key: str
    record: RunRecord
    opens: str = ""  # what the backend's generation prompt opens of the model's turn (`prompt_opens`)
    pages: list[Any] = field(default_factory=list)  # optical memory: every page so far, in order
    started: float = 0.0
    done: bool = False

    @property
    def rounds_done(self) -> int:
        return len(self.record.rounds)

    def pages_sent(self) -> list[Any]:
        """The pages this round's prompt holds: every page so far (``vtc``), each as a blank page of
        the same size and background (``blank-memory``), or none."""
        if self.config.mode == "vtc":
            return self.pages
        if self.config.mode == "blank-memory":
            from PIL import Image

            return [Image.new(page.mode, page.size, page.getpixel((0, 0))) for page in self.pages]
        return []

    def request(self) -> GenerationRequest:
        cfg = self.config
        prefix = self.record.response if cfg.mode == "text" else ""
        if prefix and self.opens and prefix.startswith(self.opens):  # the prompt writes it already
            prefix = prefix[len(self.opens) :]
        return GenerationRequest(
            messages=round_messages(cfg, self.question, self.pages_sent()),
            max_new_tokens=cfg.tokens_per_round,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=round_seed(self.seed, self.rounds_done),
            prefix_key=self.key if cfg.mode != "standard" else None,
            assistant_prefix=prefix,
            keep_generated=cfg.mode == "text",
        )

    def on_generated(self, result: GenerationResult, images: int) -> str:
        """Record a round; returns what comes next: "render", "generate" or "done"."""
        cfg = self.config
        text = round_text(result.text, self.opens, self.rounds_done)
        self.record.rounds.append(
            RoundRecord(
                text=text, generated_tokens=result.generated_tokens, images=images,
                vision_tokens=result.vision_tokens, prompt_tokens=result.prompt_tokens,
                prefill_tokens=result.prefill_tokens, finish_reason=result.finish_reason,
                generate_s=round(result.seconds, 6), preprocess_s=round(result.preprocess_seconds, 6),
                prefill_s=_rounded(result.extra.get("prefill_s")),
            )
        )  # fmt: skip
        if cfg.save_images:
            self.record.page_images.append([])
        if not result.text.strip():
            return self.finish("empty_round")
        if is_final(self.record.response, cfg.boxed_counts_as_final):
            return self.finish("answer")
        if cfg.mode == "standard":
            return self.finish("length" if result.finish_reason == "length" else "no_answer")
        if self.rounds_done >= cfg.max_rounds:
            return self.finish("max_rounds")
        return "render" if cfg.mode in PAGE_MODES else "generate"

    def on_rendered(self, pages: list[Any], seconds: float) -> str:
        last = self.record.rounds[-1]
        last.render_s, last.pages = round(seconds, 6), len(pages)
        if self.config.save_images:
            self.record.page_images[-1] = list(pages)
        if not pages:  # text that draws nothing (whitespace, markup only) is an empty round too
            return self.finish("empty_round")
        self.pages.extend(pages)
        return "generate"

    def fail(self, exc: BaseException) -> str:
        self.record.error = f"{type(exc).__name__}: {exc}"
        return self.finish("error")

    def finish(self, reason: str) -> str:
        rec = self.record
        rec.stop_reason = reason
        rec.finished = reason == "answer"
        rec.answer = extract_answer(rec.response, self.config.answer_type) if rec.rounds else None
        rec.seconds = round(time.perf_counter() - self.started, 6)
        self.done = True
        return "done"


def _check_backend(backend: Any) -> None:
    if not callable(getattr(backend, "generate", None)):
        raise ValueError(f"backend {backend!r} has no generate(request) method")


def iter_reason(
    questions: Sequence[str],
    backend: Backend,
    config: EngineConfig | None = None,
    *,
    render_workers: int = 2,
    on_round: OnRound | None = None,
    seeds: Sequence[int] | None = None,
    concurrency: int | None = None,
    progress: bool = False,
) -> Iterator[tuple[int, RunRecord]]:
    """Reason about every question; yields `(index, RunRecord)` as each problem finishes.

    render_workers: threads that render finished rounds while other problems generate.
    concurrency: generate calls in flight at once (default `backend.concurrency`, else 1).
    seeds: one sampling seed per problem (default `config.seed + i`).
    Raises ValueError at the call, before any work, for an empty question or a bad argument.
    Closing the iterator early starts no new round; calls already in flight are waited for.
    """
    config = config or EngineConfig()
    questions = list(questions)
    for i, q in enumerate(questions):
        check_question(q, f"question {i}" if len(questions) > 1 else "question")
    _check_backend(backend)
    if seeds is not None and len(seeds) != len(questions):
        raise ValueError(f"{len(seeds)} seeds for {len(questions)} questions")
    if render_workers < 1:
        raise ValueError(f"render_workers must be >= 1, got {render_workers}")
    concurrency = int(concurrency or getattr(backend, "concurrency", None) or 1)
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    render_config = run_render_config(config, backend) if questions else None  # fails before any generation
    if render_config is not None:
        from vtcr.render import preset_name

        config = replace(config, render_preset=preset_name(render_config), render_config=render_config)
    return _drive(questions, backend, config, render_config, render_workers, on_round, seeds, concurrency, progress)


def _drive(
    questions: list[str], backend: Backend, config: EngineConfig, render_config: Any, render_workers: int,
    on_round: OnRound | None, seeds: Sequence[int] | None, concurrency: int, progress: bool,
) -> Iterator[tuple[int, RunRecord]]:  # fmt: skip
    run_id = uuid.uuid4().hex[:12]
    model_name = str(getattr(backend, "name", "?"))
    config_dict = config.to_dict()
    problems = []
    for i, q in enumerate(questions):
        seed = int(seeds[i]) if seeds is not None else config.seed + i
        record = RunRecord(question=q, mode=config.mode, model=model_name, seed=seed, config=dict(config_dict))
        problems.append(_Problem(index=i, question=q, config=config, seed=seed, key=f"vtcr-{run_id}-{i}", record=record,
                                 opens=str(getattr(backend, "prompt_opens", "") or "")))  # fmt: skip

    local = threading.local()

    def render(text: str) -> tuple[list[Any], float]:
        # One Renderer per worker thread: its glyph caches are not shared between threads.
        from vtcr.render import Renderer

        if getattr(local, "renderer", None) is None:
            local.renderer = Renderer(render_config).warm_up()
        start = time.perf_counter()
        pages = local.renderer.render(text)
        return pages, time.perf_counter() - start

    from tqdm.auto import tqdm

    bar = tqdm(total=len(problems), desc=f"reason ({config.mode})", unit="problem", disable=not progress)
    ready: list[tuple[int, int]] = [(0, p.index) for p in problems]  # (-rounds done, index): furthest first
    heapq.heapify(ready)
    pending: dict[Future, tuple[_Problem, str, int]] = {}
    finished: list[_Problem] = []
    generating = 0

    def advance(p: _Problem, step: str) -> None:
        if step == "generate":
            heapq.heappush(ready, (-p.rounds_done, p.index))
        elif step == "render":
            pending[render_pool.submit(render, p.record.rounds[-1].text)] = (p, "render", 0)
        else:  # done
            release = getattr(backend, "release", None)
            if release is not None and p.record.mode != "standard":
                try:
                    release(p.key)
                except Exception:  # forgetting a cache must never fail a finished problem
                    pass
            bar.update(1)
            finished.append(p)

    try:
        with ThreadPoolExecutor(concurrency, thread_name_prefix="vtcr-gen") as gen_pool, ThreadPoolExecutor(
            render_workers, thread_name_prefix="vtcr-render"
        ) as render_pool:
            while ready or pending or finished:
                while finished:
                    p = finished.pop(0)
                    yield p.index, p.record
                while ready and generating < concurrency:
                    _, i = heapq.heappop(ready)
                    p = problems[i]
                    if not p.started:
                        p.started = time.perf_counter()
                    try:
                        request = p.request()
                    except Exception as exc:  # e.g. a prompt the template cannot render
                        advance(p, p.fail(exc))
                        continue
                    images = len(p.pages) if config.mode in PAGE_MODES else 0
                    pending[gen_pool.submit(backend.generate, request)] = (p, "generate", images)
                    generating += 1
                if not pending:
                    continue
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    p, kind, images = pending.pop(fut)
                    if kind == "generate":
                        generating -= 1
                    rounds_before = p.rounds_done
                    try:
                        step = p.on_generated(fut.result(), images) if kind == "generate" else p.on_rendered(*fut.result())
                    except Exception as exc:
                        step = p.fail(exc)
                    # A round is complete once generated and, when it is rendered, rendered.
                    if on_round is not None and (kind == "render" or (step != "render" and p.rounds_done > rounds_before)):
                        on_round(p.index, p.record.rounds[-1], p.record)
                    advance(p, step)
    finally:
        bar.close()


def reason_many(
    questions: Sequence[str],
    backend: Backend,
    config: EngineConfig | None = None,
    **kwargs: Any,
) -> list[RunRecord]:
    """Every question's `RunRecord`, in input order (arguments as `iter_reason`)."""
    records: dict[int, RunRecord] = dict(iter_reason(questions, backend, config, **kwargs))
    return [records[i] for i in range(len(records))]


def reason(
    question: str,
    backend: Backend,
    config: EngineConfig | None = None,
    *,
    on_round: OnRound | None = None,
    seed: int | None = None,
) -> RunRecord:
    """Reason about one question; returns its run record (see `vtcr.engine.record`)."""
    seeds = None if seed is None else [seed]
    return reason_many([question], backend, config, render_workers=1, on_round=on_round, seeds=seeds)[0]
