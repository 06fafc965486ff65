"""`vtcr bench efficiency`: the cost model's numbers from the real config.json files, the replay of a
real (shortened) shared trace through a tiny Qwen3-VL in every mode and batch size via the CLI's
JSON, and the bad-input errors (no usable trace, a model that does not fit, CUDA without a GPU).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from vtcr.bench.cost_model import (
    H100,
    ModelShape,
    Round,
    _decode_seconds,
    attention_pairs,
    decode_step_seconds,
    schedule_cost,
)
from vtcr.bench.efficiency import EfficiencyConfig, real_shapes, run_efficiency


def _models(shared_data: Path) -> Path:
    return shared_data.parent / "models"


def test_kv_bytes_per_token_from_the_real_configs(shared_data):
    q8 = ModelShape.from_file(_models(shared_data) / "Qwen__Qwen3-VL-8B-Instruct")
    q2 = ModelShape.from_file(_models(shared_data) / "Qwen__Qwen3-VL-2B-Instruct" / "config.json")
    assert q8.kv_bytes_per_token(2) == 144 * 1024  # 2 x 36 layers x 8 KV heads x 128 x 2 bytes
    assert q2.kv_bytes_per_token(2) == 112 * 1024  # 2 x 28 x 8 x 128 x 2
    assert (q8.layers, q8.kv_heads, q8.head_dim, q2.layers) == (36, 8, 128, 28)
    # 8B: ~7.6B text weights (decoder + untied LM head); 2B ties its embedding
    assert 7.0e9 < q8.text_params < 8.2e9 and 1.4e9 < q2.text_params < 2.0e9
    glm = real_shapes("glm-4.1v")["8b"]  # no config.json in the shared folder: the family table's
    assert glm.kv_bytes_per_token(2) == 40 * 1024 and "family table" in glm.source
    assert real_shapes("qwen3-vl")["8b"].source.endswith("Qwen__Qwen3-VL-8B-Instruct/config.json")


def test_cost_model_sums_and_physics(shared_data):
    q8 = ModelShape.from_file(_models(shared_data) / "Qwen__Qwen3-VL-8B-Instruct")
    assert attention_pairs(0, 4) == 10 and attention_pairs(3, 2) == 2 * 3 + 3
    # the closed-form decode time equals the step-by-step sum, at a batch where the bound switches
    for batch in (1, 64):
        exact = sum(decode_step_seconds(q8, c, batch, 2, H100) for c in range(1000, 1300))
        assert _decode_seconds(q8, 1000, 300, batch, 2, H100) == pytest.approx(exact, rel=1e-9)
    # at batch 1 an 8K context adds ~7% to a step (weights dominate); at batch 64 it dominates
    short, long_ = decode_step_seconds(q8, 100, 1, 2, H100), decode_step_seconds(q8, 8192, 1, 2, H100)
    assert 1.03 < long_ / short < 1.12
    assert decode_step_seconds(q8, 8192, 64, 2, H100) / decode_step_seconds(q8, 100, 64, 2, H100) > 4
    # the same decoded tokens at a 3.4x shorter context cost less, and more so at a larger batch
    std = [Round(cached=0, prefill=100, image_patches=(), decode_steps=9000)]
    vtc = [Round(0, 100, (), 3000), Round(80, 2000, (7904,), 3000), Round(80, 2000, (7904,), 3000)]
    gains = [schedule_cost(q8, std, b, 2, H100)["total_s"] / schedule_cost(q8, vtc, b, 2, H100)["total_s"]
             for b in (1, 32)]
    assert 0.9 < gains[0] < 1.1 < gains[1]
    assert schedule_cost(q8, std, 1, 2)["peak_kv_bytes"] == 144 * 1024 * 9100


def _short_trace_file(tmp_path: Path, finished_traces) -> Path:
    """The first finished shared trace, its reasoning cut to ~600 characters (real text, short enough to
    replay in seconds)."""
    row = dict(finished_traces[0])
    think = row["r1_style"].split("</think>", 1)[0]
    row["r1_style"] = think[:600] + "\n</think>\n\nSo the answer is above."
    path = tmp_path / "short.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    return path


def test_replay_every_mode_through_the_cli(tmp_path, finished_traces, monkeypatch):
    from vtcr.cli import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    traces = _short_trace_file(tmp_path, finished_traces)
    out = tmp_path / "eff"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["bench", "efficiency", "--arch", "qwen3-vl", "--size", "tiny", "--traces", str(traces),
                   "--segment-tokens", "64", "--batch-sizes", "1,2", "--decode-stride", "32", "--out", str(out),
                   "--no-plot", "--json"])  # fmt: skip
    assert rc == 0
    report = json.loads(buf.getvalue())
    assert json.loads((out / "summary.json").read_text()) == report
    (trace,) = report["traces"]
    modes = trace["modes"]
    assert set(modes) == {"standard", "vtc", "vtc_no_reuse", "text"} and trace["segments"] >= 3
    kv_token = report["model"]["kv_bytes_per_token"]
    assert kv_token == 2 * 2 * 2 * 32 * 4  # tiny: 2 layers x 2 KV heads x head_dim 32, float32
    for name, m in modes.items():
        assert m["decode_tokens"] == trace["tokens"], name  # every mode decodes the same tokens
        assert m["peak_kv_bytes"] == kv_token * m["peak_context"], name  # the cache tensors' own bytes
        assert m["total_s"] >= m["prefill_s"] + m["decode_s"] > 0
    std, vtc, ref = modes["standard"], modes["vtc"], modes["vtc_no_reuse"]
    assert std["rounds"] == 1 and vtc["rounds"] == ref["rounds"] == trace["segments"]
    assert vtc["pages"] == ref["pages"] == trace["segments"] - 1 and vtc["render_s"] > 0
    assert std["peak_context"] == std["prefill_tokens"] + trace["tokens"] - 1
    assert vtc["prefill_tokens"] < ref["prefill_tokens"]  # prefix reuse prefills only the new pages
    assert ref["prefill_tokens"] - vtc["prefill_tokens"] >= vtc["vision_tokens"] // 2
    batch2 = report["by_batch"]["2"][0]["modes"]
    for name in modes:
        assert batch2[name]["peak_kv_bytes"] == 2 * modes[name]["peak_kv_bytes"]
        assert batch2[name]["prefill_tokens"] == modes[name]["prefill_tokens"]
    summary = report["summary"]["batch_sizes"]
    assert set(summary) == {"1", "2"} and summary["1"]["vtc"]["decode_tokens_per_s"] > 0
    assert report["summary"]["prefix_reuse"]["1"]["prefill_tokens_ratio"] == pytest.approx(
        ref["prefill_tokens"] / vtc["prefill_tokens"])
    cm = report["cost_model"]
    assert cm["replayed"]["1"]["standard"]["decode_steps"] == trace["tokens"] - 1
    assert set(cm["real"]) == {"2b", "8b"} and cm["real"]["8b"]["kv_bytes_per_token_bf16"] == 144 * 1024


def test_no_usable_trace_names_every_row(tmp_path):
    rows = [
        {"id": "a", "problem": "Q1", "r1_style": "no think tags here", "gt_answer": "1", "likely_truncated": False},
        {"id": "b", "problem": "Q2", "r1_style": "<think>x</think> y", "gt_answer": "2", "likely_truncated": True},
        {"id": "c", "problem": "", "r1_style": "<think>x</think> y", "gt_answer": "3", "likely_truncated": False},
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(ValueError) as err:
        run_efficiency(EfficiencyConfig(size="tiny", traces=str(path)), None, progress=False)
    text = str(err.value)
    assert "no usable trace" in text and str(path) in text
    assert "row 0 (a): no_think_close" in text and "row 1 (b): filtered" in text and "row 2 (c): empty_problem" in text


def test_a_model_that_does_not_fit_is_refused_before_allocating(finished_traces, tmp_path):
    import resource

    traces = _short_trace_file(tmp_path, finished_traces)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MemoryError) as err:  # 8B in float32 at batch 4096: far beyond this machine
        run_efficiency(EfficiencyConfig(size="8b", dtype="float32", traces=str(traces), batch_sizes=(4096,)),
                       None, progress=False)  # fmt: skip
    text = str(err.value)
    assert "needs about" in text and "GiB" in text and "weights" in text and "KV cache" in text
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 2 * 1024 * 1024  # KiB: no 30 GB allocated


def test_cuda_without_a_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible"):
        run_efficiency(EfficiencyConfig(size="tiny", device="cuda"), None, progress=False)
