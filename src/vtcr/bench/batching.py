"""Batched decoding: tokens per second with `batch_size` rows decoded together vs one at a time.

For each model (random weights of a real architecture at a given size, or a checkpoint) and each
width, the same `requests` requests -- one question, optionally with pages of real reasoning text
as optical memory, one seed each -- are submitted at once from as many threads to a
`TransformersBackend(batch_size=width)` (prefix cache off, so every width prefills the same).
Reported per width: wall time, generated tokens, prefill seconds, tokens/s end to end and in decode
(wall minus the prefills), and whether every request's tokens equal those of width 1 (same seeds:
they should, see `vtcr.engine.transformers_backend`). The figure is the decode tokens/s of each
width over width 1, measured in one run.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

QUESTION = "Find the sum of all positive divisors of 36."


@dataclass(frozen=True)
class BatchingConfig:
    """arch/sizes: random-weight checkpoints built with `vtcr.models.init_model` (tokenizer:
    `builtin:qwen3` or a folder), or `models`: checkpoint folders instead. widths: batch sizes
    compared (the first is the baseline, normally 1). requests: submitted at once (default: the
    largest width). new_tokens: tokens each request generates (sampled at temperature 1, so a
    random model practically never stops early). pages: pages of real reasoning text (shared
    traces) in every prompt, as a vtc round carries. threads: torch threads (default: the cores
    this process may use)."""

    arch: str = "qwen3-vl"
    sizes: tuple[str, ...] = ("tiny", "small")
    models: tuple[str, ...] = ()
    tokenizer: str = "builtin:qwen3"
    widths: tuple[int, ...] = (1, 8)
    requests: int | None = None
    new_tokens: int = 64
    pages: int = 1
    render_preset: str = "dense"
    device: str | None = None
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("sizes", "models", "widths"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f"widths must be positive ints, got {self.widths!r}")
        for name in ("new_tokens", "requests", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.pages < 0:
            raise ValueError(f"pages must be >= 0, got {self.pages!r}")
        if not self.models and not self.sizes:
            raise ValueError("give sizes (random-weight models) or models (checkpoint folders)")


def _pages(count: int, preset_name: str) -> list[Any]:
    if not count:
        return []
    import gzip
    import json

    from vtcr._io import find_shared_data
    from vtcr.render import Renderer, preset

    with gzip.open(find_shared_data() / "traces" / "sky_t1_traces.jsonl.gz", "rt", encoding="utf-8") as fh:
        text = ""
        for line in fh:  # real reasoning, traces concatenated until about `count` pages' worth
            text += (json.loads(line).get("think") or "") + "\n"
            if len(text) > 4000 * count:
                break
    pages = Renderer(preset(preset_name)).warm_up().render(text)
    if len(pages) < count:
        raise ValueError(f"the trace renders to {len(pages)} pages, fewer than pages={count}")
    return pages[:count]


def _run_width(model: Any, processor: Any, width: int, requests: list[Any]) -> dict[str, Any]:
    from vtcr.engine import TransformersBackend

    backend = TransformersBackend(model, processor, batch_size=width, prefix_cache=False)
    results: list[Any] = [None] * len(requests)
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            results[i] = backend.generate(requests[i])
        except BaseException as exc:  # reported below, never swallowed
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    tokens = sum(r.generated_tokens for r in results)
    prefill = sum(r.extra["prefill_s"] for r in results)
    decode = max(wall - prefill, 1e-9)
    return {
        "width": width, "prompt_tokens": results[0].prompt_tokens, "wall_s": round(wall, 4), "prefill_s": round(prefill, 4), "generated_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2), "decode_tokens_per_s": round(tokens / decode, 2),
        "widest_step": max(r.extra["batch_rows"] for r in results), "token_ids": [r.extra["token_ids"] for r in results],
    }  # fmt: skip


def run_batching(config: BatchingConfig, *, progress: bool = True) -> dict[str, Any]:
    """Measure every model at every width (see the module docstring); returns a JSON-able dict."""
    import torch
    from tqdm.auto import tqdm

    from vtcr.engine import GenerationRequest, round_messages
    from vtcr.engine.modes import EngineConfig
    from vtcr.models import init_model, load_model

    from vtcr._cpu import usable_cores

    torch.set_num_threads(config.threads or usable_cores())
    n = config.requests or max(config.widths)
    pages = _pages(config.pages, config.render_preset)
    messages = round_messages(EngineConfig(), QUESTION, pages)
    requests = [GenerationRequest(messages=messages, max_new_tokens=config.new_tokens, temperature=1.0,
                                  seed=config.seed + i) for i in range(n)]  # fmt: skip
    out: dict[str, Any] = {"config": asdict(config), "torch_threads": torch.get_num_threads(), "models": []}
    with tempfile.TemporaryDirectory(prefix="vtcr-batching-") as tmp:
        sources = [(m, Path(m)) for m in config.models] or [
            (f"{config.arch}/{size}", None) for size in config.sizes
        ]
        bar = tqdm(total=len(sources) * len(config.widths), desc="bench batching", unit="run", disable=not progress)
        for label, path in sources:
            if path is None:
                size = label.split("/", 1)[1]
                path = init_model(config.arch, size, config.tokenizer, Path(tmp) / size, seed=config.seed)
            model, processor, _ = load_model(path, device=config.device)
            runs = []
            for width in config.widths:
                runs.append(_run_width(model, processor, width, requests))
                bar.update(1)
            base = runs[0]
            for r in runs:
                r["decode_speedup"] = round(r["decode_tokens_per_s"] / base["decode_tokens_per_s"], 3)
                r["same_tokens_as_first"] = r["token_ids"] == base["token_ids"]
            params = sum(p.numel() for p in model.parameters())
            for r in runs:
                del r["token_ids"]
            out["models"].append({"model": label, "parameters": params, "prompt_tokens": runs[0].pop("prompt_tokens"),
                                  "runs": runs})  # fmt: skip
            for r in runs:
                r.pop("prompt_tokens", None)
            del model
        bar.close()
    return out


def format_batching(result: dict[str, Any]) -> str:
    """A plain-text table of `run_batching`'s result."""
    lines = [f"{'model':<18} {'width':>5} {'tokens':>7} {'wall s':>8} {'decode tok/s':>12} {'x width 1':>9}  same tokens"]
    for m in result["models"]:
        for r in m["runs"]:
            lines.append(f"{m['model']:<18} {r['width']:>5} {r['generated_tokens']:>7} {r['wall_s']:>8.2f} "
                         f"{r['decode_tokens_per_s']:>12.1f} {r['decode_speedup']:>9.2f}  {r['same_tokens_as_first']}")  # fmt: skip
    return "\n".join(lines)
