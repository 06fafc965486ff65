"""`vtcr serve` as a real subprocess on 127.0.0.1, with a tiny Qwen3-VL built from the real config.

Expected token counts come from outside the server: the Qwen3 chat format written out by hand and
tokenised with the real Qwen3 tokenizer, and `vtcr.tokens` arithmetic for the images.
"""

from __future__ import annotations

import base64
import http.client
import io
import itertools
import json
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from vtcr.engine.backend import GenerationRequest
from vtcr.engine.openai_backend import BackendError, OpenAIBackend
from vtcr.engine.server import ChatApp, RequestError, ServerConfig, make_server, parse_chat_request
from vtcr.render import Renderer, png_bytes, preset
from vtcr.tokens import image_prompt_tokens, vision_tokens
from serve_helpers import start_serve

MODEL_NAME = "tiny-qwen3-vl"
MAX_REQUEST_MB = 4
CONTEXT = 4096  # --max-model-len: the tiny model's own is 262144
MAX_IMAGES = 4
API_KEY = "test-key-1234"
MAX_IMAGE_PIXELS = 600_000  # above a 573x842 page (482k pixels): pages keep their size, bigger images shrink
START_TIMEOUT_S = 120


class Served:
    def __init__(self, proc: subprocess.Popen, port: int, stdout: queue.Queue, log: Path) -> None:
        self.proc, self.port, self.stdout, self.log = proc, port, stdout, log
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def request(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None):
        """(status, parsed JSON, headers) of one request on a fresh connection (with the API key
        unless `headers` has an Authorization of its own)."""
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers={"Authorization": f"Bearer {API_KEY}", **(headers or {})})
            response = conn.getresponse()
            return response.status, json.loads(response.read()), response.headers
        finally:
            conn.close()

    def chat(self, body: dict):
        return self.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, qwen3_tokenizer_dir) -> Path:
    from vtcr.models import init_model

    # A model trained on the paper's pages (its vtcr.json says vtcr1): reasoning with it over HTTP must
    # render vtcr1 pages too, never vtcr's own default.
    return init_model("qwen3-vl", "tiny", qwen3_tokenizer_dir, tmp_path_factory.mktemp("serve") / "tiny", seed=0,
                      render="vtcr1")


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "stderr.log"
    args = ["--model", str(tiny_model), "--served-model-name", MODEL_NAME, "--max-request-mb", str(MAX_REQUEST_MB),
            "--device", "cpu", "--max-image-pixels", str(MAX_IMAGE_PIXELS), "--max-model-len", str(CONTEXT),
            "--max-images", str(MAX_IMAGES)]  # fmt: skip
    # the key from the environment, as a deployment would pass it
    proc, port, lines = start_serve(args, log, env={"VTCR_API_KEY": API_KEY}, timeout_s=START_TIMEOUT_S)
    server = Served(proc, port, lines, log)
    yield server
    # Clean shutdown on SIGTERM: exit status 0 and a goodbye line.
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    code = proc.wait(15)
    rest = []
    while (line := lines.get(timeout=5)) is not None:
        rest.append(line)
    assert code == 0, log.read_text()[-3000:]
    assert any("shutting down" in line for line in rest)


@pytest.fixture(scope="module")
def pages(shared_traces) -> list[Image.Image]:
    """Two real optical-memory pages: the start of a long real reasoning trace."""
    trace = next(t for t in shared_traces if len(t["think"] or "") > 8000)
    return list(itertools.islice(Renderer(preset("dense")).iter_pages(trace["think"]), 2))


@pytest.fixture(scope="module")
def qwen3_tokenizer(qwen3_tokenizer_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(qwen3_tokenizer_dir / "tokenizer.json"))


def data_url(img: Image.Image, fmt: str = "PNG") -> str:
    if fmt == "PNG":
        raw = png_bytes(img)
    else:
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        raw = buf.getvalue()
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(raw).decode()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def chat_body(content, **kw) -> dict:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 6, **kw}


QUESTION = "Continue the reasoning recorded in these pages."


# ---- the happy path ---------------------------------------------------------------------------


