"""Load and faults against a real `vtcr serve` subprocess on 127.0.0.1 (tiny Qwen3-VL, real config).

32 concurrent clients of the real `openai` package with real page images, streaming and not, mixed
with faults (clients that disconnect mid-stream, oversize and over-context requests, garbage request
lines, clients that stall halfway through their headers): the server stays up, greedy answers
equal the sequential ones, its memory returns to the baseline, and SIGTERM lets short in-flight
requests finish and cancels the long ones before exiting cleanly.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

from serve_helpers import start_serve  # noqa: E402
from vtcr.render import Renderer, png_bytes, preset  # noqa: E402

MODEL = "tiny-load"
CONTEXT = 2048
MAX_REQUEST_MB = 1
GRACE_S = 2.0
CLIENTS = 32
DISTINCT = 8  # distinct prompts; client i asks prompt i % DISTINCT
MAX_TOKENS = 4
RSS_TOLERANCE_MB = 64


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, lines: queue.Queue, log: Path) -> None:
        self.proc, self.port, self.lines, self.log = proc, port, lines, log
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def get(self, path: str, timeout: float = 10) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def wait_idle(self, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while (stats := self.get("/stats")[1])["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.01)
        return stats


@pytest.fixture(scope="module")
def server(tmp_path_factory, qwen3_tokenizer_dir):
    from vtcr.models import init_model

    root = tmp_path_factory.mktemp("serve-load")
    model = init_model("qwen3-vl", "tiny", qwen3_tokenizer_dir, root / "tiny", seed=0)
    log = root / "stderr.log"
    args = ["--model", str(model), "--device", "cpu", "--served-model-name", MODEL, "--max-model-len", str(CONTEXT),
            "--max-request-mb", str(MAX_REQUEST_MB), "--shutdown-grace", str(GRACE_S), "--max-queue", "128"]  # fmt: skip
    proc, port, lines = start_serve(args, log, env={"VTCR_API_KEY": None})
    yield Server(proc, port, lines, log)
    if proc.poll() is None:  # the SIGTERM test did not run (selected out, or an earlier failure)
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def crops(shared_traces) -> list[str]:
    """DISTINCT small real images (crops of one real optical-memory page) as data URLs."""
    trace = next(t for t in shared_traces if len(t["think"] or "") > 4000)
    page = next(iter(Renderer(preset("dense")).iter_pages(trace["think"])))
    boxes = [(0, 64 * i, 192, 64 * i + 96) for i in range(DISTINCT)]
    return ["data:image/png;base64," + base64.b64encode(png_bytes(page.crop(b))).decode() for b in boxes]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


def _messages(crops: list[str], i: int) -> list[dict]:
    content = [{"type": "image_url", "image_url": {"url": crops[i % DISTINCT]}},
               {"type": "text", "text": f"Read line {i % DISTINCT} of this page."}]  # fmt: skip
    return [{"role": "user", "content": content}]


def _ask(client, crops, i: int, stream: bool) -> str:
    """Prompts 0-3 greedy, 4-7 sampled with their own seed (the random model's greedy text is the
    same for every image; a seeded sample shows the image made a difference)."""
    k = i % DISTINCT
    sampling = {"temperature": 0} if k < DISTINCT // 2 else {"temperature": 1.0, "seed": k}
    kw = dict(model=MODEL, messages=_messages(crops, i), max_tokens=MAX_TOKENS, **sampling)
    if not stream:
        return client.chat.completions.create(**kw).choices[0].message.content
    chunks = client.chat.completions.create(**kw, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _raw(server, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(data)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
    return reply


def _faults(server, client, crops) -> dict[str, object]:
    """The fault cases, each returning what the client saw."""

    def oversize():
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * (MAX_REQUEST_MB << 20)}]})
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        status = conn.getresponse().status
        conn.close()
        return status

    def over_context():
        try:
            client.chat.completions.create(model=MODEL, max_tokens=2,
                                           messages=[{"role": "user", "content": "word " * CONTEXT}])  # fmt: skip
        except openai.BadRequestError as exc:
            return exc.code
        return "accepted"

    def garbage():
        return _raw(server, b"\x00\xffNOT HTTP AT ALL\r\n\r\n").split(b"\r\n", 1)[0]

    def disconnect():
        stream = client.chat.completions.create(model=MODEL, messages=_messages(crops, 0), max_tokens=1500,
                                                temperature=0, stream=True)  # fmt: skip
        next(iter(stream))
        stream.close()
        return "closed"

    return {"oversize": oversize, "over_context": over_context, "garbage": garbage, "disconnect": disconnect}


def test_32_concurrent_clients_with_faults(server, client, crops):
    reference = [_ask(client, crops, i, stream=False) for i in range(DISTINCT)]  # one at a time
    assert len(set(reference[DISTINCT // 2 :])) > 1  # sampled: the images change the answers

    def round_(with_faults: bool):
        with concurrent.futures.ThreadPoolExecutor(CLIENTS + 4) as pool:
            answers = [pool.submit(_ask, client, crops, i, i % 2 == 1) for i in range(CLIENTS)]
            faults = {k: pool.submit(f) for k, f in _faults(server, client, crops).items()} if with_faults else {}
            return [a.result() for a in answers], {k: f.result() for k, f in faults.items()}

    answers, _ = round_(with_faults=False)  # warm-up: threads, allocator arenas, prefix cache
    assert answers == [reference[i % DISTINCT] for i in range(CLIENTS)]
    server.wait_idle()
    baseline = server.rss_mb()
    before = server.get("/stats")[1]
    answers, faults = round_(with_faults=True)
    assert answers == [reference[i % DISTINCT] for i in range(CLIENTS)]
    assert faults == {"oversize": 413, "over_context": "context_length_exceeded",
                      "garbage": b"HTTP/1.1 400 Bad Request", "disconnect": "closed"}  # fmt: skip
    stats = server.wait_idle()
    assert stats["in_flight"] == 0 and stats["cancelled"] == before["cancelled"] + 1  # the disconnect
    assert stats["cancelled_tokens"] - before["cancelled_tokens"] < 200  # of 1500 asked for
    assert server.get("/health") == (200, {"status": "ok"})
    grown = server.rss_mb() - baseline
    assert grown < RSS_TOLERANCE_MB, f"RSS grew by {grown:.0f} MiB over a loaded round (baseline {baseline:.0f} MiB)"


def test_slow_clients_do_not_block_others(server, client, crops):
    stalled = []
    for _ in range(8):  # headers cut off halfway, then silence
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
        stalled.append(sock)
    try:
        t0 = time.monotonic()
        assert server.get("/health", timeout=5) == (200, {"status": "ok"})
        assert _ask(client, crops, 3, stream=True) == _ask(client, crops, 3, stream=False)
        assert time.monotonic() - t0 < 30
        # a slow client that does finish, a few bytes at a time, is answered
        body = json.dumps({"model": MODEL, "messages": _messages(crops, 1), "max_tokens": 2}).encode()
        sock = stalled.pop()
        rest = b"ngth: %d\r\nContent-Type: application/json\r\n\r\n" % len(body) + body
        for k in range(0, len(rest), len(rest) // 5 + 1):
            sock.sendall(rest[k : k + len(rest) // 5 + 1])
            time.sleep(0.02)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < 10:
            reply += sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200 ")
        sock.close()
    finally:
        for sock in stalled:
            sock.close()


def test_sigterm_finishes_short_requests_and_cancels_long_ones(server, client, crops):
    """Runs last: the server exits."""
    short = client.chat.completions.create(model=MODEL, messages=_messages(crops, 2), max_tokens=12, temperature=0,
                                           stream=True)  # fmt: skip
    results: dict[str, object] = {}

    def long_stream():
        with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=_messages(crops, 4), max_tokens=1500, temperature=0, stream=True
        ) as raw:  # fmt: skip
            results["stream"] = [line for line in raw.iter_lines() if line]

    def long_plain():
        try:
            client.chat.completions.create(model=MODEL, messages=_messages(crops, 5), max_tokens=1500)
            results["plain"] = "finished"
        except openai.APIStatusError as exc:
            results["plain"] = exc.status_code

    first = next(iter(short))  # the short one holds the model first
    threads = [threading.Thread(target=f) for f in (long_stream, long_plain)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while server.get("/stats")[1]["in_flight"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    rest = list(short)
    assert first.choices[0].delta.role == "assistant"
    assert rest[-1].choices[0].finish_reason == "length"  # finished within the grace period
    for t in threads:
        t.join(GRACE_S + 20)
    assert server.proc.wait(GRACE_S + 20) == 0
    took = time.monotonic() - t0
    assert results["plain"] == 503
    lines = results["stream"]
    assert lines[-1] == "data: [DONE]" and json.loads(lines[-2][6:])["error"]["code"] == "shutting_down"
    assert GRACE_S - 0.5 < took < GRACE_S + 15
    out = []
    while (line := server.lines.get(timeout=5)) is not None:
        out.append(line)
    # the two long ones, and the short one unless it was already done
    assert any(re.search(r"shutting down \([23] requests in flight\)", line) for line in out), out
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
