"""The `openai` backend against misbehaving loopback servers: 5xx, 429, hangs, dropped connections.

Each fault server is a real http.server on 127.0.0.1 in a thread, scripted per attempt. Backoff
sleeps are recorded instead of slept (the delays are checked against `backoff_delay`, which is
checked on its own), except where real timing is the point. The backend against a real `vtcr serve`
is tested in test_serve.py.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from vtcr.engine.backend import GenerationRequest
from vtcr.engine.openai_backend import (
    BackendError,
    OpenAIBackend,
    backoff_delay,
    chat_completions_url,
    infer_family,
)
from vtcr.render import Renderer, preset
from vtcr.tokens import vision_tokens

OK_BODY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "</think>\n<answer>7</answer>"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 120, "completion_tokens": 9, "total_tokens": 129,
              "prompt_tokens_details": {"cached_tokens": 100}},
}  # fmt: skip


class FaultServer(ThreadingHTTPServer):
    """Answers attempt i with script[i] (the last entry repeats) and records every request body.

    Actions: "ok", "500", "503", "429", "400", "hang" (no answer until released), "close" (drop the
    connection without answering), "truncate" (promise a longer body than is sent), "slow-ok"
    (0.2 s, then ok; counts how many requests are in flight at once).
    """

    daemon_threads = True

    def __init__(self, script: list[str], by_text: dict[str, str] | None = None) -> None:
        self.script = script
        self.by_text = by_text or {}  # substring of the request body -> action, overriding the script
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.headers_seen: list[dict] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        super().__init__(("127.0.0.1", 0), _FaultHandler)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_action(self, body: dict, path: str, headers: dict) -> str:
        with self.lock:
            self.bodies.append(body)
            self.paths.append(path)
            self.headers_seen.append(headers)
            raw = json.dumps(body)
            for needle, action in self.by_text.items():
                if needle in raw:
                    return action
            return self.script[min(len(self.bodies) - 1, len(self.script) - 1)]


class _FaultHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultServer

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def _reply(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        action = self.server.next_action(json.loads(raw), self.path, dict(self.headers))
        if action == "ok":
            self._reply(200, OK_BODY)
        elif action == "slow-ok":
            with self.server.lock:
                self.server.in_flight += 1
                self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
            time.sleep(0.2)
            with self.server.lock:
                self.server.in_flight -= 1
            self._reply(200, OK_BODY)
        elif action in ("500", "503", "400"):
            message = {"500": "CUDA out of memory", "503": "engine restarting", "400": "prompt is too long"}[action]
            self._reply(int(action), {"error": {"message": message, "type": "x", "code": int(action)}})
        elif action == "429":
            self._reply(429, {"error": {"message": "rate limited"}}, {"Retry-After": "3"})
        elif action == "hang":
            self.server.release.wait(10)  # bounded: the test releases it at teardown
            self.close_connection = True
        elif action == "close":
            self.close_connection = True  # say nothing and hang up
        elif action == "truncate":
            self.send_response(200)
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(b'{"choices": [')
            self.close_connection = True
        else:
            raise AssertionError(action)


@contextmanager
def fault_server(script: list[str], by_text: dict[str, str] | None = None) -> Iterator[FaultServer]:
    server = FaultServer(script, by_text)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def text_request(text: str = "What is 3+4?", **kw) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": text}], max_new_tokens=64, **kw)


def make_backend(url: str, **kw) -> tuple[OpenAIBackend, list[float]]:
    sleeps: list[float] = []
    kw.setdefault("backoff_s", 0.5)
    backend = OpenAIBackend(url, "qwen3-vl-test", timeout_s=kw.pop("timeout_s", 5.0), sleep=sleeps.append, **kw)
    return backend, sleeps


# ---- pure helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base, expected",
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1/chat/completions"),
        ("https://host/proxy/v1", "https://host/proxy/v1/chat/completions"),
        ("http://h:1/v1/chat/completions", "http://h:1/v1/chat/completions"),
    ],
)
def test_chat_completions_url(base, expected):
    assert chat_completions_url(base) == expected


@pytest.mark.parametrize("bad", ["127.0.0.1:8000", "ftp://host/v1", "http://", ""])
def test_chat_completions_url_rejects_non_http(bad):
    with pytest.raises(ValueError, match="base_url"):
        chat_completions_url(bad)


@pytest.mark.parametrize(
    "model, family",
    [("Qwen/Qwen3-VL-8B-Instruct", "qwen3-vl"), ("zai-org/Glyph", "glm-4.1v"), ("Qwen/Qwen2.5-VL-7B-Instruct",
     "qwen2.5-vl"), ("zai-org/GLM-4.1V-9B-Thinking", "glm-4.1v"), ("meta-llama/Llama-3-8B", None)],
)  # fmt: skip
def test_infer_family(model, family):
    assert infer_family(model) == family


def test_backoff_delay_is_exponential_capped_jittered_and_reproducible():
    for attempt in range(8):
        ceiling = min(10.0, 0.5 * 2**attempt)
        delays = {backoff_delay(attempt, 0.5, 10.0, f"req{i}") for i in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) == 50  # jitter spreads different requests apart
        assert backoff_delay(attempt, 0.5, 10.0, "req0") == backoff_delay(attempt, 0.5, 10.0, "req0")


def test_constructor_validates():
    with pytest.raises(ValueError, match="concurrency"):
        OpenAIBackend("http://127.0.0.1:1", "m", concurrency=0)
    with pytest.raises(ValueError, match="max_retries"):
        OpenAIBackend("http://127.0.0.1:1", "m", max_retries=-1)
    with pytest.raises(ValueError, match="model"):
        OpenAIBackend("http://127.0.0.1:1", "")


# ---- wire format and result parsing --------------------------------------------------------------


def test_wire_format_images_prefix_and_usage(shared_traces):
    trace = next(t for t in shared_traces if len(t["think"] or "") > 8000)
    pages = list(itertools.islice(Renderer(preset("dense")).iter_pages(trace["think"]), 2))
    assert len(pages) == 2
    messages = [
        {"role": "system", "content": "These images record your previous reasoning process."},
        {"role": "user", "content": [*({"type": "image", "image": p} for p in pages), {"type": "text", "text": "Q?"}]},
    ]
    request = GenerationRequest(messages, max_new_tokens=33, temperature=0.6, top_p=0.95, seed=11,
                                assistant_prefix="<think>\nSo far")  # fmt: skip
    with fault_server(["ok"]) as server:
        backend, _ = make_backend(server.base_url + "/v1/", api_key="sk-local")
        result = backend.generate(request)
    body, path, headers = server.bodies[0], server.paths[0], server.headers_seen[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-local"
    assert body["model"] == "qwen3-vl-test" and body["max_tokens"] == 33 and body["seed"] == 11
    assert (body["temperature"], body["top_p"], body["stream"]) == (0.6, 0.95, False)
    # The prefix travels as a trailing assistant message that the server continues.
    assert body["messages"][-1] == {"role": "assistant", "content": "<think>\nSo far"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["messages"][0] == messages[0]
    parts = body["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    for part, page in zip(parts, pages):
        url = part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert decoded.format == "PNG" and decoded.size == page.size
        assert decoded.convert("RGB").tobytes() == page.convert("RGB").tobytes()  # lossless
    # usage -> result; cached prompt tokens are not prefilled.
    assert result.text == "</think>\n<answer>7</answer>"
    assert (result.prompt_tokens, result.generated_tokens, result.prefill_tokens) == (120, 9, 20)
    assert result.finish_reason == "stop"
    # The API does not report vision tokens; the family (from the model name) prices the pages.
    assert result.vision_tokens == sum(vision_tokens(p, "qwen3-vl") for p in pages) > 0
    assert result.extra["attempts"] == 1 and result.extra["retry_delays_s"] == []
    assert result.seconds > 0 and backend.name == "qwen3-vl-test"


def test_pages_are_encoded_once_per_image_object(monkeypatch):
    import gc

    import vtcr.render

    calls = []
    real = vtcr.render.png_bytes
    monkeypatch.setattr(vtcr.render, "png_bytes", lambda img: calls.append(img.size) or real(img))
    pages = [Image.new("RGB", (64 + i, 48), (i, 0, 0)) for i in range(3)]
    request = GenerationRequest([{"role": "user", "content": [{"type": "image", "image": p} for p in pages]}], 8)
    with fault_server(["ok"]) as server:
        backend, _ = make_backend(server.base_url)
        backend.generate(request)
        backend.generate(request)  # the next round resends the same pages
    assert len(calls) == 3 and server.bodies[0] == server.bodies[1]
    del request, pages
    gc.collect()
    assert backend._images._urls == {}  # entries die with their images


def test_no_prefix_no_seed_sends_plain_request():
    with fault_server(["ok"]) as server:
        backend, _ = make_backend(server.base_url, vision_family=None)
        result = backend.generate(text_request())
    body = server.bodies[0]
    assert "seed" not in body and "continue_final_message" not in body
    assert body["messages"] == [{"role": "user", "content": "What is 3+4?"}]
    assert result.vision_tokens == 0


# ---- faults ---------------------------------------------------------------------------------------


def test_5xx_retried_with_backoff_then_succeeds():
    with fault_server(["500", "503", "500", "ok"]) as server:
        backend, sleeps = make_backend(server.base_url, max_retries=4, backoff_s=0.5, backoff_max_s=30)
        result = backend.generate(text_request())
    assert len(server.bodies) == 4 and all(b == server.bodies[0] for b in server.bodies)
    assert result.extra["attempts"] == 4
    assert result.extra["retry_delays_s"] == sleeps and len(sleeps) == 3
    for attempt, delay in enumerate(sleeps):
        assert 0.25 * 2**attempt <= delay <= 0.5 * 2**attempt
    # Reproducible: the same request against the same script waits the same.
    with fault_server(["500", "503", "500", "ok"]) as server:
        again, sleeps_again = make_backend(server.base_url, max_retries=4, backoff_s=0.5, backoff_max_s=30)
        again.generate(text_request())
    assert sleeps_again == sleeps


def test_5xx_until_retries_run_out_raises_backend_error_naming_url():
    with fault_server(["500"]) as server:
        backend, sleeps = make_backend(server.base_url, max_retries=2)
        with pytest.raises(BackendError) as info:
            backend.generate(text_request())
    err = info.value
    assert len(server.bodies) == 3 and len(sleeps) == 2
    assert err.attempts == 3 and err.status == 500 and err.retryable
    assert err.url == f"{server.base_url}/v1/chat/completions" and err.url in str(err)
    assert "HTTP 500: CUDA out of memory" in str(err) and "after 3 attempts" in str(err)


def test_4xx_fails_at_once_with_server_message():
    with fault_server(["400", "ok"]) as server:
        backend, sleeps = make_backend(server.base_url, max_retries=4)
        with pytest.raises(BackendError, match="HTTP 400: prompt is too long") as info:
            backend.generate(text_request())
    assert len(server.bodies) == 1 and sleeps == []
    assert info.value.status == 400 and not info.value.retryable and info.value.attempts == 1


def test_429_retried_honouring_retry_after():
    with fault_server(["429", "ok"]) as server:
        backend, sleeps = make_backend(server.base_url, backoff_s=0.1, backoff_max_s=30)
        result = backend.generate(text_request())
    assert result.extra["attempts"] == 2
    assert sleeps == [3.0]  # Retry-After: 3 exceeds the 0.05..0.1 s backoff


def test_hang_times_out_retries_then_backend_error():
    with fault_server(["hang"]) as server:
        backend = OpenAIBackend(server.base_url, "m", timeout_s=0.3, max_retries=1, backoff_s=0.05)
        start = time.monotonic()
        with pytest.raises(BackendError, match="timeout") as info:
            backend.generate(text_request())
        elapsed = time.monotonic() - start
    assert len(server.bodies) == 2 and info.value.attempts == 2 and info.value.status is None
    assert server.base_url in str(info.value)
    assert 0.6 <= elapsed < 3.0  # two 0.3 s timeouts plus one short backoff


def test_hang_then_recovery():
    with fault_server(["hang", "ok"]) as server:
        backend, sleeps = make_backend(server.base_url, timeout_s=0.3, max_retries=2)
        result = backend.generate(text_request())
    assert result.extra["attempts"] == 2 and len(sleeps) == 1


@pytest.mark.parametrize("fault", ["close", "truncate"])
def test_dropped_connection_retried_then_backend_error(fault):
    with fault_server([fault]) as server:
        backend, sleeps = make_backend(server.base_url, max_retries=3)
        with pytest.raises(BackendError, match="connection error") as info:
            backend.generate(text_request())
    assert len(server.bodies) == 4 and len(sleeps) == 3 and info.value.attempts == 4
    assert server.base_url in str(info.value)


def test_dropped_connection_then_success():
    with fault_server(["close", "truncate", "ok"]) as server:
        backend, _ = make_backend(server.base_url, max_retries=3)
        assert backend.generate(text_request()).extra["attempts"] == 3


def test_connection_refused_is_retried():
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend, sleeps = make_backend(f"http://127.0.0.1:{port}", max_retries=2)
    with pytest.raises(BackendError, match=r"ConnectionRefusedError.*after 3 attempts"):
        backend.generate(text_request())
    assert len(sleeps) == 2


def test_concurrency_is_bounded_across_threads():
    with fault_server(["slow-ok"]) as server:
        backend = OpenAIBackend(server.base_url, "m", concurrency=2, timeout_s=5)
        results: list = []
        threads = [threading.Thread(target=lambda i=i: results.append(backend.generate(text_request(f"q{i}"))))
                   for i in range(6)]  # fmt: skip
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        elapsed = time.monotonic() - start
    assert len(results) == 6 and server.max_in_flight == 2
    assert elapsed >= 0.55  # 6 requests of 0.2 s, two at a time
    assert max(r.extra["queue_seconds"] for r in results) >= 0.15  # some waited for a slot


def test_one_bad_request_among_many_fails_alone():
    """Threads sharing the backend: a request that keeps failing does not stop the others."""
    with fault_server(["ok"], by_text={"p2": "500"}) as server:
        backend, _ = make_backend(server.base_url, max_retries=2, concurrency=3)
        outcomes: dict[str, object] = {}

        def work(name):
            try:
                outcomes[name] = backend.generate(text_request(name))
            except BackendError as exc:
                outcomes[name] = exc

        threads = [threading.Thread(target=work, args=(f"p{i}",)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert isinstance(outcomes["p2"], BackendError) and outcomes["p2"].attempts == 3
    assert all(outcomes[f"p{i}"].text.endswith("</answer>") for i in (0, 1, 3, 4))
    assert len(server.bodies) == 4 + 3


def test_reason_many_records_failing_problems_while_the_others_finish():
    """The issue's bad-server cases through the real loop: 500s, a hang and a dropped connection each
    end their own problem as an error naming the URL; the other problems get their answers."""
    from vtcr.engine import EngineConfig, reason_many

    faults = {"problem-500": "500", "problem-hang": "hang", "problem-close": "close"}
    questions = ["problem-ok-1 What is 3+4?", *(f"{k} What is 3+4?" for k in faults), "problem-ok-2 What is 3+4?"]
    with fault_server(["ok"], by_text=faults) as server:
        backend = OpenAIBackend(server.base_url, "m", timeout_s=0.5, max_retries=1, backoff_s=0.05, concurrency=5)
        start = time.monotonic()
        records = reason_many(questions, backend, EngineConfig(mode="vtc", max_rounds=2, round_tokens=64))
        elapsed = time.monotonic() - start
    assert elapsed < 10
    by_question = dict(zip(questions, records))
    for q in (questions[0], questions[-1]):
        assert by_question[q].error is None and by_question[q].answer == "7" and by_question[q].stop_reason == "answer"
    for key, q in zip(faults, questions[1:-1]):
        record = by_question[q]
        assert record.stop_reason == "error" and record.answer is None, key
        assert "BackendError" in record.error and server.base_url in record.error
    assert "timeout" in by_question[questions[2]].error
    assert "HTTP 500" in by_question[questions[1]].error
    assert "connection error" in by_question[questions[3]].error
    assert len(server.bodies) == 2 + 3 * 2  # each failing problem tried twice
