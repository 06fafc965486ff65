"""`vtcr bench serve`: throughput, latency and cancellation of `vtcr serve` under concurrent clients.

One backend is loaded in this process and served twice over real HTTP on 127.0.0.1, side by side
in one run (the two servers run at once and are measured in turn, A B B A per client count, so that
a change in machine load hits both): `batched` (up to the backend's `concurrency` generate calls at once, what `vtcr serve`
does) and `one-at-a-time` (max_concurrency=1). For each number of concurrent clients (default 1, 8
and 32) every client sends its requests back to back (each a small real optical-memory page plus a
question, greedy, `max_tokens` tokens); reported: requests/s, output tokens/s and p50 / p99 latency,
and the batched / one-at-a-time ratio of requests/s. Then the time from a streaming client's
disconnect to its generation stopping (the server's `/stats` shows it no longer in flight), and how
many tokens it generated in all.

Without --model, a tiny Qwen3-VL of the real architecture (random weights) is built under OUT.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MODES = ("batched", "one-at-a-time")


@dataclass(frozen=True)
class ServeBenchConfig:
    model: str | None = None  # checkpoint folder; None: a tiny random Qwen3-VL built under the output folder
    clients: tuple[int, ...] = (1, 8, 32)
    requests: int = 32  # per client count and mode (at least one per client)
    max_tokens: int = 16
    disconnects: int = 3  # streaming clients that leave after their first piece
    device: str | None = None
    dtype: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.clients or min(self.clients) < 1:
            raise ValueError(f"clients must be positive numbers, got {self.clients}")
        if self.requests < 1 or self.max_tokens < 1 or self.disconnects < 0:
            raise ValueError("requests and max_tokens must be at least 1, disconnects at least 0")


@dataclass
class LevelResult:
    mode: str
    clients: int
    requests: int
    seconds: float
    requests_per_s: float
    tokens_per_s: float
    p50_s: float
    p99_s: float
    latencies_s: list[float] = field(repr=False, default_factory=list)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def _page_urls(n: int, seed: int) -> list[str]:
    """n small real page images (crops of a page of vtcr's built-in sample reasoning text) as data URLs."""
    from vtcr import sample
    from vtcr.render import Renderer, png_bytes, preset

    page = next(iter(Renderer(preset("dense")).iter_pages(sample.REASONING * 4)))
    urls = []
    for i in range(n):
        top = (37 * (i + seed)) % max(1, page.height - 96)
        urls.append("data:image/png;base64," + base64.b64encode(png_bytes(page.crop((0, top, 192, top + 96)))).decode())
    return urls


def _post(port: int, body: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"vtcr serve answered HTTP {response.status}: {data.get('error', {}).get('message')}")
        return data
    finally:
        conn.close()


def _body(name: str, url: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Continue the reasoning."}]
    return {"model": name, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, **extra}  # fmt: skip


def measure_level(port: int, name: str, mode: str, clients: int, requests: int, urls: list[str],
                  max_tokens: int) -> LevelResult:  # fmt: skip
    """`clients` threads sending `requests` requests in all, each as soon as its previous one ends."""
    per_client = [requests // clients + (1 if c < requests % clients else 0) for c in range(clients)]
    per_client = [max(1, k) for k in per_client]
    latencies: list[float] = []
    tokens: list[int] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for k in range(per_client[c]):
            t0 = time.perf_counter()
            data = _post(port, _body(name, urls[(c + k) % len(urls)], max_tokens))
            with lock:
                latencies.append(time.perf_counter() - t0)
                tokens.append(data["usage"]["completion_tokens"])

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    seconds = time.perf_counter() - start
    return LevelResult(mode, clients, len(latencies), seconds, len(latencies) / seconds, sum(tokens) / seconds,
                       _percentile(latencies, 50), _percentile(latencies, 99), latencies)  # fmt: skip


def _pooled(runs: list[LevelResult]) -> LevelResult:
    """One LevelResult from several runs of one mode and client count (all their requests together)."""
    latencies = [x for r in runs for x in r.latencies_s]
    seconds = sum(r.seconds for r in runs)
    tokens = sum(r.tokens_per_s * r.seconds for r in runs)
    first = runs[0]
    return LevelResult(first.mode, first.clients, len(latencies), seconds, len(latencies) / seconds, tokens / seconds,
                       _percentile(latencies, 50), _percentile(latencies, 99), latencies)  # fmt: skip


def measure_disconnect(port: int, name: str, app: Any, url: str, max_tokens: int = 4000) -> dict[str, float]:
    """Seconds from a streaming client's disconnect to its generation leaving the server."""
    before = app.stats()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(_body(name, url, max_tokens, stream=True)),
                 headers={"Content-Type": "application/json"})  # fmt: skip
    response = conn.getresponse()
    while not response.fp.readline().startswith(b"data: {"):  # chunk sizes and blank lines come first
        pass
    response.fp.readline()
    t0 = time.perf_counter()
    conn.sock.shutdown(2)
    conn.close()
    while app.stats()["in_flight"] and time.perf_counter() - t0 < 60:
        time.sleep(0.001)
    stopped = time.perf_counter() - t0
    after = app.stats()
    return {"seconds_to_stop": stopped, "tokens": after["cancelled_tokens"] - before["cancelled_tokens"],
            "cancelled": after["cancelled"] - before["cancelled"]}  # fmt: skip


def run_serve_bench(config: ServeBenchConfig, out_dir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Measure both modes at every client count; writes OUT/serve_bench.json and returns its content."""
    from tqdm import tqdm

    from vtcr.engine.server import ChatApp, ServerConfig, make_server, run_server
    from vtcr.engine.transformers_backend import TransformersBackend

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = config.model
    if model is None:
        from vtcr.models import init_model
        from vtcr.tokens import BUILTIN_TOKENIZER

        model = str(init_model("qwen3-vl", "tiny", BUILTIN_TOKENIZER, out / "tiny-qwen3-vl", seed=config.seed,
                               overwrite=True))  # fmt: skip
    name = "bench"
    backend = TransformersBackend.from_pretrained(model, device=config.device, dtype=config.dtype, name=name)
    urls = _page_urls(max(config.clients), config.seed)
    servers: dict[str, tuple[Any, threading.Event, threading.Thread]] = {}
    for mode in MODES:  # both up at once: the modes alternate, so a busy machine slows both alike
        cap = 1 if mode == "one-at-a-time" else None
        httpd = make_server(backend, ServerConfig(port=0, served_model_name=name, max_concurrency=cap,
                                                  max_queue=max(64, 2 * max(config.clients)), prefix_cache=False))  # fmt: skip
        stop = threading.Event()
        thread = threading.Thread(target=run_server, args=(httpd,), kwargs={"stop": stop, "announce": lambda m: None},
                                  daemon=True)  # fmt: skip
        thread.start()
        servers[mode] = (httpd, stop, thread)
    port = {mode: servers[mode][0].server_address[1] for mode in MODES}
    levels: list[LevelResult] = []
    bar = tqdm(total=len(config.clients) * 4 + 1, desc="bench serve", disable=not progress)
    try:
        for mode in MODES:
            _post(port[mode], _body(name, urls[0], config.max_tokens))  # warm-up
        for clients in config.clients:
            runs: dict[str, list[LevelResult]] = {mode: [] for mode in MODES}
            half = max(config.requests, 2 * clients) // 2
            for mode in (*MODES, *reversed(MODES)):  # A B B A: drifts in machine load cancel out
                runs[mode].append(measure_level(port[mode], name, mode, clients, half, urls, config.max_tokens))
                bar.update()
            for mode in MODES:
                levels.append(_pooled(runs[mode]))
        app: ChatApp = servers["batched"][0].app
        disconnects = [measure_disconnect(port["batched"], name, app, urls[i % len(urls)])
                       for i in range(config.disconnects)]  # fmt: skip
        bar.update()
    finally:
        for _, stop, thread in servers.values():
            stop.set()
            thread.join(30)
    bar.close()
    by = {(r.mode, r.clients): r for r in levels}
    ratios = {str(c): by[("batched", c)].requests_per_s / by[("one-at-a-time", c)].requests_per_s for c in config.clients}
    report = {
        "config": {**asdict(config), "model": model, "backend_concurrency": getattr(backend, "concurrency", 1)},
        "levels": [{k: v for k, v in asdict(r).items() if k != "latencies_s"} for r in levels],
        "batched_over_one_at_a_time": ratios,
        "disconnect": disconnects,
    }
    (out / "serve_bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"vtcr serve on {report['config']['model']} (backend concurrency {report['config']['backend_concurrency']}, "
             f"{report['config']['max_tokens']} tokens per request)",  # fmt: skip
             f"{'mode':<14} {'clients':>7} {'req/s':>8} {'tok/s':>8} {'p50 s':>7} {'p99 s':>7}"]
    for r in report["levels"]:
        lines.append(f"{r['mode']:<14} {r['clients']:>7} {r['requests_per_s']:>8.2f} {r['tokens_per_s']:>8.1f} "
                     f"{r['p50_s']:>7.3f} {r['p99_s']:>7.3f}")  # fmt: skip
    ratios = ", ".join(f"{c} clients {x:.2f}x" for c, x in report["batched_over_one_at_a_time"].items())
    lines.append(f"batched / one-at-a-time requests/s: {ratios}")
    for d in report["disconnect"]:
        lines.append(f"disconnect -> generation stopped in {d['seconds_to_stop'] * 1000:.1f} ms "
                     f"({d['tokens']} tokens generated in all)")  # fmt: skip
    return "\n".join(lines)
