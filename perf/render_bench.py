"""Render benchmark on the shared traces: speed of each backend and compression of each preset.

    python -m perf.render_bench [--data ../shared/data] [--speed-texts 40] [--json out.json]

Speed: every backend renders the same finished traces, interleaved text by text (so machine noise
hits all backends alike), each timed from text to in-memory images: wall time, and CPU time of this
process plus its children (pdftoppm runs as a child), which other load on a shared machine disturbs
less. As `timeit` does, the garbage collector is paused during each timed call (for every backend
alike), so one backend's garbage is not collected on another's clock. `reference` is
the paper's pipeline: reportlab -> PDF -> poppler pdftoppm (skipped with a
message when poppler is absent).
Compression: real Qwen3 text tokens of each finished trace's reasoning (the text inside the thought
tags) / vision tokens of its rendered pages, per preset and model family, pooled over all traces.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import time
from pathlib import Path

from tqdm import tqdm

from vtcr._io import find_shared_data
from vtcr.cost import resolve_tokenizer
from vtcr.render import PRESETS, Renderer
from vtcr.render.pdf import have_pdftoppm
from vtcr.tokens import FAMILIES, count_text_tokens, vision_tokens


def load_finished_reasoning(data_dir: Path) -> list[str]:
    path = data_dir / "traces" / "sky_t1_traces.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    return [r["think"] or r["trace"] for r in rows if not r["likely_truncated"]]


def measure_speed(texts: list[str], preset_name: str, backends: list[str]) -> dict[str, dict[str, float]]:
    renderers = {b: Renderer(PRESETS[preset_name], b).warm_up() for b in backends}
    seconds = dict.fromkeys(backends, 0.0)
    cpu = dict.fromkeys(backends, 0.0)
    pages = dict.fromkeys(backends, 0)
    for text in tqdm(texts, desc=f"speed {preset_name}", leave=False):
        for backend, renderer in renderers.items():
            gc.disable()
            try:
                start, start_cpu = time.perf_counter(), _cpu_seconds()
                out = renderer.render(text)
                seconds[backend] += time.perf_counter() - start
                cpu[backend] += _cpu_seconds() - start_cpu
            finally:
                gc.enable()
            pages[backend] += len(out)
    chars = sum(map(len, texts))
    return {b: {"chars_per_s": chars / seconds[b], "ms_per_page": 1000 * seconds[b] / max(pages[b], 1),
                "cpu_chars_per_s": chars / cpu[b], "cpu_ms_per_page": 1000 * cpu[b] / max(pages[b], 1),
                "pages": pages[b], "seconds": seconds[b]} for b in backends}


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure_compression(texts: list[str], tokenizer) -> dict[str, dict[str, float]]:
    text_tokens = sum(count_text_tokens(texts, tokenizer))
    out = {}
    for name, config in PRESETS.items():
        renderer = Renderer(config)
        totals = dict.fromkeys(FAMILIES, 0)
        n_pages = 0
        for text in tqdm(texts, desc=f"compression {name}", leave=False):
            for page in renderer.iter_pages(text):
                n_pages += 1
                for family in FAMILIES:
                    totals[family] += vision_tokens(page.size, family)
        out[name] = {"pages": n_pages, "text_tokens": text_tokens,
                     **{family: text_tokens / totals[family] for family in FAMILIES}}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="shared data folder (default: $VTCR_DATA or ../shared/data)")
    parser.add_argument("--speed-texts", type=int, default=40, help="finished traces timed per preset")
    parser.add_argument("--tokenizer", default=None, help="default: the bundled Qwen3 tokenizer")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    args.data = args.data or find_shared_data()

    texts = load_finished_reasoning(args.data)
    backends = ["fast", "reportlab"] + (["reference"] if have_pdftoppm() else [])
    if "reference" not in backends:
        print("pdftoppm not found: the reference pipeline is skipped (apt-get install poppler-utils)")
    results: dict = {"speed": {}, "compression": {}}
    speed_texts = texts[: args.speed_texts]
    print(f"speed: {len(speed_texts)} finished traces, {sum(map(len, speed_texts))} characters, text -> images")
    for name in PRESETS:
        speed = results["speed"][name] = measure_speed(speed_texts, name, backends)
        base = speed.get("reference", speed["reportlab"])
        print(f"\n  preset {name}")
        print(f"  {'backend':<11}{'kchar/s':>10}{'ms/page':>10}{'x ref':>8}   {'CPU kchar/s':>12}"
              f"{'CPU ms/page':>12}{'x ref':>8}{'pages':>7}")
        for backend, s in speed.items():
            print(f"  {backend:<11}{s['chars_per_s'] / 1000:>10.1f}{s['ms_per_page']:>10.2f}"
                  f"{s['chars_per_s'] / base['chars_per_s']:>7.1f}x   {s['cpu_chars_per_s'] / 1000:>12.1f}"
                  f"{s['cpu_ms_per_page']:>12.2f}{s['cpu_chars_per_s'] / base['cpu_chars_per_s']:>7.1f}x{s['pages']:>7}")

    results["compression"] = measure_compression(texts, resolve_tokenizer(args.tokenizer))
    print(f"\ncompression on {len(texts)} finished traces' reasoning "
          f"({results['compression']['dense']['text_tokens']} Qwen3 text tokens): text tokens / vision tokens")
    print(f"  {'preset':<8}{'pages':>7}" + "".join(f"{f:>12}" for f in FAMILIES))
    for name, c in results["compression"].items():
        print(f"  {name:<8}{c['pages']:>7}" + "".join(f"{c[f]:>11.2f}x" for f in FAMILIES))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
