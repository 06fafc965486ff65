"""vtcr's built-in model: the synthetic optical-memory task, built by the real builder, trained by the
real trainer, reasoning through the real engine and CLI.

The full recipe (`BuiltinRecipe()`) takes minutes; these tests train a short version of the same
recipe (fewer problems and epochs): enough to learn the round structure -- one state line per
round, an end-of-turn, a final `</think>` + `<answer>` -- so a `vtc` run finishes after several
rounds of optical memory, while a `no-memory` run (the same model, no pages) never does.
"""

from __future__ import annotations

import json
import os
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from vtcr.cli import main as cli_main  # noqa: E402
from vtcr.engine import TransformersBackend, reason  # noqa: E402
from vtcr.builtin import (  # noqa: E402
    DONE_FILE,
    BuiltinRecipe,
    build_builtin_data,
    builtin_engine_config,
    builtin_model_dir,
    ensure_builtin_model,
    heldout_questions,
    init_builtin_model,
    parse_question,
    problems,
    question,
    state_lines,
    task_tokenizer,
    trace,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
QUICK = BuiltinRecipe(problems=100, epochs=2.0)


@pytest.mark.parametrize(
    "terms, lines, answer",
    [
        ([7, 3, 9, 2], ["b7 | 00+7=07\n", "d3 | 07+3=10\n", "g9 | 10+9=19\n", "p2 | 19+2=21\n"], "21"),
        ([9, 9, 9, 9, 9], ["b9 | 00+9=09\n", "d9 | 09+9=18\n", "g9 | 18+9=27\n", "p9 | 27+9=36\n", "q9 | 36+9=45\n"], "45"),
        ([1, 1, 1], ["b1 | 00+1=01\n", "d1 | 01+1=02\n", "g1 | 02+1=03\n"], "3"),
    ],
)
def test_task_lines(terms, lines, answer):
    assert state_lines(terms) == lines
    assert trace(terms) == "".join(lines) + "</think>"
    assert parse_question(question(terms)) == terms
    assert str(sum(terms)) == answer


@pytest.mark.parametrize("text", ["Add: d7 b3", "Add: b7 d3 x1", "What is 2+3?", "Add: b0 d1", "Add:"])
def test_parse_question_refuses_other_text(text):
    assert parse_question(text) is None


def test_problems_are_deterministic_and_heldout_differs():
    a, b = problems(50, seed=0), problems(50, seed=0)
    assert a == b
    held = heldout_questions(50, recipe=QUICK)
    assert len({q for q, _ in held}) == 50 and held == heldout_questions(50, recipe=QUICK)
    assert not {q for q, _ in held} & {p["question"] for p in problems(QUICK.problems, QUICK.seed, QUICK)}
    for p in a:
        assert int(p["answer"]) == sum(parse_question(p["question"]))
        assert QUICK.min_terms <= len(parse_question(p["question"])) <= QUICK.max_terms


def test_the_real_builder_cuts_one_state_line_per_segment(tmp_path):
    recipe = BuiltinRecipe(problems=12)
    model = init_builtin_model(recipe, task_tokenizer(tmp_path / "tok" / "tokenizer.json"), tmp_path / "init")
    vocab = json.loads((model / "config.json").read_text())["text_config"]["vocab_size"]
    assert vocab < 1024  # the small vocabulary is what makes CPU training fast
    report = build_builtin_data(recipe, model, tmp_path / "data")
    assert report.stats["problems"] == 12 and report.stats["rejected"] == {}
    records = [json.loads(line) for line in (tmp_path / "data" / "problems.jsonl").read_text().splitlines()]
    sizes = set()
    for record, p in zip(records, problems(12, recipe.seed, recipe)):
        lines = state_lines(parse_question(p["question"]))
        assert record["turns"][:-1] == lines[:-1]  # one state line per round
        assert record["turns"][-1] == f"{lines[-1]}</think>\n\n<answer>{p['answer']}</answer>"
        sizes |= {(page["width"], page["height"]) for pages in record["pages"] for page in pages}
    assert len(sizes) == 1  # every state line renders to the same page size


def test_trained_builtin_model_reasons_over_rounds_through_the_engine(tmp_path, capsys):
    started = time.perf_counter()
    path = ensure_builtin_model(tmp_path / "cache", recipe=QUICK)
    assert path == builtin_model_dir(tmp_path / "cache", QUICK) and (path / DONE_FILE).is_file()
    info = json.loads((path / DONE_FILE).read_text())
    assert info["recipe"]["problems"] == QUICK.problems and info["global_step"] > 0
    meta = json.loads((path / "vtcr.json").read_text())
    assert meta["render_preset"] == "dense" and meta["max_image_pixels"] == QUICK.max_image_pixels
    assert not (path / "checkpoints").exists()
    trained_in = time.perf_counter() - started
    again = time.perf_counter()
    assert ensure_builtin_model(tmp_path / "cache", recipe=QUICK) == path
    assert time.perf_counter() - again < min(2.0, trained_in / 10)  # cached: no second training

    q, _ = heldout_questions(1)[0]
    n_terms = len(parse_question(q))
    args = ["reason", q, "--model", str(path), "--temperature", "0", "--round-tokens", "48", "--max-rounds", "8", "--json"]
    capsys.readouterr()  # drop the training log lines
    assert cli_main(args) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["finished"] and record["stop_reason"] == "answer"
    assert len(record["rounds"]) >= 2
    assert [r["images"] for r in record["rounds"]] == list(range(len(record["rounds"])))  # one page per round
    assert record["answer"] is not None and record["answer"].isdigit()
    assert "</think>" in record["rounds"][-1]["text"] and "<answer>" in record["rounds"][-1]["text"]
    assert len(record["rounds"]) <= n_terms + 1

    backend = TransformersBackend.from_pretrained(path, device="cpu")
    blind = reason(q, backend, builtin_engine_config("no-memory"))
    assert not blind.finished and blind.stop_reason == "max_rounds"
    assert all(r.images == 0 for r in blind.rounds)

    # The demo's reasoning part, on the same checkpoint: the first question round by round, a table
    # of every question, records and pages written per mode.
    from vtcr.commands.demo import _reason_part

    questions = [(q, str(sum(parse_question(q)))), heldout_questions(2)[1]]
    records = _reason_part(questions, path, tmp_path / "demo")
    shown = capsys.readouterr().out
    assert "round 2: given 1 page(s)" in shown and f"[vtc] {q}" in shown and "[no-memory]" in shown
    assert all(line.startswith(f"  round {k}:") for k, line in enumerate(
        [ln for ln in shown.split("[no-memory]")[0].splitlines() if ln.startswith("  round")], start=1))  # fmt: skip
    assert records["vtc"][0].finished and not any(r.finished for r in records["no-memory"])
    assert "no-memory: 0/2 correct, 0/2 finished" in shown
    for mode in ("vtc", "no-memory"):
        for i, record in enumerate(records[mode], start=1):
            saved = json.loads((tmp_path / "demo" / "runs" / mode / f"q{i:02d}.json").read_text())
            assert saved["answer"] == record.answer and len(saved["rounds"]) == len(record.rounds)
    assert (tmp_path / "demo" / "runs" / "vtc" / "q01_pages" / "round_01_page_001.png").is_file()


def test_demo_without_the_model_renders_and_reports_compression(tmp_path, capsys):
    assert cli_main(["demo", "--no-model", "--out", str(tmp_path / "demo")]) == 0
    shown = capsys.readouterr().out
    for name in ("dense", "vtcr1"):
        assert (tmp_path / "demo" / "pages" / name / "page_001.png").is_file()
        assert f"[preset {name}]" in shown
    assert "built-in model" not in shown and not (tmp_path / "demo" / "runs").exists()


@pytest.mark.parametrize("text", ["Add: b7", "Add: b7 d3 g9 p2 q1 b5", "What is 2+3?"])
def test_demo_refuses_a_question_the_builtin_model_cannot_answer(tmp_path, capsys, text):
    assert cli_main(["demo", "--question", text, "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert repr(text) in err and "3-5 items" in err
    assert not (tmp_path / "demo").exists()  # refused before any work


def test_demo_refuses_a_bad_question_count(tmp_path, capsys):
    assert cli_main(["demo", "--questions", "0", "--out", str(tmp_path / "demo")]) == 2
    assert "--questions 0" in capsys.readouterr().err and not (tmp_path / "demo").exists()
