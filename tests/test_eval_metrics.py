"""Evaluation bookkeeping without a model: metrics, the results file (torn lines, duplicates), the
run config (JSON round trip, differences, the paper's defaults)."""

from __future__ import annotations

import json

import pytest

from vtcr.evaluate.metrics import avg_at_k, pass_at_k, summarise
from vtcr.engine import EngineConfig
from vtcr.evaluate.config import EvalConfig
from vtcr.evaluate.results import read_rows


# --------------------------------------------------------------------------------------------
# Metrics: expected values worked out by hand in the comments
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "correct, avg, passed",
    [
        ({"a": [True, False, False, False], "b": [True, True, True, True]}, (0.25 + 1.0) / 2, 1.0),
        ({"a": [False, False], "b": [False, True], "c": [False, False]}, (0 + 0.5 + 0) / 3, 1 / 3),
        ({"a": [True]}, 1.0, 1.0),
        ({}, None, None),
    ],
)
def test_avg_and_pass_at_k(correct, avg, passed):
    got = (avg_at_k(correct), pass_at_k(correct))
    if avg is None:
        assert got == (None, None)
    else:
        assert got == (pytest.approx(avg), pytest.approx(passed))


def _row(mode, pid, sample, correct, latency, batch, wall, size, rounds):
    return {
        "benchmark": "math500", "mode": mode, "id": pid, "sample": sample, "correct": correct,
        "latency_s": latency, "batch_id": batch, "batch_wall_s": wall, "batch_size": size, "finished": correct,
        "error": None, "grade_reason": "exact" if correct else "mismatch",
        "rounds": [{"generated_tokens": g, "vision_tokens": v, "prefill_tokens": 10, "generate_s": 0.5,
                    "render_s": 0.25, "prompt_tokens": 20 + v} for g, v in rounds],
    }  # fmt: skip


def test_summarise_groups_speedups_and_token_means():
    rows = [
        # standard: latencies 4 and 6 (mean 5); one batch of 2 runs taking 10 s -> 5 s amortised
        _row("standard", "p1", 0, True, 4.0, "b1", 10.0, 2, [(100, 0)]),
        _row("standard", "p2", 0, False, 6.0, "b1", 10.0, 2, [(300, 0)]),
        # vtc: latencies 1 and 3 (mean 2); one batch of 2 taking 3 s -> 1.5 s amortised
        _row("vtc", "p1", 0, True, 1.0, "b2", 3.0, 2, [(50, 0), (50, 494)]),
        _row("vtc", "p2", 0, True, 3.0, "b2", 3.0, 2, [(60, 0), (60, 494), (60, 988)]),
    ]
    summary = summarise(rows)
    groups = {g["mode"]: g for g in summary["groups"]}
    assert [g["mode"] for g in summary["groups"]] == ["standard", "vtc"]  # order of first appearance
    std, vtc = groups["standard"], groups["vtc"]
    assert (std["avg_at_k"], vtc["avg_at_k"]) == (0.5, 1.0)
    assert std["generated_tokens"] == 200 and vtc["generated_tokens"] == (100 + 180) / 2
    assert vtc["vision_tokens"] == (494 + 988) / 2  # the largest prompt memory of each run
    assert vtc["rounds"] == 2.5 and std["rounds"] == 1
    # peak context: the largest round's prompt (20 text + its vision tokens) + generated tokens
    assert std["peak_context_tokens"] == (120 + 320) / 2 and std["peak_context_tokens_max"] == 320
    assert vtc["peak_context_tokens"] == ((20 + 494 + 50) + (20 + 988 + 60)) / 2 and vtc["peak_context_tokens_max"] == 1068
    assert vtc["compute_s"] == pytest.approx((2 * 0.75 + 3 * 0.75) / 2)
    assert std["latency_s"] == 5.0 and vtc["latency_s"] == 2.0
    assert std["amortised_latency_s"] == 5.0 and vtc["amortised_latency_s"] == 1.5
    assert vtc["speedup"] == pytest.approx(5.0 / 2.0)
    assert vtc["speedup_amortised"] == pytest.approx(5.0 / 1.5)
    assert std["speedup"] == 1.0


def test_exact_rate_counts_only_finished_runs_with_the_right_answer():
    rows = [
        _row("vtc", "p1", 0, True, 1.0, "b1", 1.0, 3, [(1, 0)]),
        {**_row("vtc", "p2", 0, True, 1.0, "b1", 1.0, 3, [(1, 0)]), "finished": False},  # the last number happened to match
        _row("vtc", "p3", 0, False, 1.0, "b1", 1.0, 3, [(1, 0)]),
    ]
    (g,) = summarise(rows)["groups"]
    assert g["avg_at_k"] == pytest.approx(2 / 3) and g["exact_rate"] == pytest.approx(1 / 3)


def test_lines_right_counts_runs_with_the_gold_trace_and_the_answer_on_generated_benchmarks_only():
    rows = [
        {**_row("vtc", "p1", 0, True, 1.0, "b1", 1.0, 3, [(1, 0)]), "trace_right": True},
        {**_row("vtc", "p2", 0, True, 1.0, "b1", 1.0, 3, [(1, 0)]), "trace_right": False},  # right answer, a wrong line
        {**_row("vtc", "p3", 0, False, 1.0, "b1", 1.0, 3, [(1, 0)]), "trace_right": True},  # every line, a wrong answer
        {**_row("vtc", "p4", 0, False, 1.0, "b1", 1.0, 3, [(1, 0)]), "trace_right": False},
    ]
    (g,) = summarise(rows)["groups"]
    assert g["trace_right_rate"] == pytest.approx(1 / 4)
    (plain,) = summarise([_row("vtc", "p1", 0, True, 1.0, "b1", 1.0, 3, [(1, 0)])])["groups"]
    assert plain["trace_right_rate"] is None  # no gold trace: no figure, not 0%


