"""What the CLI says to a person, one test per message: a verb's bad flag shows that verb's usage; an
unfinished run says plainly that it has no final answer; `vtcr render` names what it wrote once;
report.md and the viewer show every figure of the same summary as the same string (one rounding
rule: half up on the decimal form, `vtcr.evaluate.figures`)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vtcr.cli import main

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --- a bad flag ----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["reason", "What is 2+3?", "--model", "m", "--bogus"],
    ["render", "in.txt", "-o", "out", "--bogus", "1"],
    ["train", "--data", "d", "--model", "m", "--out", "o", "--bogus"],
    ["env", "--bogus"],
], ids=lambda argv: argv[0])  # fmt: skip
def test_a_verbs_bad_flag_prints_that_verbs_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    verb = argv[0]
    assert err.startswith(f"usage: vtcr {verb} "), err
    assert f"vtcr {verb}: error: unrecognized arguments: --bogus" in err
    assert "VERB ..." not in err  # not the top-level usage


def test_a_bad_flag_before_any_verb_prints_the_top_level_usage(capsys):
    with pytest.raises(SystemExit):
        main(["--bogus"])
    assert capsys.readouterr().err.startswith("usage: vtcr [-h] [--version] VERB ...")


# --- an unfinished run ---------------------------------------------------------------------------


def _record(text: str, stop_reason: str):
    from vtcr.engine.record import RoundRecord, RunRecord
    from vtcr.grade import extract_answer

    finished = stop_reason == "answer"
    return RunRecord(question="Add: b7 d3 g9", mode="vtc", model="m", answer=extract_answer(text), finished=finished,
                     stop_reason=stop_reason, rounds=[RoundRecord(text, 9, 0, 0, 20, 20, "stop", 0.1)])  # fmt: skip


def test_an_unfinished_run_says_there_is_no_final_answer_and_labels_the_partial_extraction():
    from vtcr.commands.reason import answer_line

    # what the engine records for a run cut off after two rounds: the grader's fallback finds "04"
    unfinished = _record("b7 | 00+7=07\nd3 | 01+3=04", "max_rounds")
    assert unfinished.answer == "04"
    line = answer_line(unfinished)
    assert line == "no final answer (partial extraction from the unfinished text: 04)"
    assert not line.startswith("answer")
    assert answer_line(_record("no digits at all", "max_rounds")) == "no final answer"
    assert answer_line(_record("</think>\n\n<answer>19</answer>", "answer")) == "answer: 19"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, qwen3_tokenizer_dir) -> Path:
    from vtcr.models import init_model

    return init_model("qwen3-vl", "tiny", qwen3_tokenizer_dir, tmp_path_factory.mktemp("msg") / "tiny", seed=0)


def test_vtcr_reason_of_a_run_that_does_not_finish_prints_no_answer(tiny_model, capsys):
    """A random-weight model never finishes: the CLI's last lines say so and show no `answer:`."""
    assert main(["reason", "What is 2 + 3?", "--model", str(tiny_model), "--max-rounds", "2", "--round-tokens", "6",
                 "--device", "cpu"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("=== not finished: no final answer after 2 round(s)")
    assert lines[-1].startswith("no final answer")
    assert not any(line.startswith("answer:") for line in lines)


# --- vtcr render's listing -----------------------------------------------------------------------


def test_render_of_one_page_names_its_file_once(tmp_path, capsys):
    (tmp_path / "one.txt").write_text("A short line of reasoning.\n", encoding="utf-8")
    assert main(["render", str(tmp_path / "one.txt"), "-o", str(tmp_path / "pages")]) == 0
    out = capsys.readouterr().out.strip()
    assert sorted(p.name for p in (tmp_path / "pages").iterdir()) == ["page_001.png"]
    assert out.endswith(f"-> {tmp_path / 'pages' / 'page_001.png'}"), out
    assert out.count("page_001.png") == 1 and "..." not in out and "…" not in out


def test_render_of_several_pages_names_first_last_and_count(tmp_path, capsys, finished_traces):
    text = max((t["r1_style"] or "" for t in finished_traces[:50]), key=len)
    (tmp_path / "long.txt").write_text(text, encoding="utf-8")
    assert main(["render", str(tmp_path / "long.txt"), "-o", str(tmp_path / "pages"), "--preset", "vtcr1"]) == 0
    out = capsys.readouterr().out.strip()
    files = sorted(p.name for p in (tmp_path / "pages").iterdir())
    assert len(files) >= 3
    assert out.endswith(f"-> {tmp_path / 'pages' / 'page_001.png'} … {files[-1]} ({len(files)} pages)"), out


# --- one rounding rule for report.md and the viewer ----------------------------------------------


def test_rounding_rule_is_half_up_on_the_decimal_form():
    from vtcr.evaluate.figures import format_figure

    assert [format_figure(v, "int") for v in (138.5, 82.5, 2.5, 1234567.5, 3)] == ["139", "83", "3", "1,234,568", "3"]
    assert format_figure(2.675, "num") == "2.68"  # the binary value is below 2.675; people read 2.675
    assert format_figure(0.1435, "pct") == "14.4" and format_figure(1 / 3, "pct") == "33.3"
    assert format_figure(1.005, "x") == "1.01x"
    assert [format_figure(v, "s") for v in (0.012345, 9.9951, 12.25)] == ["0.0123", "10.0", "12.3"]
    assert format_figure(None, "int") == "–"


def _rows_with_half_means(shared_data) -> list[dict]:
    """Real results rows (the runner's make_row, the real grader) for two MATH500 problems in two modes,
    with token counts whose means end in .5 (138.5 generated, 82.5 vision tokens)."""
    from vtcr.engine.record import RoundRecord, RunRecord
    from vtcr.evaluate import load_benchmark
    from vtcr.evaluate.benchmarks import get_benchmark
    from vtcr.evaluate.run import Unit, make_row
    from vtcr.grade import GradeConfig, Grader

    problems = load_benchmark("math500", root=shared_data / "benchmarks")[:2]
    rows = []
    with Grader(GradeConfig()) as grader:
        for mode in ("vtc", "standard"):
            for k, (p, gen, vis, secs) in enumerate(zip(problems, (138, 139), (82, 83), (1.2345, 2.0))):
                text = f"</think>\n\n<answer>{p.gold if k == 0 else 'wrong'}</answer>"
                record = RunRecord(question=p.question, mode=mode, model="m", answer=None, finished=True,
                                   stop_reason="answer", seconds=secs,
                                   rounds=[RoundRecord(text, gen, 1, vis, 300, 300, "stop", secs * 0.9, render_s=0.00125)])  # fmt: skip
                rows.append(make_row(record, Unit(get_benchmark("math500"), p, 0, mode), "b00001", grader, None))
    return rows


def test_report_and_viewer_show_the_same_figures_for_the_same_summary(tmp_path, shared_data):
    from vtcr.engine import EngineConfig
    from vtcr.evaluate.config import EvalConfig
    from vtcr.evaluate.figures import GROUP_COLUMNS
    from vtcr.evaluate.report import write_reports

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    out = tmp_path / "eval"
    out.mkdir()
    config = EvalConfig(benchmarks=("math500",), modes=("vtc", "standard"), model="m", engine=EngineConfig())
    (out / "config.json").write_text(config.to_json() + "\n", encoding="utf-8")
    rows = _rows_with_half_means(shared_data)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (out / "batches.jsonl").write_text(json.dumps({"batch_id": "b00001", "benchmark": "math500", "mode": "vtc",
                                                   "size": 4, "wall_s": 3.0}) + "\n", encoding="utf-8")  # fmt: skip
    summary = write_reports(out, expected_runs=len(rows))
    vtc = next(g for g in summary["groups"] if g["mode"] == "vtc")
    assert vtc["generated_tokens"] == 138.5 and vtc["vision_tokens"] == 82.5  # the figures the issue saw differ

    report = (out / "report.md").read_text(encoding="utf-8")
    header = "| " + " | ".join(h for h, _, _ in GROUP_COLUMNS) + " |"
    table = report.splitlines()[report.splitlines().index(header) :]
    report_rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                                 for line in table[2:4])}  # fmt: skip
    assert report_rows["vtc"][GROUP_COLUMNS.index(("gen. tokens", "generated_tokens", "int"))] == "139"
    assert report_rows["vtc"][GROUP_COLUMNS.index(("vision tokens", "vision_tokens", "int"))] == "83"

    # the viewer, as a browser shows it: its summary table holds the report's strings, cell for cell
    if chromium is None:
        pytest.skip("chromium is not installed (bash scripts/install.sh --test installs Debian's chromium)")
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", (out / "index.html").as_uri()],
                          capture_output=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    dom = proc.stdout.decode("utf-8")
    groups = re.search(r'<table id="groups">(.*?)</table>', dom, flags=re.DOTALL).group(1)
    heads = [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", groups)]
    assert heads == ["benchmark"] + [h for h, _, _ in GROUP_COLUMNS]
    body = re.search(r"<tbody>(.*?)</tbody>", groups, flags=re.DOTALL).group(1)
    viewer_rows = [[html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", tr)] for tr in re.findall(r"<tr>(.*?)</tr>", body)]
    assert len(viewer_rows) == 2
    for cells in viewer_rows:
        assert cells[0] == "math500"
        assert cells[1:] == report_rows[cells[1]], f"viewer {cells[1:]} != report.md {report_rows[cells[1]]}"
