"""Segmentation of real reasoning traces: lossless, bounded by the real Qwen3 tokenizer, cut where
it should be; the Sky-T1 -> <think> mapping; the training targets; the fixed user-turn order."""

from __future__ import annotations

import re

import pytest

from vtcr.data.segment import (
    THINK_CLOSE,
    assistant_turns,
    formula_spans,
    normalize_trace,
    split_reasoning,
    split_trace,
)
from vtcr.prompts import IMAGE_PLACEHOLDER, SYSTEM_PROMPT, user_content, user_parts


@pytest.fixture(scope="module")
def count(qwen3_tokenizer_dir):
    from vtcr.tokens import count_text_tokens, load_tokenizer

    tokenizer = load_tokenizer(qwen3_tokenizer_dir)
    return lambda texts: count_text_tokens(list(texts), tokenizer)


@pytest.fixture(scope="module")
def reasonings(shared_traces) -> list[str]:
    """Reasoning of 80 real traces: R1-shaped ones and Sky-T1 ones mapped by normalize_trace
    (truncated and looping generations included: they are the long, awkward cases)."""
    out = []
    for t in shared_traces:
        parts = split_trace(normalize_trace(t["trace"]))
        if parts is not None and parts.reasoning.strip():
            out.append(parts.reasoning)
    assert len(out) >= 320
    return out[::4][:80]


@pytest.mark.parametrize("max_tokens", [64, 512])
def test_split_is_lossless_bounded_and_never_empty(reasonings, count, max_tokens):
    multi = 0
    for reasoning in reasonings:
        segments = split_reasoning(reasoning, max_tokens, count)
        assert "".join(segments) == reasoning
        assert all(seg.strip() for seg in segments), "empty or whitespace-only segment"
        assert max(count(segments)) <= max_tokens
        multi += len(segments) > 1
    assert multi > len(reasonings) // 2  # the limit really bites


def _cuts(segments: list[str]) -> list[int]:
    pos, out = 0, []
    for seg in segments[:-1]:
        pos += len(seg)
        out.append(pos)
    return out


def test_no_cut_inside_a_formula_unless_the_formula_alone_exceeds_a_segment(reasonings, count):
    max_tokens = 128
    inside = 0
    for reasoning in reasonings:
        spans = formula_spans(reasoning)
        for cut in _cuts(split_reasoning(reasoning, max_tokens, count)):
            for start, end in spans:
                if start < cut < end:
                    inside += 1
                    assert count([reasoning[start:end]])[0] > max_tokens, reasoning[start:end][:80]
    # The traces are full of \( \) and $ $ math, yet cuts inside it stay rare.
    assert sum(len(formula_spans(r)) for r in reasonings) > 500
    assert inside < 10


def test_cuts_land_on_paragraph_breaks_when_every_paragraph_fits(reasonings, count):
    max_tokens = 512
    checked = 0
    for reasoning in reasonings:
        paragraphs = re.split(r"\n[ \t]*\n", reasoning)
        if max(count(paragraphs)) > max_tokens // 2:
            continue
        segments = split_reasoning(reasoning, max_tokens, count)
        for seg in segments[:-1]:
            assert re.search(r"\n[ \t]*\n\s*$", seg), repr(seg[-40:])
        checked += len(segments) > 1
    assert checked >= 10


def test_sentence_breaks_before_words_inside_a_long_paragraph(count):
    # One paragraph of ~40 sentences, no blank lines: cuts must fall after ". ".
    text = " ".join(f"Step {i}: we add {i} to the running total and check it again." for i in range(40))
    segments = split_reasoning(text, 64, count)
    assert "".join(segments) == text and len(segments) > 3
    for seg in segments[:-1]:
        assert seg.endswith(". "), repr(seg[-20:])


