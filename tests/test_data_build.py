"""End-to-end `build_dataset` / `vtcr build-data` on real traces: sample structure, pages that are
the rendered segments, compression stats, HF loading, determinism, workers, resume after a kill,
and bad input counted with reasons."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_helpers import generic_row, good_traces, openr1_row, write_jsonl, write_openr1_parquet
from vtcr.data import BuildConfig, SourceConfig, build_dataset, load_sft_dataset, split_trace
from vtcr.data.build import ProblemJob, process_problem
from vtcr.prompts import IMAGE_PLACEHOLDER, SYSTEM_PROMPT

SEGMENT_TOKENS = 512
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _bad_rows(traces: list[dict], short: dict) -> list:
    t = traces
    return [
        generic_row(t[0], correct=False),  # filtered
        generic_row(t[1], r1_style=None),  # missing_field
        generic_row(t[2], gt_answer="  "),  # empty_answer
        generic_row(t[3], gt_answer=42),  # non_string_field
        generic_row(t[4], r1_style=t[4]["r1_style"].replace("</think>", "")),  # no_think_close
        "{broken json",  # malformed_row
        generic_row(short),  # shorter_than_one_segment
        generic_row(t[5], problem=t[5]["problem"] + " " + IMAGE_PLACEHOLDER),  # image_placeholder_in_text
        generic_row(t[6], r1_style="<think>\n\n</think>\n\nThe answer is 3."),  # empty_reasoning
        generic_row(t[7], problem=""),  # empty_problem
    ]


EXPECTED_REJECTED = {
    "filtered": 1, "missing_field": 1, "empty_answer": 1, "non_string_field": 1, "no_think_close": 1,
    "malformed_row": 1, "shorter_than_one_segment": 1, "image_placeholder_in_text": 1, "empty_reasoning": 1,
    "empty_problem": 1,
}


@pytest.fixture(scope="module")
def traces(shared_traces):
    return good_traces(shared_traces, 14, min_chars=3000)


@pytest.fixture(scope="module")
def source(tmp_path_factory, shared_traces, traces) -> Path:
    """14 good traces with the 10 bad rows interleaved, as one JSONL (source order fixed)."""
    short = next(t for t in shared_traces if t["r1_style"] and t["correct"] and len(t["r1_style"]) < 1500)
    good = [generic_row(t) for t in traces]
    rows = []
    for i, bad in enumerate(_bad_rows(traces, short)):
        rows += good[i * 14 // 10 : (i + 1) * 14 // 10] + [bad]
    return write_jsonl(tmp_path_factory.mktemp("src") / "traces.jsonl", rows)


def make_config(source: Path, tokenizer: Path, **changes) -> BuildConfig:
    src = SourceConfig(str(source), trace_field="r1_style", answer_field="gt_answer", keep_if=("correct",),
                       drop_if=("likely_truncated",))
    return BuildConfig(source=src, **{"segment_tokens": SEGMENT_TOKENS, "tokenizer": str(tokenizer), **changes})


@pytest.fixture(scope="module")
def built(tmp_path_factory, source, qwen3_tokenizer_dir):
    out = tmp_path_factory.mktemp("build") / "a"
    report = build_dataset(make_config(source, qwen3_tokenizer_dir), out, workers=1, progress=False)
    return out, report


def snapshot(out: Path) -> dict[str, str]:
    """sha256 of every file in a build folder (images included), by relative path."""
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "problems.jsonl").read_text(encoding="utf-8").splitlines()]


def test_samples_are_question_plus_earlier_pages_to_next_segment(built, traces):
    out, report = built
    samples = json.loads((out / "vtcr_sft.json").read_text(encoding="utf-8"))
    problems = [r for r in _records(out) if r["kind"] == "problem"]
    assert len(problems) == len(traces) == report.stats["problems"]
    assert len(samples) == sum(len(p["turns"]) for p in problems) == report.stats["samples"]
    by_id = {t["id"]: t for t in traces}
    pos = 0
    for rec in problems:
        trace = by_id[rec["id"]]
        parts = split_trace(trace["r1_style"])
        n = len(rec["turns"])
        assert n >= 2
        # Lossless: the targets are the original generation, then the gold answer.
        assert "".join(rec["turns"]).startswith(parts.opener + parts.reasoning + "</think>")
        assert rec["turns"][-1].endswith(f"<answer>{trace['gt_answer'].strip()}</answer>")
        assert len(rec["pages"]) == n - 1
        seen: list[str] = []
        for k in range(n):
            sample = samples[pos + k]
            msgs = sample["messages"]
            assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
            assert msgs[0]["content"] == SYSTEM_PROMPT
            assert msgs[1]["content"] == trace["problem"].strip() + IMAGE_PLACEHOLDER * len(seen)
            assert msgs[2]["content"] == rec["turns"][k]
            assert sample["images"] == seen  # pages of segments 0..k-1, in round order
            if k < n - 1:
                seen = seen + [p["file"] for p in rec["pages"][k]]
        pos += n
    for sample in samples:
        for rel in sample["images"]:
            assert not os.path.isabs(rel) and (out / rel).is_file()
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["vtc-r1"]["file_name"] == "vtcr_sft.json" and info["vtc-r1"]["formatting"] == "sharegpt"
    assert info["vtc-r1"]["columns"] == {"messages": "messages", "images": "images"}


def test_pages_are_the_rendered_segments_and_shared(built):
    from vtcr.render import png_bytes, preset, render_text

    out, _ = built
    rec = next(r for r in _records(out) if r["kind"] == "problem" and len(r["turns"]) >= 3)
    for turn, pages in zip(rec["turns"], rec["pages"]):
        rendered = render_text(turn, preset("dense"))
        assert [hashlib.sha256(png_bytes(img)).hexdigest()[:32] + ".png" for img in rendered] == [
            Path(p["file"]).name for p in pages
        ]
        assert [[img.width, img.height] for img in rendered] == [[p["width"], p["height"]] for p in pages]
    # Each rendered page is stored once even though later samples reuse it.
    stats = json.loads((out / "stats.json").read_text())
    assert stats["pages"]["unique_files"] == len(list((out / "images").glob("*.png")))
    assert stats["pages"]["in_samples"] > stats["pages"]["rendered"]


def test_stats_count_every_rejection_and_the_compression_is_recomputable(built, qwen3_tokenizer_dir):
    from PIL import Image

    from vtcr.tokens import count_text_tokens, load_tokenizer, vision_tokens

    out, report = built
    stats = json.loads((out / "stats.json").read_text())
    assert stats == report.stats
    assert stats["rejected"] == EXPECTED_REJECTED
    assert all(stats["rejected_examples"][r][0]["detail"] for r in EXPECTED_REJECTED)
    assert stats["rows"] == {"read": 24, "built": 14, "rejected": 10}
    assert sum(stats["samples_per_segment_index"]) == stats["samples"]
    assert stats["samples_per_segment_index"][0] == stats["samples_per_segment_index"][1] == 14
    # Recompute text tokens replaced and vision tokens spent from the files themselves.
    tokenizer = load_tokenizer(qwen3_tokenizer_dir)
    problems = [r for r in _records(out) if r["kind"] == "problem"]
    text = sum(sum(count_text_tokens(r["turns"][:-1], tokenizer)) for r in problems)
    for family in ("qwen3-vl", "glm-4.1v"):
        vision = sum(
            vision_tokens(Image.open(out / p["file"]).size, family) for r in problems for ps in r["pages"] for p in ps
        )
        c = stats["compression"][family]
        assert (c["text_tokens_replaced"], c["vision_tokens"]) == (text, vision)
        assert c["ratio"] == round(text / vision, 4) and c["ratio"] > 1.5
    for name in ("samples_per_segment_index.png", "compression.png", "lengths.png"):
        assert Image.open(out / "plots" / name).size[0] > 300


def test_hf_copy_loads_with_datasets_and_images_resolve(built, tmp_path):
    import datasets

    out, _ = built
    samples = json.loads((out / "vtcr_sft.json").read_text(encoding="utf-8"))
    raw = datasets.load_dataset("parquet", data_files=str(out / "hf" / "train.parquet"), split="train",
                                cache_dir=str(tmp_path / "cache"))
    assert raw.num_rows == len(samples)
    assert raw["images"] == [s["images"] for s in samples]
    # LLaMA-Factory reads the sharegpt file through the same `datasets` json loader.
    sharegpt = datasets.load_dataset("json", data_files=str(out / "vtcr_sft.json"), split="train",
                                     cache_dir=str(tmp_path / "cache"))
    assert sharegpt.num_rows == len(samples) and sharegpt[5]["messages"] == samples[5]["messages"]
    ds = load_sft_dataset(out, cache_dir=str(tmp_path / "cache2"))
    row = max(ds, key=lambda r: len(r["images"]))
    assert row["messages"][1]["content"][0] == {"type": "text", "text": row["messages"][1]["content"][0]["text"]}
    assert [p["type"] for p in row["messages"][1]["content"]] == ["text"] + ["image"] * len(row["images"])
    from PIL import Image

    rel_paths = raw[raw["id"].index(row["id"])]["images"]
    assert len(rel_paths) > 1
    assert [img.size for img in row["images"]] == [Image.open(out / p).size for p in rel_paths]


def test_same_input_gives_byte_identical_outputs_and_workers_do_not_matter(built, tmp_path, source, qwen3_tokenizer_dir):
    out, _ = built
    reference = snapshot(out)
    again = tmp_path / "again"
    build_dataset(make_config(source, qwen3_tokenizer_dir), again, workers=1, progress=False)
    assert snapshot(again) == reference
    two = tmp_path / "two"
    report = build_dataset(make_config(source, qwen3_tokenizer_dir), two, workers=2, progress=False)
    assert report.workers == 2 and report.samples_this_run == report.stats["samples"]
    assert snapshot(two) == reference


def test_resume_after_a_torn_write_and_rerun_on_a_finished_folder(built, tmp_path, source, qwen3_tokenizer_dir):
    out, _ = built
    reference = snapshot(out)
    part = tmp_path / "part"
    cfg = make_config(source, qwen3_tokenizer_dir)
    build_dataset(cfg, part, workers=1, limit=9, progress=False, plots=False)
    # As if killed while writing record 10 and before the final outputs existed.
    line10 = (out / "problems.jsonl").read_bytes().splitlines(keepends=True)[9]
    with (part / "problems.jsonl").open("ab") as fh:
        fh.write(line10[: len(line10) // 2])
    for name in ("vtcr_sft.json", "stats.json", "hf/train.parquet"):
        (part / name).unlink()
    (part / "images" / ".0123abcd.png.4242.tmp").write_bytes(b"half a png")  # a write cut short
    report = build_dataset(cfg, part, workers=1, progress=False)
    assert report.rows_done_before == 9 and report.rows_this_run == 24 - 9
    assert snapshot(part) == reference
    # A rerun on a finished folder builds nothing and changes nothing.
    report = build_dataset(cfg, part, workers=1, progress=False)
    assert report.rows_this_run == 0 and snapshot(part) == reference


def test_killed_cli_build_resumes_to_identical_output(built, tmp_path, source, qwen3_tokenizer_dir):
    out, _ = built
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "vtcr.cli", "build-data", str(source), "--out", str(killed),
           "--trace-field", "r1_style", "--answer-field", "gt_answer", "--keep-if", "correct",
           "--drop-if", "likely_truncated", "--segment-tokens", str(SEGMENT_TOKENS),
           "--tokenizer", str(qwen3_tokenizer_dir), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = killed / "problems.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if records.exists() and records.read_bytes().count(b"\n") >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    done = records.read_bytes().count(b"\n")
    assert 3 <= done < 24 and not (killed / "vtcr_sft.json").exists()
    from vtcr.cli import main

    assert main(cmd[3:]) == 0
    assert snapshot(killed) == snapshot(out)


def test_different_settings_are_refused_naming_the_setting(built, source, qwen3_tokenizer_dir, tmp_path, capsys):
    out, _ = built
    before = snapshot(out)
    with pytest.raises(ValueError, match="segment_tokens: 512 \\(folder\\) vs 256 \\(now\\)"):
        build_dataset(make_config(source, qwen3_tokenizer_dir, segment_tokens=256), out, progress=False)
    with pytest.raises(ValueError, match=r"render\.[a-z-]+: .* \(folder\) vs"):
        build_dataset(make_config(source, qwen3_tokenizer_dir, preset="vtcr1"), out, progress=False)
    import fcntl

    with (out / ".lock").open("a") as held:  # as if another build were running in this folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match="another build is running"):
            build_dataset(make_config(source, qwen3_tokenizer_dir), out, progress=False)
    assert snapshot(out) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    from vtcr.cli import main

    args = [str(source), "--out", str(tmp_path / "other"), "--tokenizer", str(qwen3_tokenizer_dir)]
    assert main(["build-data", *args, "--trace-field", "r1_style", "--answer-field", "gt_answer"]) == 2
    assert "not a vtcr build folder" in capsys.readouterr().err
    assert main(["build-data", *args, "--trace-field", "thoughts", "--answer-field", "gt_answer"]) == 2
    assert "unknown field 'thoughts' (--trace-field)" in capsys.readouterr().err


def test_openr1_folder_with_corrupt_file_builds_the_rest(tmp_path, traces, qwen3_tokenizer_dir, capsys):
    rows = [
        openr1_row(traces[8], "good-0"),
        openr1_row(traces[9], "no-verified", complete=(True, True), math_verify=(False, False)),
        openr1_row(traces[10], "good-1", complete=(True, True), math_verify=(False, False), llama=(True, False),
                   generations=[traces[10]["r1_style"], "x"]),
    ]
    write_openr1_parquet(tmp_path / "src" / "train-00000-of-00002.parquet", rows)
    (tmp_path / "src" / "train-00001-of-00002.parquet").write_bytes(b"PAR1\x00\x01 damaged download")
    from vtcr.cli import main

    code = main(["build-data", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--segment-tokens", "512",
                 "--tokenizer", str(qwen3_tokenizer_dir), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "no_verified_generation" in printed and "train-00001-of-00002.parquet" in printed
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["rejected"] == {"corrupt_file": 1, "no_verified_generation": 1}
    assert stats["file_errors"][0]["file"] == "train-00001-of-00002.parquet"
    assert stats["problems"] == 2 and stats["verified_by"] == {"correctness_llama": 1, "correctness_math_verify": 1}
    samples = json.loads((tmp_path / "out" / "vtcr_sft.json").read_text())
    assert samples[0]["messages"][1]["content"] == traces[8]["problem"].strip()


def test_a_failing_problem_becomes_a_counted_rejection(tmp_path, traces):
    from vtcr.data.sources import SourceProblem

    problem = SourceProblem(index=7, id="p7", question="Q", generation=traces[0]["r1_style"], answer="1")
    bad_render = ProblemJob(str(tmp_path), "builtin:qwen3", 64, 1, json.dumps({"font-size": -3}))
    record = process_problem(bad_render, problem)
    assert (record["kind"], record["index"], record["reason"]) == ("rejected", 7, "build_error")
    assert "font-size" in record["detail"]


def test_the_progress_bar_shows_samples_and_samples_per_second(tmp_path, source, qwen3_tokenizer_dir, capsys):
    report = build_dataset(make_config(source, qwen3_tokenizer_dir), tmp_path / "b", limit=3, progress=True, plots=False)
    err = capsys.readouterr().err
    final = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("build-data:")][-1]
    assert "3/3" in final and f"samples={report.samples_this_run}" in final, final
    assert re.search(r"samples/s=\d+\.\d", final), final