def test_models_and_health(served):
    status, data, _ = served.request("GET", "/v1/models")
    assert status == 200 and data["object"] == "list"
    assert [m["id"] for m in data["data"]] == [MODEL_NAME]
    assert served.request("GET", "/health")[:2] == (200, {"status": "ok"})
    # the model's own entry, with the pages it was trained to read
    status, entry, _ = served.request("GET", f"/v1/models/{MODEL_NAME}")
    assert status == 200 and entry == data["data"][0]
    assert entry["vtcr"] == {"render_preset": "vtcr1", "render_config": preset("vtcr1").to_dict(), "prompt_opens": ""}
    status, error, _ = served.request("GET", "/v1/models/another-model")
    assert status == 404 and error["error"]["param"] == "model" and "another-model" in error["error"]["message"]


def test_chat_with_two_page_images_counts_image_tokens(served, pages, qwen3_tokenizer):
    assert len(pages) == 2 and pages[0].size != (0, 0)
    content = [image_part(data_url(p)) for p in pages] + [{"type": "text", "text": QUESTION}]
    status, data, _ = served.chat(chat_body(content, seed=1))
    assert status == 200, data
    assert data["object"] == "chat.completion" and data["model"] == MODEL_NAME
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = data["usage"]
    assert 1 <= usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 6

    # Text-only twin of the request: the Qwen3 chat format, tokenised by the real tokenizer.
    status, text_only, _ = served.chat(chat_body(QUESTION, seed=1))
    assert status == 200
    prompt = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    assert text_only["usage"]["prompt_tokens"] == len(qwen3_tokenizer.encode(prompt, add_special_tokens=False).ids)
    # The two pages add exactly what vtcr.tokens says they cost (placeholders + start/end tokens).
    per_image = [image_prompt_tokens(p, "qwen3-vl") for p in pages]
    assert usage["prompt_tokens"] - text_only["usage"]["prompt_tokens"] == sum(per_image)
    assert data["vtcr"]["vision_tokens"] == sum(vision_tokens(p, "qwen3-vl") for p in pages) > 400
    assert text_only["vtcr"]["vision_tokens"] == 0


def test_image_above_the_pixel_cap_is_downscaled_by_the_processor(served, pages):
    big = pages[0].resize((pages[0].width * 2, pages[0].height * 2))  # 1146x1684: 1.9M pixels
    status, data, _ = served.chat(chat_body([image_part(data_url(big)), {"type": "text", "text": "x"}]))
    assert status == 200, data
    capped = vision_tokens(big, "qwen3-vl", max_pixels=MAX_IMAGE_PIXELS)
    assert data["vtcr"]["vision_tokens"] == capped
    assert capped < vision_tokens(big, "qwen3-vl") and capped * 32 * 32 <= MAX_IMAGE_PIXELS


def test_prefix_cache_reuses_the_earlier_round(served, pages, qwen3_tokenizer):
    system = {"role": "system", "content": "These images record your previous reasoning process."}
    question = {"type": "text", "text": QUESTION}
    round1 = {"model": MODEL_NAME, "max_tokens": 3, "seed": 2,
              "messages": [system, {"role": "user", "content": [image_part(data_url(pages[0])), question]}]}
    round2 = {**round1, "messages": [system, {"role": "user", "content": [image_part(data_url(p)) for p in pages]
                                              + [question]}]}  # fmt: skip
    first = served.chat(round1)[1]
    second = served.chat(round2)[1]
    # Reused: everything up to the end of the first page; the second page and the question are new.
    head = f"<|im_start|>system\n{system['content']}<|im_end|>\n<|im_start|>user\n"
    shared = len(qwen3_tokenizer.encode(head, add_special_tokens=False).ids) + image_prompt_tokens(pages[0], "qwen3-vl")
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == shared
    assert second["vtcr"]["prefill_tokens"] == second["usage"]["prompt_tokens"] - shared
    assert first["usage"]["prompt_tokens"] < second["usage"]["prompt_tokens"]


def test_jpeg_image_accepted_and_priced_like_png(served, pages):
    bodies = [chat_body([image_part(data_url(pages[0], f)), {"type": "text", "text": "x"}]) for f in ("PNG", "JPEG")]
    results = [served.chat(b) for b in bodies]
    assert [r[0] for r in results] == [200, 200]
    assert results[0][1]["usage"]["prompt_tokens"] == results[1][1]["usage"]["prompt_tokens"]


def test_seeded_sampling_is_reproducible(served):
    body = chat_body("Say something.", temperature=1.0, top_p=1.0, max_tokens=8)
    first = served.chat({**body, "seed": 123})[1]["choices"][0]["message"]["content"]
    again = served.chat({**body, "seed": 123})[1]["choices"][0]["message"]["content"]
    other = served.chat({**body, "seed": 124})[1]["choices"][0]["message"]["content"]
    assert first == again
    assert first != other  # random weights, 150k-token vocabulary, 8 sampled tokens


