"""`vtcr build-data` benchmark on the shared traces: throughput per worker count, memory over a 10x
longer input, and the compression of the built set per preset and vision family.

    python -m perf.build_data_bench [--data ../shared/data] [--segment-tokens 512] [--json out.json]

Input ("1x"): the finished, correct, R1-shaped shared traces (field `r1_style`, gold `gt_answer`).
"10x": every row ten times; copies get their own id and a copy tag at the start of the reasoning, so
their first pages are new images (a 10x build renders ten times the pages, and stores new ones).
Each build runs in a fresh child process; its peak RSS is the child's (workers=1: one process).
Samples/s = samples built / build time (source read, segmentation, rendering, record writes): the
worker start-up (spawn, imports, tokenizer) and the final outputs are timed apart, and the
end-to-end wall time of the child is reported next to it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vtcr._io import find_shared_data

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def write_inputs(data_dir: Path, work: Path, repeat: int) -> tuple[Path, Path, int]:
    with gzip.open(data_dir / "traces" / "sky_t1_traces.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    keep = ("id", "problem", "gt_answer", "r1_style")
    good = [{k: r[k] for k in keep} for r in rows if r["r1_style"] and r["correct"] and not r["likely_truncated"]]
    one = work / "traces_1x.jsonl"
    one.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in good), encoding="utf-8")
    many = work / f"traces_{repeat}x.jsonl"
    with many.open("w", encoding="utf-8") as fh:
        for copy in range(repeat):
            for r in good:
                if copy:
                    tag = f"<think>\n(copy {copy}) "
                    r = {**r, "id": f"{r['id']}#copy{copy}", "r1_style": r["r1_style"].replace("<think>\n", tag, 1)}
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return one, many, len(good)


def _child(source: str, out: str, segment_tokens: int, tokenizer: str, preset: str, workers: int) -> None:
    """Run one build in this (fresh) process and print its report as JSON."""
    from vtcr.data import BuildConfig, SourceConfig, build_dataset

    config = BuildConfig(
        SourceConfig(source, trace_field="r1_style", answer_field="gt_answer"),
        segment_tokens=segment_tokens,
        tokenizer=tokenizer,
        preset=preset,
    )
    r = build_dataset(config, out, workers=workers, progress=False)
    print(json.dumps({
        "samples": r.samples_this_run, "problems": r.stats["problems"], "rows": r.rows_this_run,
        "build_seconds": r.build_seconds, "finalize_seconds": r.finalize_seconds, "startup_seconds": r.startup_seconds,
        "samples_per_second": r.samples_per_second, "pages": r.stats["pages"]["rendered"],
        "compression": {k: v for k, v in r.stats["compression"].items() if isinstance(v, dict)},
    }))


def run_build(source: Path, out: Path, args, preset: str, workers: int) -> dict:
    """One build in a child process: its report plus wall time and the child's peak RSS (MiB)."""
    shutil.rmtree(out, ignore_errors=True)
    code = (
        "import sys; from perf.build_data_bench import _child; "
        f"_child({str(source)!r}, {str(out)!r}, {args.segment_tokens}, {args.tokenizer!r}, {preset!r}, {workers})"
    )
    env = {**os.environ, "PYTHONPATH": f"{PROJECT_ROOT}:{PROJECT_ROOT / 'src'}", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        log.seek(0)
        text = log.read()
    if status != 0:
        raise RuntimeError(f"build failed ({status}):\n{text[-3000:]}")
    report = json.loads(text.strip().splitlines()[-1])
    # CPU time of the child and its reaped workers: if CPU per sample stays flat as workers are
    # added, the work parallelises, and wall-clock gains are bounded only by free cores.
    cpu = usage.ru_utime + usage.ru_stime
    report.update(wall_seconds=wall, cpu_seconds=cpu, peak_rss_mib=usage.ru_maxrss / 1024, workers=workers,
                  preset=preset, cpu_ms_per_sample=1000 * cpu / max(report["samples"], 1))
    return report


def _burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def machine_parallel_speedup(n: int = 10_000_000) -> float:
    """How much faster two busy processes finish two units of pure-Python work than one does one
    unit twice: about 2.0 on two free cores, about 1.0 when other jobs already use a core. Build
    speed-ups are only meaningful next to this number on a shared machine."""
    import multiprocessing

    start = time.perf_counter()
    _burn(n)
    one = time.perf_counter() - start
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_burn, [10, 10])
        start = time.perf_counter()
        pool.map(_burn, [n, n])
        two = time.perf_counter() - start
    return 2 * one / two


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="shared data folder (default: $VTCR_DATA or ../shared/data)")
    parser.add_argument("--segment-tokens", type=int, default=512)
    parser.add_argument("--tokenizer", default="builtin:qwen3")
    parser.add_argument("--repeat", type=int, default=10, help="size of the long input, in copies of the traces")
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs and builds here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="write all results here")
    parser.add_argument("--quick", action="store_true", help="only the 1x builds (no memory comparison)")
    parser.add_argument("--speed-runs", type=int, default=3, help="alternating 1x runs per worker count (best kept)")
    args = parser.parse_args()
    args.data = args.data or find_shared_data()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="vtcr_build_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    one, many, n = write_inputs(args.data, work, args.repeat)
    print(f"input: {n} traces (1x), {n * args.repeat} rows ({args.repeat}x); segment tokens {args.segment_tokens}")
    results: dict = {"segment_tokens": args.segment_tokens, "traces": n, "repeat": args.repeat, "runs": []}

    def record(name: str, report: dict) -> dict:
        report["name"] = name
        results["runs"].append(report)
        print(f"{name:<18} {report['samples']:>6} samples {report['pages']:>6} pages  build {report['build_seconds']:7.1f}s "
              f"({report['samples_per_second']:6.2f} samples/s)  start-up {report['startup_seconds']:4.1f}s  "
              f"wall {report['wall_seconds']:6.1f}s  cpu {report['cpu_seconds']:6.1f}s  "
              f"peak RSS {report['peak_rss_mib']:7.1f} MiB", flush=True)
        return report

    # Best of --speed-runs alternating runs: the machine may be shared, and the fastest run of each
    # worker count is the one least disturbed by others.
    w1 = w2 = None
    capacity = []
    for i in range(args.speed_runs):
        capacity.append(machine_parallel_speedup())
        print(f"machine parallel capacity before run #{i + 1}: {capacity[-1]:.2f}x (2.0 = two free cores)", flush=True)
        r1 = record(f"dense 1x w1 #{i + 1}", run_build(one, work / "dense_w1", args, "dense", 1))
        r2 = record(f"dense 1x w2 #{i + 1}", run_build(one, work / "dense_w2", args, "dense", 2))
        w1 = r1 if w1 is None or r1["samples_per_second"] > w1["samples_per_second"] else w1
        w2 = r2 if w2 is None or r2["samples_per_second"] > w2["samples_per_second"] else w2
    vt = record("vtcr1 1x w2", run_build(one, work / "vtcr1_w2", args, "vtcr1", 2))
    if args.quick:
        big = big2 = None
    else:
        big = record(f"dense {args.repeat}x w1", run_build(many, work / "dense_many_w1", args, "dense", 1))
        big2 = record(f"dense {args.repeat}x w2", run_build(many, work / "dense_many_w2", args, "dense", 2))
    results["best_1x"] = {"w1": w1["name"], "w2": w2["name"]}
    results["speedup_2_workers_1x"] = w2["samples_per_second"] / w1["samples_per_second"]
    results["machine_parallel_capacity"] = capacity
    print(f"\nthroughput 1x (best of {args.speed_runs}): {w1['samples_per_second']:.2f} samples/s (1 worker), "
          f"{w2['samples_per_second']:.2f} (2 workers): {results['speedup_2_workers_1x']:.2f}x; CPU ms/sample "
          f"{w1['cpu_ms_per_sample']:.1f} vs {w2['cpu_ms_per_sample']:.1f} (start-up included); machine capacity "
          f"{min(capacity):.2f}-{max(capacity):.2f}x")
    if big and big2:
        results["speedup_2_workers_long"] = big2["samples_per_second"] / big["samples_per_second"]
        results["rss_ratio_long_vs_1x"] = big["peak_rss_mib"] / w1["peak_rss_mib"]
        print(f"throughput {args.repeat}x: {big['samples_per_second']:.2f} samples/s (1 worker), "
              f"{big2['samples_per_second']:.2f} (2 workers): {results['speedup_2_workers_long']:.2f}x")
        print(f"peak RSS (1 worker): {w1['peak_rss_mib']:.0f} MiB (1x) vs {big['peak_rss_mib']:.0f} MiB "
              f"({args.repeat}x input)")
    print("compression (text tokens of rendered segments / vision tokens of their pages):")
    for report in (w1, vt):
        for family, c in report["compression"].items():
            print(f"  {report['preset']:<6} {family:<9} {c['text_tokens_replaced']:>8} -> {c['vision_tokens']:>7}  "
                  f"{c['ratio']:.2f}x  (per sample {c['per_sample']['ratio']:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
