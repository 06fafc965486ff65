"""Benchmark descriptions and loading, on the real shared benchmark files.

GPQA-Diamond questions and options are never printed or compared as text here: ids and letters only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from vtcr.evaluate import (
    BENCHMARKS,
    Benchmark,
    benchmarks_root,
    get_benchmark,
    list_benchmarks,
    load_benchmark,
    read_gold,
)
from vtcr.grade import Grader
from vtcr.grade.equivalence import _mv_parse, _number

# Problem counts as published for each set (shared/data/README.md, and the sets' own papers).
COUNTS = {"math500": 500, "aime25": 30, "amc23": 40, "gsm8k": 1319, "gpqa_diamond": 198, "aime24": 30, "minerva_math": 272}


@pytest.fixture(scope="module")
def root(shared_data) -> Path:
    return shared_data / "benchmarks"


@pytest.fixture(scope="module")
def loaded(root) -> dict:
    return {name: load_benchmark(name, root) for name in list_benchmarks()}


def test_registry():
    assert list_benchmarks() == [*COUNTS, "builtin"]  # the shared files, then the generated built-in task
    samples = {b.name: b.default_samples for b in BENCHMARKS}
    assert samples == {**{n: 16 if n in ("aime25", "amc23") else 1 for n in COUNTS}, "builtin": 1}  # avg@16 as in the paper
    assert [b.name for b in BENCHMARKS if b.generator] == ["builtin"]
    assert get_benchmark("gpqa_diamond").answer_type == "multiple_choice"
    for bench in BENCHMARKS:
        assert Benchmark.from_json(bench.to_json()) == bench
        assert not Path(bench.path).is_absolute()


def test_unknown_benchmark_lists_known_ones():
    with pytest.raises(ValueError) as err:
        get_benchmark("math5000")
    assert all(name in str(err.value) for name in COUNTS)
    with pytest.raises(ValueError, match="math500"):
        load_benchmark("nope")


@pytest.mark.parametrize("name", list(COUNTS))
def test_counts_ids_and_fields(loaded, name):
    problems = loaded[name]
    assert len(problems) == COUNTS[name]
    assert len({p.id for p in problems}) == len(problems)  # ids unique
    assert all(p.benchmark == name and p.answer_type == get_benchmark(name).answer_type for p in problems)
    assert all(p.question.strip() and p.gold.strip() for p in problems)


def test_every_gold_answer_parses(loaded):
    """Numbers read as numbers, letters are A-D, and math-verify reads every LaTeX gold."""
    string_only = []
    with Grader() as grader:
        for name, problems in loaded.items():
            for p in problems:
                if p.answer_type == "multiple_choice":
                    assert p.gold in "ABCD" and len(p.gold) == 1, p.id
                elif p.answer_type in ("integer", "number"):
                    value = _number(p.gold)
                    assert value is not None, (name, p.id, p.gold)
                    if p.answer_type == "integer":
                        assert value[0].denominator == 1, (name, p.id, p.gold)
                else:
                    parsed = _mv_parse(p.gold)
                    assert parsed, (name, p.id, p.gold)
                    if isinstance(parsed[0], str):  # math-verify kept it as text only
                        string_only.append((name, p.id))
                    assert grader.is_equivalent(p.gold, p.gold, p.answer_type), (name, p.id)
    # latex2sympy cannot read `E_{1},E_{2}` (a capital E with a subscript); it still matches as text.
    assert string_only == [("minerva_math", "269")]


def test_gold_readers_on_real_rows(loaded, root):
    # The readers were applied: gsm8k's "#### 18" and amc23's "27.0" come out as plain numbers,
    # minerva's gold is the last \boxed{} of its solution.
    first = {name: problems[0] for name, problems in loaded.items()}
    raw = {}
    for name in ("gsm8k", "amc23", "minerva_math"):
        with open(root / get_benchmark(name).path, encoding="utf-8") as fh:
            raw[name] = json.loads(fh.readline())
    assert first["gsm8k"].gold == raw["gsm8k"]["answer"].rsplit("####", 1)[1].strip()
    assert isinstance(raw["amc23"]["answer"], float)  # stored as 27.0
    assert "." not in first["amc23"].gold and int(first["amc23"].gold) == raw["amc23"]["answer"]
    assert "\\boxed{" + first["minerva_math"].gold + "}" in raw["minerva_math"]["solution"]


READERS = [
    ("Natalia sold 48/2 = 24 clips.\n#### 1,234", "gsm8k_hashes", "1234"),
    ("so \\boxed{1} or rather \\boxed{\\frac{1}{2}}", "last_boxed", "\\frac{1}{2}"),
    ("27.0", "number", "27"),
    ("0.50", "number", "0.5"),
    ("-3", "number", "-3"),
    ("b", "letter", "B"),
    ("  \\frac{\\pi}{2} ", "plain", "\\frac{\\pi}{2}"),
]


@pytest.mark.parametrize("value,reader,expected", READERS)
def test_read_gold(value, reader, expected):
    assert read_gold(value, reader) == expected


@pytest.mark.parametrize("value,reader", [("18", "gsm8k_hashes"), ("no box", "last_boxed"), ("twelve", "number"), ("E", "letter"), ("", "plain")])
def test_read_gold_rejects(value, reader):
    with pytest.raises(ValueError):
        read_gold(value, reader)
    if reader in ("gsm8k_hashes", "last_boxed"):  # lenient mode keeps an already-final gold
        assert read_gold(value, reader, strict=False) == value


def test_gpqa_is_ids_and_letters_only(loaded):
    problems = loaded["gpqa_diamond"]
    assert [p.id for p in problems] == [str(i) for i in range(198)]
    assert {p.gold for p in problems} == set("ABCD")
    shown = repr(problems[0])
    assert problems[0].question not in shown and "question" not in shown  # never in logs
    prompt = get_benchmark("gpqa_diamond").format_prompt(problems[0].question)
    assert prompt.startswith(problems[0].question) and "(A, B, C or D)" in prompt


def test_missing_field_names_file_line_and_field(tmp_path):
    folder = tmp_path / "math500"
    folder.mkdir()
    rows = [{"problem": "1+1?", "answer": "2", "unique_id": "a"}, {"problem": "2+2?", "unique_id": "b"}]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError) as err:
        load_benchmark("math500", tmp_path)
    assert "test.jsonl:2" in str(err.value) and "'answer'" in str(err.value)
    bad = dataclasses.replace(get_benchmark("minerva_math"), path="math500/test.jsonl", question_field="problem", gold_field="answer", id_field="unique_id")
    (folder / "test.jsonl").write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match=r"test.jsonl:1.*boxed"):
        load_benchmark(bad, tmp_path)  # a custom Benchmark whose gold reader does not fit


def test_root_resolution(tmp_path, monkeypatch, root):
    monkeypatch.setenv("VTCR_DATA", str(root.parent))
    assert benchmarks_root() == root
    assert len(load_benchmark("aime25")) == 30  # found through the environment variable
    monkeypatch.setenv("VTCR_DATA", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="VTCR_DATA"):
        benchmarks_root()
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("VTCR_DATA", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no benchmarks/ folder"):
        benchmarks_root()
    monkeypatch.delenv("VTCR_DATA")
    assert benchmarks_root() == root  # the default: ../shared/data next to this checkout
    assert benchmarks_root(root) == root  # an explicit root wins
    with pytest.raises(FileNotFoundError, match="amc23"):
        load_benchmark("amc23", tmp_path)  # folder exists, file does not


def test_benchmark_validates():
    with pytest.raises(ValueError, match="gold_reader"):
        Benchmark("x", "x/test.jsonl", "q", "a", gold_reader="boxed")
    with pytest.raises(ValueError, match="relative"):
        Benchmark("x", "/abs/test.jsonl", "q", "a")
    with pytest.raises(ValueError, match="question"):
        Benchmark("x", "x/test.jsonl", "q", "a", prompt="no placeholder")
