"""The real evaluation runner end to end: a tiny random Qwen3-VL through the real engine and the
transformers backend, on real MATH500 and GPQA-Diamond problems, graded by the real grader; the CLI
killed with SIGKILL and resumed; refusals for bad input; the HTML viewer in headless Chromium.

Random weights never finish a problem, which is fine: every run still goes through generation,
rendering, grading and bookkeeping. GPQA text is never printed, not even by a failing assert:
leak checks collect ids only.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vtcr.cli import main
from vtcr.evaluate import list_benchmarks, load_benchmark
from vtcr.engine import EngineConfig
from vtcr.evaluate.config import EvalConfig
from vtcr.evaluate.results import read_rows
from vtcr.evaluate.benchmarks import get_benchmark
from vtcr.evaluate.run import Unit, make_row, run_eval, unit_seed

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow

ARGS = dict(benchmarks=("math500", "gpqa_diamond"), modes=("vtc", "standard"), limit=2,
            engine=EngineConfig(max_rounds=2, round_tokens=8))
CLI_ARGS = ["--benchmarks", "math500,gpqa_diamond", "--modes", "vtc,standard", "--limit", "2",
            "--max-rounds", "2", "--round-tokens", "8"]  # fmt: skip
N_RUNS = 2 * 2 * 2  # benchmarks x problems x modes, one sample each
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0"]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_model(qwen3_tokenizer_dir, tmp_path_factory) -> Path:
    from vtcr.models import init_model

    return init_model("qwen3-vl", "tiny", qwen3_tokenizer_dir, tmp_path_factory.mktemp("eval_model") / "tiny")


@pytest.fixture(scope="session")
def eval_dir(tiny_model, shared_data, tmp_path_factory) -> Path:
    """One complete run through the library API (models stay loaded in this process)."""
    out = tmp_path_factory.mktemp("eval") / "run"
    cfg = EvalConfig(**ARGS, model=str(tiny_model))
    summary = run_eval(cfg, out, device="cpu", progress=False)
    assert summary["runs"] == N_RUNS and summary["complete"]
    return out


def test_the_bar_of_each_mode_shows_runs_done_and_the_share_correct(tiny_model, shared_data, tmp_path, capsys):
    cfg = EvalConfig(benchmarks=("math500",), modes=("vtc", "no-memory"), limit=2, model=str(tiny_model),
                     engine=EngineConfig(max_rounds=1, round_tokens=4))  # fmt: skip
    summary = run_eval(cfg, tmp_path / "run", device="cpu", progress=True, report=False)
    err = capsys.readouterr().err.replace("\r", "\n")
    for mode in cfg.modes:
        group = next(g for g in summary["groups"] if g["mode"] == mode)
        right = round(group["avg_at_k"] * 2)
        final = [line for line in err.splitlines() if line.startswith(f"eval {mode}:")][-1]
        assert "2/2" in final and f"correct {right}/2 ({100 * right / 2:.1f}%)" in final, final


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]


def _keys(rows):
    return [(r["benchmark"], r["id"], r["sample"], r["mode"]) for r in rows]


# --------------------------------------------------------------------------------------------
# A complete run
# --------------------------------------------------------------------------------------------

def test_complete_run_writes_one_graded_row_per_run(eval_dir, shared_data):
    rows = _rows(eval_dir)
    problems = {b: load_benchmark(b)[:2] for b in ARGS["benchmarks"]}
    expected = {(b, p.id, 0, m) for b in ARGS["benchmarks"] for p in problems[b] for m in ARGS["modes"]}
    assert len(rows) == N_RUNS and set(_keys(rows)) == expected
    gold = {(b, p.id): p.gold for b in problems for p in problems[b]}
    for r in rows:
        assert r["gold"] == gold[(r["benchmark"], r["id"])]
        assert r["grade_reason"] in ("no_answer", "mismatch", "exact", "numeric", "math_verify", "letter", "timeout")
        assert isinstance(r["correct"], bool) and r["latency_s"] > 0 and r["batch_id"]
        assert r["config"]["round_tokens"] == 8
        assert r["seed"] == unit_seed(0, r["benchmark"], r["id"], r["sample"])  # per problem x sample, any mode
        if r["mode"] == "standard":
            assert len(r["rounds"]) == 1 and r["rounds"][0]["generated_tokens"] <= 16
        else:  # random weights never answer: two rounds, the first rendered into pages
            assert r["stop_reason"] in ("max_rounds", "empty_round")
            assert all(x["generated_tokens"] <= 8 for x in r["rounds"])
    config = json.loads((eval_dir / "config.json").read_text())
    assert config["benchmarks"] == ["math500", "gpqa_diamond"] and config["samples"] is None
    batches = [json.loads(x) for x in (eval_dir / "batches.jsonl").read_text().splitlines()]
    assert sum(b["size"] for b in batches) == N_RUNS and all(b["wall_s"] > 0 for b in batches)


def test_vtc_pages_are_saved_and_fed_back(eval_dir):
    vtc = [r for r in _rows(eval_dir) if r["mode"] == "vtc" and r["benchmark"] == "math500"]
    assert vtc
    for r in vtc:
        first = r["rounds"][0]
        if len(r["rounds"]) < 2:
            continue
        assert first["pages"] >= 1 and len(first["page_files"]) == first["pages"]
        assert all((eval_dir / f).is_file() for f in first["page_files"])
        assert r["rounds"][1]["images"] == first["pages"] and r["rounds"][1]["vision_tokens"] > 0


def test_report_summary_and_plots(eval_dir):
    summary = json.loads((eval_dir / "summary.json").read_text())
    groups = {(g["benchmark"], g["mode"]): g for g in summary["groups"]}
    assert set(groups) == {(b, m) for b in ARGS["benchmarks"] for m in ARGS["modes"]}
    rows = _rows(eval_dir)
    for (b, m), g in groups.items():
        mine = [r for r in rows if (r["benchmark"], r["mode"]) == (b, m)]
        assert g["runs"] == len(mine) == 2
        assert g["avg_at_k"] == sum(r["correct"] for r in mine) / 2
        assert g["generated_tokens"] == sum(x["generated_tokens"] for r in mine for x in r["rounds"]) / 2
        assert g["speedup"] == pytest.approx(groups[(b, "standard")]["latency_s"] / g["latency_s"])
    report = (eval_dir / "report.md").read_text()
    for bench in ARGS["benchmarks"]:
        assert f"## {bench}" in report
    assert "| vtc |" in report and "| standard |" in report and "avg@K" in report and "pass@K" in report
    for name in ("accuracy_vs_tokens.png", "latency.png", "rounds.png"):
        data = (eval_dir / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"plots/{name}" in report


def test_gpqa_text_never_leaves_the_benchmark_file(eval_dir):
    problems = load_benchmark("gpqa_diamond")[:2]
    rows = [r for r in _rows(eval_dir) if r["benchmark"] == "gpqa_diamond"]
    assert rows and all(r["question"] is None for r in rows)
    assert all(re.fullmatch(r"[A-D]", r["gold"]) and (r["pred"] is None or re.fullmatch(r"[A-D]", r["pred"])) for r in rows)
    assert not (eval_dir / "images" / "gpqa_diamond").exists() and not any("gpqa" in str(p) for p in (eval_dir / "images").rglob("*"))
    outputs = {name: (eval_dir / name).read_text(encoding="utf-8") for name in ("report.md", "summary.json", "index.html")}
    # Snippets of each question (its start and a middle slice); report ids only on failure.
    leaked = [(p.id, name) for p in problems for name, text in outputs.items()
              for snippet in (p.question[:40], p.question[len(p.question) // 2 :][:40]) if snippet.strip() in text]  # fmt: skip
    assert leaked == []
    model_text = [x["text"] for r in rows for x in r["rounds"] if len(x["text"].strip()) > 3]
    assert not [t for t in model_text if t in outputs["index.html"]]  # not even the model's words about it


# --------------------------------------------------------------------------------------------
# Kill and resume; refusals
# --------------------------------------------------------------------------------------------

def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def test_killed_run_resumes_to_exactly_one_line_per_run(tiny_model, eval_dir, tmp_path):
    out = tmp_path / "killed"
    results = out / "results.jsonl"
    cmd = [sys.executable, "-m", "vtcr.cli", "eval", *CLI_ARGS, "--model", str(tiny_model), "--device", "cpu",
           "--out", str(out), "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if results.is_file() and results.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    written = results.read_bytes().count(b"\n")
    assert 1 <= written < N_RUNS
    with results.open("a", encoding="utf-8") as fh:  # and a write torn by the kill
        fh.write('{"benchmark": "math500", "id": "test/precalculus/8')

    assert main(["eval", *CLI_ARGS, "--model", str(tiny_model), "--device", "cpu", "--out", str(out),
                 "--resume", "--quiet"]) == 0  # fmt: skip
    rows = read_rows(results)  # raises on any torn or duplicate line
    assert len(rows) == N_RUNS and sorted(_keys(rows)) == sorted(_keys(_rows(eval_dir)))
    # Seeds depend on the sample only, so the resumed run produced what the uninterrupted one did.
    reference = {k: r for k, r in zip(_keys(_rows(eval_dir)), _rows(eval_dir))}
    for k, r in zip(_keys(rows), rows):
        assert [x["text"] for x in r["rounds"]] == [x["text"] for x in reference[k]["rounds"]], k
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["runs"] == N_RUNS
    batch_ids = [json.loads(x)["batch_id"] for x in (out / "batches.jsonl").read_text().splitlines()]
    assert len(set(batch_ids)) == len(batch_ids)  # a killed batch's id is never reused
    # Resuming a finished run does no work and adds nothing.
    before = results.read_bytes()
    assert main(["eval", *CLI_ARGS, "--model", str(tiny_model), "--out", str(out), "--resume", "--quiet"]) == 0
    assert results.read_bytes() == before


def test_different_settings_and_unrequested_reuse_are_refused(eval_dir, tiny_model, capsys):
    before = {p.name: p.read_bytes() for p in eval_dir.iterdir() if p.is_file()}
    base = [a for a in CLI_ARGS]
    changed = base[: base.index("--round-tokens")] + ["--round-tokens", "9", "--temperature", "0.7"]
    assert main(["eval", *changed, "--model", str(tiny_model), "--out", str(eval_dir), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "round_tokens: 8 -> 9" in err and "temperature: 0.6 -> 0.7" in err
    assert main(["eval", *base, "--model", str(tiny_model), "--out", str(eval_dir)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in eval_dir.iterdir() if p.is_file()} == before


def test_unknown_benchmark_lists_the_known_ones(tmp_path, capsys):
    assert main(["eval", "--benchmarks", "math500,aime26", "--model", "m", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'aime26'" in err and all(name in err for name in list_benchmarks())
    assert not (tmp_path / "o").exists()


def test_data_file_with_a_missing_field_names_file_line_and_field(shared_data, tmp_path, capsys):
    lines = (shared_data / "benchmarks" / "math500" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    broken = json.loads(lines[1])
    del broken["answer"]
    data_file = tmp_path / "data" / "math500" / "test.jsonl"
    data_file.parent.mkdir(parents=True)
    data_file.write_text("\n".join([lines[0], json.dumps(broken), lines[2]]) + "\n", encoding="utf-8")
    assert main(["eval", "--benchmarks", "math500", "--model", "m", "--data-root", str(tmp_path / "data"),
                 "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert f"{data_file}:2: missing field 'answer'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written before the data is known to be good


def test_answer_that_hangs_math_verify_is_time_limited_counted_wrong_and_logged(shared_data, caplog):
    from vtcr.engine import RoundRecord, RunRecord
    from vtcr.evaluate import Problem
    from vtcr.grade import GradeConfig, Grader

    # 9^(9^9) against 5: sympy tries to build a number with ~370 million digits.
    problem = Problem("p-hang", "What is 2+3?", "5", "math", "math500")
    record = RunRecord(question=problem.question, mode="vtc", model="tiny", finished=True, stop_reason="answer",
                       seconds=1.0, rounds=[RoundRecord("</think> \\boxed{9^{9^{9}}}", 12, 0, 0, 40, 40, "stop", 1.0)])  # fmt: skip
    start = time.perf_counter()
    with Grader(GradeConfig(timeout_s=1.0)) as grader, caplog.at_level(logging.WARNING, logger="vtcr.grade.grader"):
        row = make_row(record, Unit(get_benchmark("math500"), problem, 0, "vtc"), "b00001", grader, None)
    assert time.perf_counter() - start < 30
    assert (row["pred"], row["correct"], row["grade_reason"]) == ("9^{9^{9}}", False, "timeout")
    assert "timed out" in caplog.text


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_runs_and_an_outage_is_rerun_on_resume(tiny_model, shared_data, tmp_path):
    """Against `vtcr serve` over HTTP (in this process): runs that failed because the server was
    unreachable are recorded with their error, then run again by --resume."""
    import threading

    from vtcr.engine import TransformersBackend
    from vtcr.engine.openai_backend import OpenAIBackend
    from vtcr.engine.server import ServerConfig, make_server, server_url

    httpd = make_server(TransformersBackend.from_pretrained(tiny_model, device="cpu"), ServerConfig(port=0, served_model_name="tiny"))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        url = server_url(httpd)
        cfg = EvalConfig(benchmarks=("math500",), modes=("vtc",), limit=2, engine=EngineConfig(max_rounds=2, round_tokens=8),
                         server=url, served_model="tiny")  # fmt: skip
        out = tmp_path / "served"
        # The outage: the same settings, but every request goes to a port nobody listens on.
        dead = OpenAIBackend(f"http://127.0.0.1:{_free_port()}/v1", "tiny", max_retries=0, timeout_s=5)
        summary = run_eval(cfg, out, backend=dead, progress=False)
        rows = _rows(out)
        assert len(rows) == 2 and all(r["error"] and r["correct"] is False for r in rows)
        assert summary["groups"][0]["errors"] == 2
        assert "## Runs with errors" in (out / "report.md").read_text()

        summary = run_eval(cfg, out, resume=True, progress=False)  # the config's own server this time
        rows = _rows(out)
        assert len(rows) == 2 and all(r["error"] is None for r in rows) and summary["groups"][0]["errors"] == 0
        assert sorted(r["id"] for r in rows) == sorted(p.id for p in load_benchmark("math500")[:2])
        for r in rows:
            assert r["model"] == "tiny" and len(r["rounds"]) == 2 and r["rounds"][0]["pages"] >= 1
            assert r["rounds"][1]["images"] == r["rounds"][0]["pages"] and r["rounds"][1]["vision_tokens"] > 0
    finally:
        httpd.shutdown()
        httpd.server_close()


# --------------------------------------------------------------------------------------------
# The viewer in headless Chromium
# --------------------------------------------------------------------------------------------

def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (bash scripts/install.sh --test installs Debian's chromium)")
    return path


def dump_dom(url: str, tmp_path: Path) -> tuple[str, str]:
    """(serialised DOM after load, browser log) of a page in headless Chromium."""
    proc = subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", url],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8", errors="replace")


def console_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if ":CONSOLE" in line]


def test_viewer_shows_rounds_text_and_page_images_without_errors(eval_dir, tmp_path):
    rows = _rows(eval_dir)
    index = next(i for i, r in enumerate(rows) if r["mode"] == "vtc" and r["rounds"][0].get("page_files"))
    run = rows[index]
    dom, log = dump_dom((eval_dir / "index.html").as_uri() + f"#run={index}", tmp_path)
    assert console_lines(log) == []
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-ready="1"' in body and 'data-errors="0"' in body
    assert re.search(r'<ul id="errors">\s*</ul>', dom)
    # every run listed, this one opened: one section per round, each round's text, every page loaded
    assert len(re.findall(r"<tr data-run=", dom)) == len(rows)
    assert len(re.findall(r'<section class="round" data-round="\d+">', dom)) == len(run["rounds"])
    for rnd in run["rounds"]:
        assert html.escape(rnd["text"], quote=False).replace("\xa0", "&nbsp;") in dom
    files = [f for rnd in run["rounds"] for f in rnd.get("page_files") or []]
    imgs = re.findall(r"<img [^>]*>", dom)
    assert len(imgs) == len(files) >= 1
    for f, tag in zip(files, imgs):
        assert f'src="{f}"' in tag and 'data-loaded="1"' in tag and "data-broken" not in tag
    assert html.escape(run["question"], quote=False) in dom  # math500 shows its question


def test_viewer_escapes_model_text_and_withholds_protected_runs(tmp_path):
    from vtcr.evaluate.viewer import write_viewer

    hostile = 'x</script><script>document.body.setAttribute("data-pwned","1")</script><img src=q onerror="alert(1)"> & <b>'
    def row(bench, pid, text):
        return {"benchmark": bench, "id": pid, "sample": 0, "mode": "vtc", "correct": False, "pred": "B", "gold": "C",
                "grade_reason": "mismatch", "finished": False, "stop_reason": "max_rounds", "error": None,
                "latency_s": 0.5, "question": None if bench.startswith("gpqa") else "Q <i>1</i>",
                "rounds": [{"text": text, "generated_tokens": 3, "vision_tokens": 0, "prefill_tokens": 9, "images": 0,
                            "pages": 0, "generate_s": 0.1, "render_s": 0.0, "finish_reason": "length"}]}  # fmt: skip
    write_viewer(tmp_path, [row("math500", "m-1", hostile), row("gpqa_diamond", "7", "PROTECTED-MODEL-TEXT")])
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "PROTECTED-MODEL-TEXT" not in page and "</script><script>document" not in page
    dom, log = dump_dom((tmp_path / "index.html").as_uri() + "#run=0", tmp_path)
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert console_lines(log) == [] and "data-pwned" not in body and 'data-errors="0"' in body
    assert html.escape(hostile, quote=False) in dom and "Q &lt;i&gt;1&lt;/i&gt;" in dom
    dom, _ = dump_dom((tmp_path / "index.html").as_uri() + "#run=1", tmp_path)
    assert "withheld" in dom and 'data-round="1"' in dom