@pytest.mark.parametrize(
    "formula",
    [
        "$" + " + ".join(f"a_{{{i}}}" for i in range(8)) + "$",
        "\\(" + " + ".join(f"b_{{{i}}}" for i in range(8)) + "\\)",
        "\\[" + " \\cdot ".join(f"c^{{{i}}}" for i in range(8)) + "\\]",
        "$$" + " - ".join(f"d_{i}" for i in range(8)) + "$$",
    ],
)
def test_formula_is_kept_whole_when_a_cut_outside_exists(count, formula):
    # Words around a formula that would straddle a naive cut: the split must go around it.
    text = ("word " * 30) + formula + (" more" * 30)
    assert count([formula])[0] < 60
    segments = split_reasoning(text, 60, count)
    assert "".join(segments) == text
    assert any(formula in seg for seg in segments), [s[-30:] for s in segments]


def test_hard_cut_when_there_is_no_separator(count):
    text = "x" * 3000 + "\n" + "7" * 500
    segments = split_reasoning(text, 32, count)
    assert "".join(segments) == text
    assert max(count(segments)) <= 32 and all(segments)


@pytest.mark.parametrize("bad", [0, 15, -1, 2.5, True, None])
def test_segment_tokens_must_be_a_reasonable_int(count, bad):
    with pytest.raises(ValueError, match="segment tokens"):
        split_reasoning("some text", bad, count)


def test_empty_reasoning_gives_no_segments(count):
    assert split_reasoning("", 64, count) == []


def test_sky_t1_mapping_reproduces_the_shared_r1_style_field(shared_traces):
    # The shared data has both forms: `trace` (Sky-T1 tags) and `r1_style` (made by its curators).
    checked = 0
    for t in shared_traces:
        if t["r1_style"] is not None:
            assert normalize_trace(t["trace"]) == t["r1_style"]
            checked += 1
    assert checked > 300


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>\nabc\n</think>\n\nsum", ("<think>", "\nabc\n", "\n\nsum")),
        ("abc</think>x", ("", "abc", "x")),
        ("pre <think>a</think>b</think>c", ("pre <think>", "a", "b</think>c")),
        ("<|begin_of_thought|>\n\nr\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\ns\n\n<|end_of_solution|>",
         ("<think>", "\nr\n", "\n\ns")),
        ("no tags at all", None),
        ("<|begin_of_thought|> unfinished thought", None),
    ],
)
def test_split_trace_table(text, expected):
    parts = split_trace(normalize_trace(text))
    assert (parts and (parts.opener, parts.reasoning, parts.rest)) == expected or (parts is None and expected is None)


def test_assistant_turns_end_with_think_close_summary_and_gold_answer(shared_traces, count):
    trace = next(t for t in shared_traces if t["r1_style"] and t["correct"] and len(t["r1_style"]) > 4000)
    parts = split_trace(trace["r1_style"])
    segments = split_reasoning(parts.reasoning, 256, count)
    turns = assistant_turns(parts, segments, "  " + trace["gt_answer"] + " ")
    summary = parts.rest.strip()
    assert turns[0].startswith("<think>") and len(turns) == len(segments) > 1
    assert turns[-1].endswith(f"{THINK_CLOSE}\n\n{summary}\n\n<answer>{trace['gt_answer']}</answer>")
    # Only the last turn is final in the engine's sense: a non-empty answer after the last </think>.
    assert [THINK_CLOSE in t for t in turns] == [False] * (len(turns) - 1) + [True]
    # Turns are the original generation up to the summary, verbatim.
    assert "".join(turns).startswith(parts.opener + parts.reasoning + THINK_CLOSE)
    no_summary = assistant_turns(parts.__class__("<think>", "r", "  \n"), ["r"], "7")
    assert no_summary == ["<think>r</think>\n\n<answer>7</answer>"]


def test_user_turn_order_is_question_then_images():
    assert user_content("Q?", 3) == "Q?" + IMAGE_PLACEHOLDER * 3
    assert user_content("Q?", 0) == "Q?"
    parts = user_parts("Q?", 2)
    assert parts == [{"type": "text", "text": "Q?"}, {"type": "image", "text": None}, {"type": "image", "text": None}]
    assert SYSTEM_PROMPT.endswith("If no images are provided, start the reasoning from scratch.")
    with pytest.raises(ValueError):
        user_content("Q", -1)
