"""The engine's loop logic: the stop rule, the modes' prompts, run records, `reason_many` scheduling.

The backend here is a scripted test double implementing the `Backend` protocol (it replays given
round texts, e.g. real reasoning traces cut into rounds); the real transformers backend runs end to
end with tiny real models in test_engine_transformers.py. Rendering is the real renderer.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from vtcr.engine import (
    MODES,
    EngineConfig,
    GenerationRequest,
    GenerationResult,
    RunRecord,
    is_final,
    reason,
    reason_many,
    round_seed,
    write_run,
)
from vtcr.grade import is_equivalent
from vtcr.prompts import SYSTEM_PROMPT
from vtcr.render import Renderer, preset


def user_question(request: GenerationRequest) -> str:
    user = [m for m in request.messages if m["role"] == "user"][-1]
    return user["content"][0]["text"]


def n_images(request: GenerationRequest) -> int:
    return sum(1 for m in request.messages for p in m["content"] if p.get("type") == "image")


class ScriptedBackend:
    """Replays `scripts[question]` round by round (then `filler`); records every request. It stands
    for a model trained on `dense` pages (its `render_config`)."""

    name = "scripted"
    render_config = preset("dense")

    def __init__(self, scripts: dict[str, list[str]], *, filler: str = "\nStill thinking about it.",
                 delay: float = 0.0, fail: set[str] = frozenset(), concurrency: int = 1):
        self.scripts = scripts
        self.filler = filler
        self.delay = delay
        self.fail = fail
        self.concurrency = concurrency
        self.requests: list[GenerationRequest] = []
        self.intervals: list[tuple[str, float, float]] = []  # (question, start, end) of each call
        self.released: list[str] = []
        self._lock = threading.Lock()

    def generate(self, request: GenerationRequest) -> GenerationResult:
        start = time.perf_counter()
        question = user_question(request)
        with self._lock:
            k = sum(1 for r in self.requests if user_question(r) == question)
            self.requests.append(request)
        if question in self.fail:
            raise RuntimeError(f"backend exploded on {question!r}")
        time.sleep(self.delay)
        script = self.scripts.get(question, [])
        text = script[k] if k < len(script) else self.filler
        with self._lock:
            self.intervals.append((question, start, time.perf_counter()))
        return GenerationResult(
            text=text, generated_tokens=len(text.split()), prompt_tokens=100 + 50 * n_images(request),
            prefill_tokens=100, vision_tokens=50 * n_images(request), finish_reason="stop",
            seconds=time.perf_counter() - start,
        )  # fmt: skip

    def release(self, prefix_key: str) -> None:
        self.released.append(prefix_key)


def pages_of(text: str, name: str = "dense") -> int:
    return len(Renderer(preset(name)).render(text))


def without_timings(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k != "seconds"}
    out["rounds"] = [{k: v for k, v in r.items() if not k.endswith("_s")} for r in record["rounds"]]
    return out


# --- the stop rule ------------------------------------------------------------------------------

FINAL_CASES = [
    # (round text, boxed_counts_as_final, final?)
    ("<think>\nx=5\n</think>\n\n<answer>5</answer>", True, True),
    ("<think>\nx=5\n</think>\n\n<answer>5</answer>", False, True),
    ("<think>\nx\n</think>\n<answer>  </answer>", True, False),  # empty answer tags
    ("<think>\nmaybe <answer>3</answer>\n</think>\nso it is 5", True, False),  # answer before </think>
    ("<think>\nx\n</think>\nThe answer is \\boxed{5}.", True, True),  # boxed after </think>
    ("<think>\nx\n</think>\nThe answer is \\boxed{5}.", False, False),  # ... behind the flag
    ("<think>\nso \\boxed{5} maybe", True, False),  # boxed while still thinking
    ("so the answer is \\boxed{5}", True, False),  # no </think> at all: boxed is a step
    ("<answer>7</answer>", True, True),  # no </think>: the whole text counts for tags
    ("<think>\nx\n</think>\n\\boxed{}", True, False),  # empty box
    ("<think>a</think> first \\boxed{1} <think>again</think> still going", True, False),  # after the LAST </think>
    ("<think>\nx\n</think>\n<ANSWER>\\frac{1}{2}</ANSWER>", True, True),
    ("", True, False),
]


@pytest.mark.parametrize("text, boxed, expected", FINAL_CASES)
def test_is_final(text, boxed, expected):
    assert is_final(text, boxed) is expected


# --- config -------------------------------------------------------------------------------------


def test_config_round_trips_through_json():
    config = EngineConfig(mode="text", max_rounds=3, round_tokens=77, temperature=0.0, top_p=0.5, seed=9,
                          boxed_counts_as_final=False, render_config=preset("vtcr1").replace(font_size=8.0), save_images=True,
                          system_prompt=None, standard_system_prompt="Be brief.", answer_type="multiple_choice")
    assert EngineConfig.from_json(config.to_json()) == config
    assert EngineConfig.from_json(EngineConfig().to_json()) == EngineConfig()
    assert json.loads(EngineConfig().to_json())["system_prompt"] == SYSTEM_PROMPT


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "vision"}, "unknown mode"),
    ({"max_rounds": 0}, "max_rounds"),
    ({"round_tokens": -1}, "round_tokens"),
    ({"top_p": 0.0}, "top_p"),
    ({"temperature": -0.1}, "temperature"),
    ({"answer_type": "essay"}, "answer_type"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EngineConfig(**kwargs)
    with pytest.raises(ValueError, match="unknown EngineConfig keys"):
        EngineConfig.from_dict({"mode": "vtc", "rounds": 3})


# --- the vtc loop on real reasoning traces -------------------------------------------------------


def split_trace(trace: str, parts: int = 3) -> list[str]:
    """Cut an R1-style trace into `parts` rounds; every cut lies inside the thinking, at a space."""
    think_end = trace.index("</think>")
    cuts = [trace.index(" ", think_end * i // parts) for i in range(1, parts)]
    bounds = [0, *cuts, len(trace)]
    return [trace[a:b] for a, b in zip(bounds, bounds[1:])]


@pytest.fixture(scope="module")
def r1_traces(finished_traces):
    chosen = [t for t in finished_traces if t["r1_style"] and t["correct"] and 3000 < len(t["r1_style"]) < 9000]
    assert len(chosen) >= 3
    return chosen[:3]


def test_vtc_loop_on_real_traces_finishes_in_the_last_round(r1_traces):
    scripts = {t["problem"]: split_trace(t["r1_style"]) for t in r1_traces}
    backend = ScriptedBackend(scripts)
    config = EngineConfig(max_rounds=8, round_tokens=1000)
    records = reason_many([t["problem"] for t in r1_traces], backend, config, render_workers=2)

    for trace, record in zip(r1_traces, records):
        rounds = scripts[trace["problem"]]
        assert record.finished and record.stop_reason == "answer" and record.error is None
        assert [r.text for r in record.rounds] == rounds  # stopped exactly when the answer came
        assert record.response == trace["r1_style"]
        assert is_equivalent(record.answer, trace["gt_answer"])
        # Each non-final round is rendered; the next round sees every earlier page, in order.
        expected_pages = [pages_of(text) for text in rounds[:-1]] + [0]
        assert [r.pages for r in record.rounds] == expected_pages
        assert [r.images for r in record.rounds] == [0, expected_pages[0], sum(expected_pages[:2])]
        assert record.model == "scripted" and record.mode == "vtc" and record.config["render_preset"] == "dense"

    for trace, record in zip(r1_traces, records):
        requests = [r for r in backend.requests if user_question(r) == trace["problem"]]
        assert len(requests) == 3
        assert len({r.prefix_key for r in requests}) == 1 and requests[0].prefix_key is not None
        assert [r.seed for r in requests] == [round_seed(record.seed, k) for k in range(3)]
        for k, request in enumerate(requests):
            system, user = request.messages
            assert system == {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]}
            # THE fixed order: question text first, then every page of earlier rounds
            assert user["content"][0] == {"type": "text", "text": trace["problem"]}
            assert all(p["type"] == "image" and p["image"].size[0] > 0 for p in user["content"][1:])
            assert request.max_new_tokens == 1000 and request.assistant_prefix == ""
        # round 3's first pages are round 2's images, the same objects in the same order
        first = [p["image"] for p in requests[1].messages[1]["content"][1:]]
        assert [p["image"] for p in requests[2].messages[1]["content"][1 : 1 + len(first)]] == first
    assert sorted(backend.released) == sorted({r.prefix_key for r in backend.requests})


def test_boxed_flag_off_needs_answer_tags(r1_traces):
    trace = r1_traces[0]
    backend = ScriptedBackend({trace["problem"]: split_trace(trace["r1_style"])})
    record = reason(trace["problem"], backend, EngineConfig(max_rounds=4, boxed_counts_as_final=False))
    assert not record.finished and record.stop_reason == "max_rounds" and len(record.rounds) == 4
    assert record.rounds[-1].pages == 0  # the last round is never rendered
    assert is_equivalent(record.answer, trace["gt_answer"])  # the answer is still extracted


def test_never_finishing_model_stops_at_max_rounds():
    backend = ScriptedBackend({})
    record = reason("What is 2+2?", backend, EngineConfig(max_rounds=3))
    assert (record.finished, record.stop_reason, len(record.rounds)) == (False, "max_rounds", 3)
    assert [r.images for r in record.rounds] == [0, 1, 2]


def test_empty_round_stops_and_says_why():
    backend = ScriptedBackend({"Q?": ["<think>\nLet me see.", "   \n"]})
    record = reason("Q?", backend, EngineConfig(max_rounds=5))
    assert (record.finished, record.stop_reason, len(record.rounds)) == (False, "empty_round", 2)
    assert record.error is None and record.rounds[-1].pages == 0
    assert len(backend.requests) == 2  # nothing after the empty round


def test_empty_question_is_refused():
    backend = ScriptedBackend({})
    for bad in ("", "   \n"):
        with pytest.raises(ValueError, match="question is empty"):
            reason(bad, backend)
    with pytest.raises(ValueError, match="question 1 is empty"):
        reason_many(["fine", ""], backend)
    assert backend.requests == []  # refused before any work


# --- the other modes -----------------------------------------------------------------------------


def test_text_mode_continues_one_assistant_turn():
    script = ["<think>\nStep one.", " Step two.", " Done.\n</think>\n<answer>4</answer>"]
    backend = ScriptedBackend({"Q?": script})
    record = reason("Q?", backend, EngineConfig(mode="text", max_rounds=5, round_tokens=64))
    assert record.finished and record.answer == "4" and len(record.rounds) == 3
    assert [r.assistant_prefix for r in backend.requests] == ["", script[0], script[0] + script[1]]
    for request in backend.requests:
        assert n_images(request) == 0 and request.keep_generated and request.max_new_tokens == 64
        assert [m["role"] for m in request.messages] == ["user"]  # no optical-memory system prompt
    assert all(r.pages == 0 and r.render_s == 0 for r in record.rounds)


def test_no_memory_mode_never_appends_images():
    backend = ScriptedBackend({"Q?": ["<think>\nA.", "<think>\nB.", "<think>\nC.\n</think>\n\\boxed{3}"]})
    record = reason("Q?", backend, EngineConfig(mode="no-memory", max_rounds=5))
    assert record.finished and record.answer == "3" and [r.images for r in record.rounds] == [0, 0, 0]
    assert all(r.messages == backend.requests[0].messages for r in backend.requests)
    assert len({r.seed for r in backend.requests}) == 3  # a fresh sample each round


def _images(request: GenerationRequest) -> list:
    return [p["image"] for m in request.messages for p in m["content"] if p.get("type") == "image"]


def test_blank_memory_sends_the_vtc_pages_blank():
    script = ["<think>\nFirst round: 12 + 30 = 42.", "Second round carries 42 on.", "Done.\n</think>\n\\boxed{42}"]
    runs = {}
    for mode in ("vtc", "blank-memory"):
        backend = ScriptedBackend({"Q?": list(script)})
        runs[mode] = (reason("Q?", backend, EngineConfig(mode=mode, max_rounds=5)), backend.requests)
    (vtc, vtc_requests), (blank, blank_requests) = runs["vtc"], runs["blank-memory"]
    assert blank.finished and blank.answer == vtc.answer == "42"
    assert [r.images for r in blank.rounds] == [r.images for r in vtc.rounds] == [0, 1, 2]
    assert [r.pages for r in blank.rounds] == [r.pages for r in vtc.rounds]
    assert blank_requests[0].messages == vtc_requests[0].messages  # same system prompt and question
    for ours, theirs in zip(blank_requests, vtc_requests):
        for page, written in zip(_images(ours), _images(theirs)):
            assert page.size == written.size and page.mode == written.mode
            assert len(written.getcolors(1 << 16)) > 1  # the vtc page has ink
            assert page.getcolors(1 << 16) == [(page.width * page.height, written.getpixel((0, 0)))]  # one colour: its background


def test_standard_mode_is_one_long_round():
    backend = ScriptedBackend({})
    record = reason("Q?", backend, EngineConfig(mode="standard", max_rounds=4, round_tokens=100))
    # the scripted model ends its turn without an answer
    assert len(record.rounds) == 1 and record.stop_reason == "no_answer" and not record.finished
    (request,) = backend.requests
    assert request.max_new_tokens == 400 and request.prefix_key is None
    assert [m["role"] for m in request.messages] == ["user"]
    with_system = ScriptedBackend({})
    reason("Q?", with_system, EngineConfig(mode="standard", standard_system_prompt="Think step by step."))
    assert with_system.requests[0].messages[0]["content"][0]["text"] == "Think step by step."


# --- many problems --------------------------------------------------------------------------------


def test_reason_many_keeps_input_order_and_isolates_failures():
    questions = [f"Question {i}?" for i in range(5)]
    scripts = {q: [f"<think>\nabout {q}\n</think>\n<answer>{i}</answer>"] for i, q in enumerate(questions)}
    backend = ScriptedBackend(scripts, fail={"Question 2?"}, concurrency=2)
    seen: list[tuple[int, int]] = []
    records = reason_many(questions, backend, EngineConfig(),
                          on_round=lambda i, rnd, rec: seen.append((i, len(rec.rounds))))
    assert [r.question for r in records] == questions
    assert [r.answer for r in records] == ["0", "1", None, "3", "4"]
    assert records[2].stop_reason == "error" and "backend exploded" in records[2].error and records[2].rounds == []
    assert all(r.finished for i, r in enumerate(records) if i != 2)
    assert sorted(seen) == [(i, 1) for i in range(5) if i != 2]  # failed calls record no round


def test_no_round_barrier_and_rendering_overlaps_generation(monkeypatch):
    """Problem 0 is slow; problem 1 runs all its rounds meanwhile. Pages render while another
    problem generates (the renderer is wrapped to log when it runs)."""
    renders: list[tuple[float, float]] = []
    real_render = Renderer.render

    def logged_render(self, text):
        start = time.perf_counter()
        out = real_render(self, text)
        renders.append((start, time.perf_counter()))
        return out

    monkeypatch.setattr(Renderer, "render", logged_render)
    long_text = "<think>\n" + "We expand the product term by term and collect like terms. " * 120

    class Uneven(ScriptedBackend):
        def generate(self, request):
            self.delay = 1.2 if user_question(request) == "slow" else 0.15
            return super().generate(request)

    backend = Uneven({"slow": [long_text], "fast": [long_text] * 3}, concurrency=2)
    records = reason_many(["slow", "fast"], backend, EngineConfig(max_rounds=4), render_workers=2)
    assert [len(r.rounds) for r in records] == [4, 4]
    slow_first = next(end for q, _, end in backend.intervals if q == "slow")
    fast_ends = [end for q, _, end in backend.intervals if q == "fast"]
    assert sum(end < slow_first for end in fast_ends) >= 2  # no barrier: fast went on alone
    gens = [(s, e) for _, s, e in backend.intervals]
    assert any(any(gs < rs and re < ge for gs, ge in gens) for rs, re in renders)  # overlap


def test_same_inputs_same_record_and_seeds_per_problem():
    questions = ["A?", "B?", "A?"]
    runs = [reason_many(questions, ScriptedBackend({}), EngineConfig(max_rounds=2, seed=7)) for _ in range(2)]
    assert [without_timings(r.to_dict()) for r in runs[0]] == [without_timings(r.to_dict()) for r in runs[1]]
    assert [r.seed for r in runs[0]] == [7, 8, 9]  # repeats of a question get their own samples
    backend = ScriptedBackend({})
    reason_many(["A?"], backend, EngineConfig(max_rounds=2), seeds=[123])
    assert [r.seed for r in backend.requests] == [round_seed(123, 0), round_seed(123, 1)]
    assert round_seed(123, 0) != round_seed(123, 1)


def test_record_json_and_saved_pages(tmp_path, r1_traces):
    trace = r1_traces[0]
    backend = ScriptedBackend({trace["problem"]: split_trace(trace["r1_style"])})
    record = reason(trace["problem"], backend, EngineConfig(save_images=True, render_preset="vtcr1"))
    data = json.loads(record.to_json())
    for key in ("question", "mode", "model", "answer", "finished", "error", "rounds"):
        assert key in data
    for key in ("text", "generated_tokens", "images", "vision_tokens", "prefill_tokens", "generate_s", "render_s"):
        assert all(key in r for r in data["rounds"])
    assert RunRecord.from_dict(data).to_dict() == data
    path = write_run(record, tmp_path / "out")
    saved = json.loads(path.read_text())
    files = [f for r in saved["rounds"] for f in r.get("page_files", [])]
    assert len(files) == sum(r.pages for r in record.rounds) == pages_of(record.rounds[0].text, "vtcr1") + pages_of(
        record.rounds[1].text, "vtcr1")
    assert all((tmp_path / "out" / f).is_file() for f in files)
    # without save_images, no pages are kept
    plain = reason(trace["problem"], ScriptedBackend({trace["problem"]: split_trace(trace["r1_style"])}))
    assert plain.page_images == []
    assert "page_files" not in json.loads(write_run(plain, tmp_path / "p").read_text())["rounds"][0]


def test_render_config_given_else_the_models_else_the_papers_with_a_warning(tmp_path, r1_traces, caplog):
    trace = r1_traces[0]
    rounds = split_trace(trace["r1_style"])

    def run(backend_config, **config):
        backend = ScriptedBackend({trace["problem"]: rounds})
        backend.render_config = backend_config
        return reason(trace["problem"], backend, EngineConfig(**config))

    # a custom Glyph JSON config reaches the renderer and the record, whole
    custom = preset("vtcr1").replace(font_size=7.0, line_height=8.0, name="custom")
    path = tmp_path / "small.json"
    custom.to_json(path)
    record = run(preset("dense"), render_config=str(path))
    assert record.config["render_config"] == custom.to_dict() and record.config["render_preset"] is None
    assert [r.pages for r in record.rounds[:-1]] == [len(Renderer(custom).render(t)) for t in rounds[:-1]]
    # a model that says nothing: the paper's layout, and a warning that says so
    with caplog.at_level("WARNING", logger="vtcr.render.presets"):
        record = run(None)
    assert record.config["render_preset"] == "vtcr1"
    assert [r.pages for r in record.rounds[:-1]] == [pages_of(t, "vtcr1") for t in rounds[:-1]]
    assert any("no render config is known" in r.getMessage() and "'scripted'" in r.getMessage() for r in caplog.records)
    # modes that render nothing record what is known and warn about nothing
    caplog.clear()
    with caplog.at_level("WARNING", logger="vtcr.render.presets"):
        record = run(None, mode="standard")
    assert record.config["render_config"] is None and not caplog.records
    with pytest.raises(ValueError, match="unknown render preset"):
        EngineConfig(render_preset="densest")
    with pytest.raises(ValueError, match="differs from render preset"):
        EngineConfig(render_preset="dense", render_config=preset("vtcr1"))


def test_modes_are_the_documented_five():
    assert MODES == ("vtc", "standard", "text", "no-memory", "blank-memory")