def test_greedy_needs_no_seed(served):
    body = chat_body("Say something.", temperature=0, max_tokens=8)
    outs = {served.chat(body)[1]["choices"][0]["message"]["content"] for _ in range(2)}
    assert len(outs) == 1


def test_continue_final_message(served, qwen3_tokenizer):
    prefix = "<think>\nFirst, the"
    base = chat_body("Q?", seed=5, max_tokens=4)
    plain = served.chat(base)[1]
    status, cont, _ = served.chat({**base, "messages": base["messages"] + [{"role": "assistant", "content": prefix}],
                                   "continue_final_message": True, "add_generation_prompt": False})  # fmt: skip
    assert status == 200, cont
    added = cont["usage"]["prompt_tokens"] - plain["usage"]["prompt_tokens"]
    assert added == len(qwen3_tokenizer.encode(prefix, add_special_tokens=False).ids)


# ---- bad requests -------------------------------------------------------------------------------


def _png_with_header_size(width: int, height: int) -> str:
    """A real, tiny-on-the-wire PNG of a huge flat image (compresses to a few KB)."""
    return data_url(Image.new("L", (width, height), 255))


def _truncated_png(page: Image.Image) -> str:
    raw = png_bytes(page)
    return "data:image/png;base64," + base64.b64encode(raw[: len(raw) // 2]).decode()


BAD_BODIES = [
    # (case, body, status, message fragment)
    ("not json", b'{"messages": [', 400, "not valid JSON"),
    ("not an object", b"[1, 2]", 400, "JSON object"),
    ("no messages", {"model": MODEL_NAME}, 400, "messages is required"),
    ("empty messages", {"messages": []}, 400, "messages is required"),
    ("unknown model", chat_body("hi") | {"model": "gpt-4o"}, 404, "does not exist"),
    ("bad role", {"messages": [{"role": "tool", "content": "x"}]}, 400, "role must be one of"),
    ("bad content", {"messages": [{"role": "user", "content": 5}]}, 400, "content must be"),
    ("remote url", chat_body([image_part("https://example.com/a.png")]), 400, "does not fetch 'https' URLs"),
    ("file url", chat_body([image_part("file:///etc/passwd")]), 400, "does not fetch 'file' URLs"),
    ("not base64 data url", chat_body([image_part("data:image/png,abc")]), 400, "must be base64"),
    ("bad base64", chat_body([image_part("data:image/png;base64,@@@@")]), 400, "invalid base64"),
    ("not an image", chat_body([image_part("data:image/png;base64," + base64.b64encode(b"hello" * 50).decode())]),
     422, "not a decodable"),
    ("text media type", chat_body([image_part("data:text/plain;base64,aGk=")]), 400, "is not an image"),
    ("audio part", chat_body([{"type": "input_audio", "input_audio": {}}]), 400, "unsupported part type"),
    ("stream not bool", chat_body("hi", stream="yes"), 400, "stream must be true or false"),
    ("n=0", chat_body("hi", n=0), 400, "n must be an integer [1, 16]"),
    ("n=17", chat_body("hi", n=17), 400, "n must be an integer [1, 16]"),
    ("five stops", chat_body("hi", stop=["a", "b", "c", "d", "e"]), 400, "at most 4"),
    ("empty stop", chat_body("hi", stop=[""]), 400, "non-empty"),
    ("top_logprobs without logprobs", chat_body("hi", top_logprobs=2), 400, "needs logprobs=true"),
    ("top_logprobs 21", chat_body("hi", logprobs=True, top_logprobs=21), 400, "top_logprobs must be an integer"),
    ("stream_options without stream", chat_body("hi", stream_options={"include_usage": True}), 400,
     "only allowed with stream=true"),
    ("top_k", chat_body("hi", top_k=-2), 400, "top_k must be an integer"),
    ("repetition_penalty", chat_body("hi", repetition_penalty=0), 400, "repetition_penalty must be a number"),
    ("max_tokens over context", chat_body("hi", max_tokens=CONTEXT + 1), 400, f"context length is {CONTEXT}"),
    ("too many images", chat_body([image_part("data:image/png;base64,x")] * (MAX_IMAGES + 1)), 400,
     f"at most {MAX_IMAGES} per request"),
    ("max_tokens 0", chat_body("hi", max_tokens=0), 400, "max_tokens must be an integer"),
    ("max_tokens str", chat_body("hi", max_tokens="9"), 400, "max_tokens must be an integer"),
    ("temperature", chat_body("hi", temperature=3), 400, "temperature must be a number"),
    ("top_p", chat_body("hi", top_p=-1), 400, "top_p must be a number"),
    ("seed", chat_body("hi", seed=1.5), 400, "seed must be an integer"),
    ("continue without assistant", chat_body("hi", continue_final_message=True), 400, "assistant message last"),
    ("no generation prompt", chat_body("hi", add_generation_prompt=False), 400, "only with continue_final_message"),
]


@pytest.mark.parametrize("case, body, status, fragment", BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_requests_get_4xx_with_message(served, case, body, status, fragment):
    got, data, _ = served.request("POST", "/v1/chat/completions", body)
    assert got == status, data
    assert set(data) == {"error"} and set(data["error"]) == {"message", "type", "param", "code"}
    assert fragment in data["error"]["message"]
    assert data["error"]["type"] == "invalid_request_error"


def test_bad_images(served, pages):
    status, data, _ = served.chat(chat_body([image_part(_truncated_png(pages[0]))]))
    assert status == 422 and "could not be decoded" in data["error"]["message"]
    # 9000x8000 = 72M pixels: refused from the header, before decoding (decompression-bomb guard).
    status, data, _ = served.chat(chat_body([image_part(_png_with_header_size(9000, 8000))]))
    assert status == 413 and "9000x8000" in data["error"]["message"]


@pytest.mark.parametrize(
    "method, path, status",
    [("GET", "/v1/chat/completions", 405), ("POST", "/v1/models", 405), ("DELETE", "/v1/models", 405),
     ("PUT", "/v1/chat/completions", 405), ("GET", "/v2/nothing", 404), ("POST", "/v1/completions", 404)],
)  # fmt: skip
def test_wrong_method_or_path(served, method, path, status):
    got, data, _ = served.request(method, path, b"{}" if method != "GET" else None)
    assert got == status and data["error"]["message"]


def test_oversize_body_refused_before_it_is_read(served):
    limit = MAX_REQUEST_MB * 2**20
    # Headers only: the 413 arrives although not one body byte was sent.
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(limit + 1))
    conn.endheaders()
    response = conn.getresponse()
    data = json.loads(response.read())
    conn.close()
    assert response.status == 413 and str(limit) in data["error"]["message"]
    # A client that sends the whole oversize body still reads the 413 (the server drains it).
    big = json.dumps(chat_body("x" * (limit + 10))).encode()
    status, data, _ = served.request("POST", "/v1/chat/completions", big)
    assert status == 413 and data["error"]["code"] == "request_too_large"
    # Expect: 100-continue gets the 413 instead of the go-ahead.
    status, data, _ = served.request(
        "POST", "/v1/chat/completions", b"", {"Content-Length": str(limit + 1), "Expect": "100-continue"}
    )
    assert status == 413


def test_malformed_http_gets_json_error(served):
    import socket

    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        headers = b"".join(b"X-Pad-%d: 1\r\n" % i for i in range(120))  # http.server allows 100
        sock.sendall(b"GET /health HTTP/1.1\r\n" + headers + b"\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431")
    assert "Too many headers" in json.loads(body)["error"]["message"]


@pytest.mark.parametrize("line", [b"HELLO\r\n\r\n", b"GET /health\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n",
                                  b"GET /health HTTP/9.9\r\n\r\n"])
def test_garbage_request_line_gets_a_status_line(served, line):
    import socket

    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(line)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] (400|505|200) ", head), reply[:200]
    if not head.split()[1] == b"200":  # a bare HTTP/1.0-style "GET /health" is answered
        assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


def test_missing_content_length(served):
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 411 and "Content-Length" in json.loads(response.read())["error"]["message"]
    conn.close()
    assert served.request("GET", "/health")[0] == 200  # still serving after all the bad requests


def test_cli_reports_missing_model_folder(tmp_path, capsys):
    from vtcr.cli import main

    missing = tmp_path / "no-model"
    assert main(["serve", "--model", str(missing), "--port", "0"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_port_in_use_is_reported_with_the_address(served):
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{served.port}"):
        make_server(_GatedBackend(), ServerConfig(port=served.port))


# ---- the openai backend against the real server ---------------------------------------------------


def test_openai_backend_end_to_end(served, pages):
    backend = OpenAIBackend(served.base_url, MODEL_NAME, timeout_s=60, max_retries=1, concurrency=3, api_key=API_KEY)
    messages = [
        {"role": "system", "content": "These images record your previous reasoning process."},
        {"role": "user", "content": [*({"type": "image", "image": p} for p in pages), {"type": "text", "text": QUESTION}]},  # noqa: E501
    ]
    request = GenerationRequest(messages, max_new_tokens=5, temperature=1.0, top_p=0.95, seed=9)
    results = []
    threads = [threading.Thread(target=lambda: results.append(backend.generate(request))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 3 and len({r.text for r in results}) == 1  # same seed, same text, concurrently
    result = results[0]
    # The same request by hand: the backend's wire format and parsing agree with the raw API.
    raw = served.chat({"model": MODEL_NAME, "max_tokens": 5, "temperature": 1.0, "top_p": 0.95, "seed": 9,
                       "messages": [messages[0], {"role": "user", "content": [image_part(data_url(p)) for p in pages]
                                                  + [{"type": "text", "text": QUESTION}]}]})[1]  # fmt: skip
    assert result.text == raw["choices"][0]["message"]["content"]
    assert result.prompt_tokens == raw["usage"]["prompt_tokens"]
    assert result.generated_tokens == raw["usage"]["completion_tokens"]
    assert result.vision_tokens == sum(vision_tokens(p, "qwen3-vl") for p in pages)
    assert result.finish_reason == raw["choices"][0]["finish_reason"]
    assert result.extra["attempts"] == 1


def test_reasoning_over_http_renders_the_served_models_pages(served, monkeypatch, caplog):
    """The served model's vtcr.json says vtcr1: the openai backend learns it from the server, the
    engine renders vtcr1 pages (never vtcr's default, dense) without a warning, and the run record
    says so."""
    from vtcr.engine import EngineConfig, reason
    from vtcr.render import Renderer

    used = []
    real_init = Renderer.__init__

    def recording_init(self, config=None, backend="fast"):
        used.append(config)
        real_init(self, config, backend)

    monkeypatch.setattr(Renderer, "__init__", recording_init)
    backend = OpenAIBackend(served.base_url, MODEL_NAME, timeout_s=60, max_retries=1, api_key=API_KEY)
    assert backend.render_config == preset("vtcr1") and backend.render_config.name == "vtcr1"
    with caplog.at_level("WARNING", logger="vtcr.render.presets"):
        # sampled: the random model's greedy text is blank lines, which render to nothing
        record = reason("Think step by step: 2+3?", backend, EngineConfig(max_rounds=2, round_tokens=16, temperature=1.0, top_p=1.0))
    assert record.error is None and len(record.rounds) == 2 and record.rounds[0].pages >= 1
    assert used and all(config == preset("vtcr1") for config in used)
    assert record.config["render_preset"] == "vtcr1" and record.config["render_config"] == preset("vtcr1").to_dict()
    assert not [r for r in caplog.records if "no render config is known" in r.getMessage()]
    # a user's choice still wins over the model's
    record = reason("2+3?", backend, EngineConfig(max_rounds=2, round_tokens=16, temperature=1.0, top_p=1.0, render_preset="dense"))
    assert record.config["render_preset"] == "dense" and used[-1] == preset("dense")


def test_openai_backend_surfaces_4xx_from_server(served):
    backend = OpenAIBackend(served.base_url, "no-such-model", timeout_s=30, max_retries=3, sleep=lambda s: None, api_key=API_KEY)
    with pytest.raises(BackendError, match="HTTP 404: model 'no-such-model' does not exist") as info:
        backend.generate(GenerationRequest([{"role": "user", "content": "hi"}], max_new_tokens=2))
    assert info.value.attempts == 1 and info.value.url == served.base_url + "/chat/completions"


# ---- the application in-process (queue bound) ----------------------------------------------------


class _GatedBackend:
    """Blocks in generate until released: holds the generation lock so that requests queue up."""

    name = "gated"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()

    def generate(self, request):
        from vtcr.engine.backend import GenerationResult

        self.entered.set()
        self.gate.wait(10)
        return GenerationResult("ok", 1, 3, 3, 0, "stop", 0.01)

    def release(self, prefix_key):
        pass


def test_queue_limit_gives_503():
    backend = _GatedBackend()
    app = ChatApp(backend, ServerConfig(served_model_name="gated", max_queue=1))
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("first", app.chat(body)))
    worker.start()
    assert backend.entered.wait(10)
    with pytest.raises(RequestError) as info:
        app.chat(body)
    assert info.value.status == 503 and "busy" in info.value.message
    backend.gate.set()
    worker.join(10)
    assert outcome["first"]["choices"][0]["message"]["content"] == "ok"
    assert app.chat(body)["usage"]["total_tokens"] == 4  # the slot is free again


def test_parse_defaults_and_roles():
    request = parse_chat_request(
        {"messages": [{"role": "developer", "content": "sys"},
                      {"role": "user", "content": [{"type": "text", "text": "q"}]}],
         "max_completion_tokens": 7},
        ServerConfig(served_model_name="m", default_max_tokens=99),
    )  # fmt: skip
    assert request.messages == [{"role": "system", "content": "sys"},
                                {"role": "user", "content": [{"type": "text", "text": "q"}]}]  # fmt: skip
    assert (request.max_new_tokens, request.temperature, request.top_p, request.seed) == (7, 1.0, 1.0, None)
    # no max_tokens: what is left of the context (the backend stops at the context length)
    assert parse_chat_request({"messages": [{"role": "user", "content": "q"}]}, ServerConfig(), 4096).max_new_tokens == 4096
    config = ServerConfig(port=0, served_model_name="x", max_request_bytes=5)
    assert ServerConfig.from_json(config.to_json()) == config


# ---- the real `openai` client: streaming, stop, n, logprobs, sampling knobs, refusals ------------

openai = pytest.importorskip("openai")
SAY = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.base_url, api_key=API_KEY, max_retries=0, timeout=60)


def _streamed(chunks) -> tuple[dict[int, str], dict[int, str], list]:
    """(text per choice index, finish_reason per index, the chunks) of a chat stream."""
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    chunks = list(chunks)
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    return texts, finish, chunks


def test_openai_client_stream_equals_the_plain_answer(client, pages):
    content = [image_part(data_url(pages[0])), {"type": "text", "text": QUESTION}]
    kw = dict(model=MODEL_NAME, messages=[{"role": "user", "content": content}], max_tokens=10, temperature=1.0,
              seed=3)  # fmt: skip
    plain = client.chat.completions.create(**kw)
    texts, finish, chunks = _streamed(
        client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    )
    assert texts == {0: plain.choices[0].message.content} and len(texts[0]) > 10
    assert finish == {0: plain.choices[0].finish_reason}
    assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
    assert len(chunks) >= 2 + 10  # role, one piece per token or so, finish, usage
    assert all(c.usage is None for c in chunks[:-1]) and chunks[-1].choices == []
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (plain.usage.prompt_tokens, plain.usage.completion_tokens)
    # without include_usage: no usage anywhere, and the raw stream ends with data: [DONE]
    with client.chat.completions.with_streaming_response.create(**kw, stream=True) as raw:
        lines = [line for line in raw.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: {") for line in lines[:-1])
    assert all("usage" not in json.loads(line[6:]) for line in lines[:-1])


def test_stop_strings_cut_the_text_streamed_or_not(client):
    kw = dict(model=MODEL_NAME, messages=SAY, max_tokens=16, temperature=1.0, seed=3)
    full = client.chat.completions.create(**kw).choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 3]  # three characters in the middle of the sampled text
    assert len(stop) == 3 and full.find(stop) > 0
    cut = client.chat.completions.create(**kw, stop=[stop, "never-generated-xyz"]).choices[0]
    assert (cut.message.content, cut.finish_reason) == (full[: full.find(stop)], "stop")
    texts, finish, _ = _streamed(client.chat.completions.create(**kw, stop=stop, stream=True))
    assert texts == {0: full[: full.find(stop)]} and finish == {0: "stop"}


def test_n_choices_are_the_seeds_seed_plus_i(client):
    kw = dict(model=MODEL_NAME, messages=SAY, max_tokens=6, temperature=1.0)
    many = client.chat.completions.create(**kw, n=3, seed=40)
    singles = [client.chat.completions.create(**kw, seed=40 + i) for i in range(3)]
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert [c.message.content for c in many.choices] == [s.choices[0].message.content for s in singles]
    assert len({c.message.content for c in many.choices}) == 3
    assert many.usage.prompt_tokens == singles[0].usage.prompt_tokens  # one prompt
    assert many.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)
    texts, finish, _ = _streamed(client.chat.completions.create(**kw, n=2, seed=40, stream=True))
    assert texts == {i: many.choices[i].message.content for i in range(2)} and set(finish) == {0, 1}


def test_logprobs_top_logprobs_and_sampling_knobs(client):
    kw = dict(model=MODEL_NAME, messages=SAY, max_tokens=8)
    greedy = client.chat.completions.create(**kw, temperature=0, logprobs=True, top_logprobs=3).choices[0]
    entries = greedy.logprobs.content
    assert len(entries) == 8 and "".join(e.token for e in entries) == greedy.message.content
    for e in entries:
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and tops[0] <= 0
        assert e.top_logprobs[0].token == e.token and e.logprob == pytest.approx(tops[0])  # greedy: the best one
        assert bytes(e.bytes).decode() == e.token
    assert client.chat.completions.create(**kw, temperature=0).choices[0].logprobs is None
    # top_k=1 samples the most likely token: greedy, whatever the seed
    top1 = client.chat.completions.create(**kw, temperature=1.0, seed=8, extra_body={"top_k": 1})
    assert top1.choices[0].message.content == greedy.message.content
    # the random model's greedy text repeats one token; a strong repetition penalty forbids repeats
    assert len({e.token for e in entries}) < 8
    penalized = client.chat.completions.create(**kw, temperature=0, logprobs=True,
                                               extra_body={"repetition_penalty": 10.0}).choices[0]  # fmt: skip
    assert len({e.token for e in penalized.logprobs.content}) == 8


@pytest.mark.parametrize(
    "param, kwargs",
    [("frequency_penalty", {"frequency_penalty": 0.5}), ("presence_penalty", {"presence_penalty": -1}),
     ("logit_bias", {"logit_bias": {"100": 5}}), ("response_format", {"response_format": {"type": "json_object"}}),
     ("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
     ("tool_choice", {"tool_choice": "required"}), ("min_p", {"extra_body": {"min_p": 0.1}}),
     ("best_of", {"extra_body": {"best_of": 2}}), ("guided_json", {"extra_body": {"guided_json": {}}})],
)  # fmt: skip
def test_unimplemented_parameters_are_refused_by_name(client, param, kwargs):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_NAME, messages=SAY, max_tokens=2, **kwargs)
    assert info.value.param == param and info.value.code == "unsupported_parameter" and param in str(info.value)


def test_no_op_values_of_unimplemented_parameters_are_accepted(client):
    out = client.chat.completions.create(model=MODEL_NAME, messages=SAY, max_tokens=2, frequency_penalty=0,
                                         presence_penalty=0.0, response_format={"type": "text"}, user="u1")  # fmt: skip
    assert out.choices[0].finish_reason in ("stop", "length")


def test_api_key_is_required_on_v1_but_not_health(served):
    wrong = openai.OpenAI(base_url=served.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.models.list()
    assert info.value.code == "invalid_api_key" and "not the server's API key" in str(info.value)
    for headers in ({"Authorization": ""}, {"Authorization": f"Basic {API_KEY}"}):
        status, data, got = served.request("POST", "/v1/chat/completions", chat_body("hi"), headers)
        assert status == 401 and got["WWW-Authenticate"] == "Bearer" and data["error"]["code"] == "invalid_api_key"
    assert served.request("GET", "/health", headers={"Authorization": ""})[:2] == (200, {"status": "ok"})


def test_models_retrieve_and_context_length(client, qwen3_tokenizer):
    model = client.models.retrieve(MODEL_NAME)
    assert model.id == MODEL_NAME and model.max_model_len == CONTEXT
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other")
    # A prompt over the context length: 400 naming its length and the limit, streamed or not.
    text = "word " * CONTEXT
    prompt = f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    n_prompt = len(qwen3_tokenizer.encode(prompt, add_special_tokens=False).ids)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": text}],
                                           max_tokens=4, stream=stream)  # fmt: skip
        assert info.value.code == "context_length_exceeded" and info.value.param == "messages"
        assert f"the prompt is {n_prompt} tokens" in str(info.value) and f"context length is {CONTEXT}" in str(info.value)
    # No max_tokens: the answer may run to the end of the context; a prompt that leaves 3 tokens gets 3.
    short = "word " * (CONTEXT - 20)
    n_short = len(qwen3_tokenizer.encode(f"<|im_start|>user\n{short}<|im_end|>\n<|im_start|>assistant\n",
                                         add_special_tokens=False).ids)  # fmt: skip
    short += "word " * (CONTEXT - 3 - n_short)
    out = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": short}],
                                         temperature=0, extra_body={"repetition_penalty": 10.0})  # fmt: skip
    assert out.usage.prompt_tokens == CONTEXT - 3
    assert (out.usage.completion_tokens, out.choices[0].finish_reason) == (3, "length")


# ---- concurrency, time limit and cancellation, in process over a real socket ---------------------


class _TickingBackend:
    """Honours the backend contract with a clock instead of a model: one token ("t ") every `tick`
    seconds through on_token, stops when cancel is set; records how many calls overlap."""

    name = "ticking"

    def __init__(self, concurrency: int, tick: float = 0.01) -> None:
        self.concurrency, self.tick = concurrency, tick
        self.running = self.most = 0
        self.lock = threading.Lock()
        self.cancelled_after: list[int] = []

    def generate(self, request):
        from vtcr.engine.backend import GenerationResult

        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        tokens, finish = 0, "length"
        try:
            while tokens < request.max_new_tokens:
                if request.cancel is not None and request.cancel.is_set():
                    finish = "cancelled"
                    self.cancelled_after.append(tokens)
                    break
                time.sleep(self.tick)
                tokens += 1
                if request.on_token:
                    request.on_token("t ")
        finally:
            with self.lock:
                self.running -= 1
        return GenerationResult("t " * tokens, tokens, 3, 3, 0, finish, tokens * self.tick)

    def release(self, prefix_key):
        pass


@pytest.fixture
def ticking_server():
    servers = []

    def start(backend, **config):
        httpd = make_server(backend, ServerConfig(port=0, served_model_name="tick", **config))
        stop = threading.Event()
        from vtcr.engine.server import run_server

        thread = threading.Thread(target=run_server, args=(httpd,), kwargs={"stop": stop, "announce": lambda m: None},
                                  daemon=True)  # fmt: skip
        thread.start()
        servers.append((stop, thread))
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1"

    yield start
    for stop, thread in servers:
        stop.set()
        thread.join(15)


@pytest.mark.parametrize("concurrency, cap, expected", [(4, None, 4), (4, 1, 1)])
def test_concurrent_requests_reach_the_backend_concurrently(ticking_server, concurrency, cap, expected):
    backend = _TickingBackend(concurrency)
    url = ticking_server(backend, max_concurrency=cap)
    client = openai.OpenAI(base_url=url, api_key="-", max_retries=0)
    with __import__("concurrent.futures").futures.ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(lambda _: client.chat.completions.create(model="tick", messages=SAY, max_tokens=10), range(6)))
    assert [o.choices[0].message.content for o in outs] == ["t " * 10] * 6
    assert backend.most == expected


def test_time_limit_gives_504_and_stops_the_generation(ticking_server):
    backend = _TickingBackend(2)
    url = ticking_server(backend, request_timeout_s=0.3)
    client = openai.OpenAI(base_url=url, api_key="-", max_retries=0)
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="tick", messages=SAY, max_tokens=10_000)
    assert info.value.status_code == 504 and "time limit of 0.3 s" in str(info.value)
    assert time.monotonic() - t0 < 2 and backend.cancelled_after and backend.cancelled_after[0] < 60
    # streaming: the stream ends with an error event, then [DONE]
    with client.chat.completions.with_streaming_response.create(model="tick", messages=SAY, max_tokens=10_000,
                                                                stream=True) as raw:  # fmt: skip
        lines = [line for line in raw.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and json.loads(lines[-2][6:])["error"]["code"] == "timeout"
    assert len(backend.cancelled_after) == 2


def test_client_disconnect_cancels_within_a_few_tokens(ticking_server):
    backend = _TickingBackend(2)
    url = ticking_server(backend)
    client = openai.OpenAI(base_url=url, api_key="-", max_retries=0)
    stream = client.chat.completions.create(model="tick", messages=SAY, max_tokens=10_000, stream=True)
    for _, _chunk in zip(range(3), stream):
        pass
    gone = time.monotonic()
    stream.close()
    while not backend.cancelled_after and time.monotonic() - gone < 5:
        time.sleep(0.005)
    assert backend.cancelled_after, "the generation went on after the client left"
    assert time.monotonic() - gone < 0.5 and backend.cancelled_after[0] < 50
    # non-streaming: the client times out and closes; the server notices while the request waits
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(model="tick", messages=SAY, max_tokens=10_000)
    deadline = time.monotonic() + 5
    while len(backend.cancelled_after) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(backend.cancelled_after) == 2 and backend.cancelled_after[1] < 100
