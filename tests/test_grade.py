"""Answer extraction, equivalence, time limits off the main thread, agreement with an external
grader (the math-evaluation-harness verdicts stored with the shared traces), and `vtcr grade`."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

from vtcr.cli import main as cli_main
from vtcr.evaluate.benchmarks import get_benchmark
from vtcr.evaluate.grade_file import default_graded_path, grade_file
from vtcr.grade import (
    GradeConfig,
    Grader,
    GradeResult,
    extract_answer,
    grade_response,
    is_equivalent,
    last_boxed,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

EXTRACT_MATH = [
    # (response, expected answer)
    ("<think>\nmaybe \\boxed{3}\n</think>\n\n<answer>5</answer>", "5"),  # tags after </think> win
    ("<think>x</think><answer>\\boxed{\\frac{1}{2}}</answer>", "\\frac{1}{2}"),  # box inside tags
    ("<answer>1</answer> wait </think> so \\boxed{2}", "2"),  # tags before the last </think> are thinking
    ("</think><answer>  </answer> the result is \\boxed{9}", "9"),  # empty tags do not count
    ("<think>long thought, cut off", None),  # truncated, nothing stated
    ("first \\boxed{1}, finally \\boxed{\\frac{a}{b}}", "\\frac{a}{b}"),  # the last box
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),  # nested braces
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are literal
    ("so $\\boxed 5$.", "5"),  # `\boxed 5` form
    ("hence \\fbox{7}", "7"),
    ("\\boxed{3} and then \\boxed{\\frac{1", "3"),  # an unclosed box (cut off) is skipped
    ("The final answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("I think the answer is definitely \\(8000\\).", "8000"),
    ("**Answer:** $x = 3$", "x = 3"),
    ("The answer is: Evelyn", "Evelyn"),
    ("Therefore the answer is three boxes contain neither pens nor pencils.", "3"),
    ("so the answer is correct. The greater integer is indeed 18.", "18"),  # a verdict is no answer
    ("We get 1,000 apples in total", "1000"),  # last number
    ("no numbers here at all", None),
    ("", None),
    ("<|begin_of_thought|>try \\boxed{4}<|end_of_thought|><|begin_of_solution|>so \\boxed{5}<|end_of_solution|>", "5"),
]


@pytest.mark.parametrize("response,expected", EXTRACT_MATH)
def test_extract_math(response, expected):
    assert extract_answer(response, "math") == expected


EXTRACT_CHOICE = [
    ("</think><answer>C</answer>", "C"),
    ("<answer>(B) because</answer>", "B"),
    ("so \\boxed{B}", "B"),
    ("\\boxed{\\text{(D)}}", "D"),
    ("The answer is (C).", "C"),
    ("**Answer: A**", "A"),
    ("Hence the correct option is B.", "B"),
    ("</think>\nthe answer is c", "C"),
    ("A cat sat on a mat. I am not sure.", None),  # a sentence-initial "A" is not a choice
    ("", None),
]


@pytest.mark.parametrize("response,expected", EXTRACT_CHOICE)
def test_extract_multiple_choice(response, expected):
    assert extract_answer(response, "multiple_choice") == expected


def test_last_boxed_and_bad_answer_type():
    assert last_boxed("a \\boxed{} b \\boxed{2} c \\boxed{}") == "2"
    assert last_boxed("nothing") is None
    with pytest.raises(ValueError, match="answer_type"):
        extract_answer("\\boxed{1}", "maths")


# --------------------------------------------------------------------------------------------
# Equivalence
# --------------------------------------------------------------------------------------------

EQUIV = [
    # (pred, gold, answer_type, equal)
    ("\\frac{1}{2}", "0.5", "math", True),
    ("\\dfrac{3}{4}", "\\frac{3}{4}", "math", True),
    ("\\frac{1}{2}", "\\frac{1}{3}", "math", False),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", "math", True),
    ("2\\sqrt{5}", "\\frac{2\\sqrt{65}}{3}", "math", False),
    ("x^2+2x+1", "(x+1)^2", "math", True),
    ("30^\\circ", "30", "math", True),  # degrees
    ("30^{\\circ}", "30", "math", True),
    ("5 \\text{ cm}", "5", "math", True),  # units
    ("3.83 \\times 10^{35} \\text{ ergs/s}", "3.83e35", "math", True),
    ("12^{\\text{th}}\\text{ grade}", "12", "math", True),
    ("[2, 5)", "[2,5)", "math", True),  # intervals
    ("(2, 5)", "[2,5)", "math", False),
    ("(1, 2)", "(1,2)", "math", True),  # tuples: order matters
    ("(2, 1)", "(1,2)", "math", False),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", "math", True),
    ("50\\%", "50", "math", True),  # percentages
    ("50\\%", "0.5", "math", True),
    ("1", "100", "math", False),  # no % sign: no rescaling
    ("27.0", "27", "integer", True),
    ("27", "27.0", "number", True),
    ("27.5", "27", "integer", False),
    ("1,000", "1000", "number", True),
    ("4.031882", "4.03188", "number", True),  # relative tolerance 1e-4
    ("4.1", "4.03188", "number", False),
    ("x(t) = \\cosh(at)", "\\frac{1}{2}(e^{at}+e^{-at})", "math", True),  # function label, math-verify
    ("\\frac{1}{4-\\omega^2}, \\quad \\text{for } \\omega^2 \\neq 4", "\\frac{1}{4-\\omega^{2}}", "math", True),
    ("\\text{Evelyn}", "Evelyn", "math", True),
    ("E_1", "E_{1}", "math", True),
    ("C", "C", "multiple_choice", True),
    ("(C)", "C", "multiple_choice", True),
    ("B", "C", "multiple_choice", False),
    (None, "5", "math", False),
    ("", "5", "math", False),
]


@pytest.fixture(scope="module")
def grader():
    with Grader() as g:
        yield g


@pytest.mark.parametrize("pred,gold,answer_type,equal", EQUIV)
def test_equivalence(grader, pred, gold, answer_type, equal):
    assert grader.is_equivalent(pred, gold, answer_type) is equal


def test_multiple_choice_gold_must_be_a_letter(grader):
    with pytest.raises(ValueError, match="letter"):
        grader.is_equivalent("A", "42", "multiple_choice")


def test_grade_response_reasons():
    assert grade_response("</think><answer>27.0</answer>", "27", "integer") == GradeResult("27.0", True, "numeric")
    assert grade_response("so \\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}") == GradeResult("\\dfrac{1}{2}", True, "exact")
    assert grade_response("\\boxed{(x+1)^2}", "x^2+2x+1") == GradeResult("(x+1)^2", True, "math_verify")
    assert grade_response("\\boxed{7}", "8") == GradeResult("7", False, "mismatch")
    assert grade_response("no idea", "8") == GradeResult(None, False, "no_answer")
    assert grade_response("The answer is (B).", "B", "multiple_choice") == GradeResult("B", True, "letter")


def test_config_round_trips_and_validates():
    cfg = GradeConfig(timeout_s=2.5, rel_tol=1e-6, isolate=True, workers=4)
    assert GradeConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError):
        GradeConfig(timeout_s=0)
    with pytest.raises(ValueError):
        GradeConfig(workers=0)
    with pytest.raises(ValueError, match="unknown"):
        GradeConfig.from_json('{"timeout": 1}')


# --------------------------------------------------------------------------------------------
# Time limits: math-verify's signal timeouts only work in the main thread; ours work anywhere
# --------------------------------------------------------------------------------------------

# 9^(9^9) against 5: sympy tries to evaluate a number with ~370 million digits and does not return.
HANGING = ("9^{9^{9}}", "5")


def test_hanging_answer_is_time_limited_from_a_thread():
    with Grader(GradeConfig(timeout_s=3.0)) as g, ThreadPoolExecutor(max_workers=2) as pool:
        assert threading.current_thread() is threading.main_thread()
        start = time.perf_counter()
        verdict = pool.submit(g.judge, *HANGING).result(timeout=60)
        elapsed = time.perf_counter() - start
        assert verdict == (False, "timeout")
        assert elapsed < 30  # worker start-up plus the 1 s limit, not a hang
        # The killed worker is replaced: the grader keeps working, from several threads at once.
        futures = [pool.submit(g.judge, "x^2+2x+1", "(x+1)^2"), pool.submit(g.judge, "x^2+2x+2", "(x+1)^2")]
        assert [f.result(timeout=60) for f in futures] == [(True, "math_verify"), (False, "mismatch")]


def test_hanging_answer_is_time_limited_in_the_main_thread(caplog):
    with Grader(GradeConfig(timeout_s=1.0)) as g:
        start = time.perf_counter()
        with caplog.at_level("WARNING", logger="vtcr.grade.grader"):
            assert g.judge(*HANGING) == (False, "timeout")
        assert time.perf_counter() - start < 20
        assert "timed out" in caplog.text  # logged
        assert g.judge("x^2+2x+1", "(x+1)^2") == (True, "math_verify")


def _judge_in_worker(pred: str, gold: str) -> tuple[bool, str]:
    with Grader(GradeConfig(timeout_s=1.0)) as g:
        return g.judge(pred, gold)


def test_grading_in_worker_processes():
    """A process-pool worker runs tasks in its main thread: the interval timer works there."""
    ctx = multiprocessing.get_context("fork")  # the test module is importable in the child as is
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        assert pool.submit(_judge_in_worker, *HANGING).result(timeout=60) == (False, "timeout")
        assert pool.submit(_judge_in_worker, "x^2+2x+1", "(x+1)^2").result(timeout=60) == (True, "math_verify")


def test_module_functions_work_off_the_main_thread():
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(is_equivalent, "\\frac{2}{4}", "0.5").result(timeout=60)  # fast path, no worker
        assert pool.submit(is_equivalent, "\\sin^2 x + \\cos^2 x", "1").result(timeout=120)


# --------------------------------------------------------------------------------------------
# Agreement with the math-evaluation-harness verdicts stored with the shared traces
# --------------------------------------------------------------------------------------------


def _agreement_module():
    path = PROJECT_ROOT / "perf" / "grader_agreement.py"
    spec = importlib.util.spec_from_file_location("grader_agreement", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_agreement_with_harness_on_a_slice(shared_traces):
    agreement = _agreement_module()
    records = shared_traces[::6]  # every benchmark and model represented; ~175 records
    with Grader() as g:
        report = agreement.measure(records, g, "pred", progress=False)
        # Every hand-checked harness error in the slice is graded the corrected way.
        checked = [(r, agreement.HARNESS_ERRORS[r["id"]][0]) for r in records if r["id"] in agreement.HARNESS_ERRORS]
        for r, truth in checked:
            assert g.is_equivalent(r["pred"], r["gt_answer"], get_benchmark(r["benchmark"]).answer_type) is truth, r["id"]
    s = report.summary()
    assert s["n"] == len(records) and checked
    # Raw: the harness itself is wrong on some records (docs/grading.md); adjudicated corrects
    # only the hand-checked ones in HARNESS_ERRORS.
    assert s["agreement_adjudicated"] >= 0.98, dict(report.classes)
    assert s["agreement_raw"] >= 0.95, dict(report.classes)


def test_extraction_from_raw_traces_matches_harness_on_finished_r1_traces(finished_traces):
    """Grading whole R1-style traces (`<think>...</think>` + answer): extraction + equivalence."""
    records = [t for t in finished_traces if t["r1_style"] and t["benchmark"] in ("math500", "aime24", "amc23")][::5]
    assert len(records) >= 40
    with Grader() as g:
        agree = sum(
            g.grade(t["r1_style"], t["gt_answer"], get_benchmark(t["benchmark"]).answer_type).correct == t["correct"]
            for t in records
        )
    assert agree / len(records) >= 0.98


# --------------------------------------------------------------------------------------------
# `vtcr grade`
# --------------------------------------------------------------------------------------------

RECORDS = [
    {"id": 1, "response": "<think>hmm \\boxed{3}</think>\n<answer>\\frac{1}{2}</answer>", "gold": "0.5"},
    {"id": 2, "response": "So the answer is $27$.", "gold": "27.0"},
    {"id": 3, "response": "I give up", "gold": "4"},
    {"id": 4, "response": "Finally, \\boxed{18}", "gold": "Janet sells 16 - 3 - 4 = 9 eggs\n#### 18"},
]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_cli_grade_end_to_end(tmp_path, capsys):
    src = _write_jsonl(tmp_path / "runs.jsonl", RECORDS)
    assert cli_main(["grade", str(src), "--response-field", "response", "--gold-field", "gold", "--benchmark", "gsm8k", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"n": 4, "correct": 3, "accuracy": 0.75}
    out = default_graded_path(src)
    assert out == tmp_path / "runs.graded.jsonl"
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["pred"], r["correct"]) for r in graded] == [(1, "\\frac{1}{2}", True), (2, "27", True), (3, None, False), (4, "18", True)]
    assert all(r["response"] == o["response"] for r, o in zip(graded, RECORDS))  # records kept whole

    # --pred-field grades the field as is; readable output names the file written.
    preds = _write_jsonl(tmp_path / "preds.jsonl", [{"p": "\\dfrac{1}{2}", "g": "0.5"}, {"p": "2", "g": "3"}])
    assert cli_main(["grade", str(preds), "--pred-field", "p", "--gold-field", "g", "--out", str(tmp_path / "o.jsonl")]) == 0
    text = capsys.readouterr().out
    assert "1 correct" in text and "50.00%" in text and "o.jsonl" in text
    assert [json.loads(line)["correct"] for line in (tmp_path / "o.jsonl").read_text().splitlines()] == [True, False]


def test_cli_grade_errors_name_the_input(tmp_path, capsys):
    src = _write_jsonl(tmp_path / "runs.jsonl", [{"response": "\\boxed{1}", "gold": "1"}, {"response": "\\boxed{2}"}])
    assert cli_main(["grade", str(src), "--response-field", "response", "--gold-field", "gold"]) == 2
    err = capsys.readouterr().err
    assert "runs.jsonl:2" in err and "'gold'" in err and "Traceback" not in err
    assert not (tmp_path / "runs.graded.jsonl").exists()  # nothing half-written
    assert cli_main(["grade", str(src), "--pred-field", "response", "--gold-field", "gold", "--benchmark", "nope"]) == 2
    assert "math500" in capsys.readouterr().err  # lists the known benchmarks
    with pytest.raises(SystemExit):  # exactly one of --pred-field / --response-field
        cli_main(["grade", str(src), "--gold-field", "gold"])
    with pytest.raises(FileNotFoundError):
        grade_file(tmp_path / "missing.jsonl", gold_field="g", pred_field="p")