def test_rows_of_unfinished_batches_are_left_out_of_amortised_latency():
    rows = [
        _row("vtc", "p1", 0, True, 2.0, "b1", 8.0, 4, [(1, 0)]),
        {**_row("vtc", "p2", 0, True, 2.0, "b2", None, None, [(1, 0)])},  # its batch was killed
    ]
    (g,) = summarise(rows)["groups"]
    assert g["amortised_latency_s"] == 2.0
    assert g["speedup"] is None  # no standard run to compare with


# --------------------------------------------------------------------------------------------
# results.jsonl: a kill may tear the last line; nothing else is forgiven
# --------------------------------------------------------------------------------------------

def _line(pid, sample=0, mode="vtc", **extra):
    return json.dumps({"benchmark": "math500", "id": pid, "sample": sample, "mode": mode, **extra}) + "\n"


def test_torn_last_line_is_dropped_and_the_file_repaired(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(_line("a") + _line("b") + '{"benchmark": "math500", "id": "c", "sam')
    rows = read_rows(path, repair=True)
    assert [r["id"] for r in rows] == ["a", "b"]
    assert path.read_text() == _line("a") + _line("b")


def test_complete_last_line_without_newline_is_kept_and_terminated(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(_line("a") + _line("b").rstrip("\n"))
    assert [r["id"] for r in read_rows(path, repair=True)] == ["a", "b"]
    assert path.read_text().endswith("\n")


def test_error_rows_are_dropped_for_a_rerun(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(_line("a") + _line("b", error="BackendError: connection refused") + _line("c"))
    assert [r["id"] for r in read_rows(path, repair=True, drop_errors=True)] == ["a", "c"]
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["a", "c"]


@pytest.mark.parametrize(
    "content, message",
    [
        (_line("a") + "{not json\n" + _line("b"), "results.jsonl:2: not a results row"),
        (_line("a") + '{"id": "x"}\n' + _line("b"), "results.jsonl:2: not a results row"),
        (_line("a") + _line("b") + _line("a"), "results.jsonl:3: duplicate row"),
    ],
)
def test_damaged_results_file_is_refused(tmp_path, content, message):
    path = tmp_path / "results.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_rows(path, repair=True)
    assert path.read_text() == content  # refused, not rewritten


# --------------------------------------------------------------------------------------------
# EvalConfig
# --------------------------------------------------------------------------------------------

def test_config_defaults_follow_the_paper_and_round_trip():
    cfg = EvalConfig(benchmarks=("math500", "aime25", "amc23", "gpqa_diamond"), model="m")
    # VTC-R1: 8 rounds x 8192 tokens, temperature 0.6, top_p 0.95, avg@16 on AIME25 and AMC23
    e = cfg.engine
    assert (e.max_rounds, e.round_tokens, e.temperature, e.top_p) == (8, 8192, 0.6, 0.95)
    assert [cfg.samples_for(b) for b in cfg.benchmarks] == [1, 16, 16, 1]
    assert EvalConfig(benchmarks=("aime25",), samples=2, model="m").samples_for("aime25") == 2
    assert EvalConfig.from_json(cfg.to_json()) == cfg
    custom = EvalConfig(benchmarks=("math500",), engine=EngineConfig(render_preset="vtcr1", max_rounds=3), model="m")
    assert EvalConfig.from_json(custom.to_json()) == custom
    # a config.json written before `engine` existed (flat engine keys) still loads, for --resume
    legacy = {k: v for k, v in custom.to_dict().items() if k != "engine"} | {"max_rounds": 3, "render_preset": "vtcr1"}
    assert EvalConfig.from_dict(legacy) == custom
    eng = cfg.engine_config("vtc", "integer")
    assert (eng.mode, eng.max_rounds, eng.round_tokens, eng.temperature, eng.top_p, eng.answer_type) == (
        "vtc", 8, 8192, 0.6, 0.95, "integer")


def test_config_differences_name_each_setting():
    a = EvalConfig(benchmarks=("math500",), model="m")
    b = EvalConfig(benchmarks=("math500",), model="m", engine=EngineConfig(round_tokens=16, temperature=0.0), limit=3)
    assert a.differences(b) == ["engine.round_tokens: 8192 -> 16", "engine.temperature: 0.6 -> 0.0", "limit: None -> 3"]
    assert a.differences(a) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"benchmarks": ("nope",)}, r"unknown benchmark 'nope'; known: math500, aime25"),
        ({"benchmarks": ("math500",), "modes": ("vtc", "fast")}, "unknown mode 'fast'"),
        ({"benchmarks": ("math500", "math500")}, "benchmarks lists an entry twice"),
        ({"benchmarks": ("math500",), "samples": 0}, "samples must be a positive int"),
        ({"benchmarks": ("math500",), "server": "http://x:8000"}, "served model name"),
        ({"benchmarks": ("math500",), "engine": {"round_tokens": 0}}, "round_tokens must be a positive int"),
        ({"benchmarks": ("math500",), "engine": {"top_p": 1.5}}, "top_p must be in"),
        ({"benchmarks": ("math500",), "engine": {"rounds": 3}}, "unknown EngineConfig keys"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(**kwargs)


def test_appending_after_a_torn_line_starts_a_fresh_line(tmp_path):
    from vtcr.evaluate.run import _AppendLog

    path = tmp_path / "batches.jsonl"
    path.write_text('{"batch_id": "b00001", "size": 2}\n{"batch_id": "b000')
    log = _AppendLog(path)
    log.write({"batch_id": "b00002", "size": 1})
    log.close()
    assert [json.loads(x)["batch_id"] for x in path.read_text().splitlines()] == ["b00001", "b00002"]
