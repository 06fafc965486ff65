"""`vtcr serve`: an OpenAI-compatible chat-completions server over one in-process backend.

For CPU users without vLLM, and the real server the `openai` backend is tested against. Standard
library only (http.server); the model runs through `TransformersBackend`.

Endpoints
  GET  /health                 {"status": "ok"}
  GET  /v1/models              the one served model (with vtcr's render config of the model and
                               `prompt_opens`, what its generation prompt opens, e.g. "<think>\n")
  GET  /v1/models/{id}         that model alone (404 for any other id)
  POST /v1/chat/completions    non-streaming chat completions

Requests. `messages` with roles system/developer/user/assistant; content a string or a list of
{"type": "text"} and {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}
parts (PNG, JPEG or WebP). Only inline base64 data URLs are accepted: the server never fetches a
remote or file URL. Honoured fields: model (optional; must name the served model), max_tokens or
max_completion_tokens (default `default_max_tokens`), temperature (default 1.0; 0 is greedy),
top_p (default 1.0), seed, n (1 only), and vLLM's continue_final_message / add_generation_prompt
(the trailing assistant message is continued instead of a new turn being opened). `stream`, `stop`,
`tools` and `logprobs` are refused with 400 rather than silently ignored; other fields are ignored.

Images larger than the model's pixel cap (`--max-image-pixels`, else `max_image_pixels` of the
checkpoint's vtcr.json, else the family's processor maximum) are downscaled by the processor,
aspect ratio kept, to fit the cap;
`usage.prompt_tokens` and the `vtcr.vision_tokens` field of the response count the resized image.
Images whose header says they exceed `max_decode_pixels` are refused with 413 before decoding.

Responses are OpenAI chat.completion objects with `usage` (prompt_tokens include the image tokens;
prompt_tokens_details.cached_tokens = prompt tokens the backend reused) and a `vtcr` field with
vision_tokens, prefill_tokens and timings. Errors are {"error": {"message", "type", "param",
"code"}}: 400 malformed or invalid request, 404 unknown path or model, 405 wrong method, 411
missing Content-Length, 413 body or image too large, 422 image data that does not decode, 503 queue
full, 500 generation failed.

Prefix cache: requests whose messages have the same roles and text (a problem's successive rounds,
which only add page images) share a cache slot in the backend, so only the new part of the prompt
is prefilled; `usage.prompt_tokens_details.cached_tokens` says how much was reused, as vLLM does.

Concurrency: connections are handled on threads, but one model generates one request at a time
(a lock serialises `generate`); at most `max_queue` requests are running or waiting, later ones
get 503 with Retry-After, which the `openai` backend retries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from .backend import Backend, GenerationRequest, GenerationResult

API_PREFIX = "/v1"
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
# Most bytes read and thrown away after answering 413, so that the client can read the answer
# (closing with unread data makes the peer see a reset instead of the status).
_DRAIN_LIMIT_BYTES = 256 * 2**20


@dataclass(frozen=True)
class ServerConfig:
    """Settings of `vtcr serve` (JSON round-trip: ServerConfig(**json.loads(s)))."""

    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str = "vtcr"
    max_request_bytes: int = 32 * 2**20
    max_decode_pixels: int = 64 * 2**20  # per image, from its header; guards against decompression bombs
    default_max_tokens: int = 1024
    max_tokens_limit: int = 32768
    max_queue: int = 64
    read_timeout_s: float = 60.0  # a client that stops sending is dropped after this
    prefix_cache: bool = True  # reuse the KV of a conversation's earlier prompt (see conversation_key)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        return cls(**json.loads(text))


class RequestError(Exception):
    """A request the server refuses: HTTP status plus the OpenAI error fields."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def payload(self) -> dict[str, Any]:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


# ---- request parsing (pure functions) -----------------------------------------------------------


def decode_image_url(url: Any, max_decode_pixels: int, *, param: str = "image_url") -> Any:
    """A PIL RGB image from a base64 data URL; RequestError for anything else.

    Remote (http/https) and file URLs are refused: the server has no reason to reach the network.
    """
    from PIL import Image

    if not isinstance(url, str):
        raise RequestError(400, f"{param}.url must be a string", code="invalid_image_url", param=param)
    head, comma, data = url.partition(",")
    if not head.lower().startswith("data:"):
        scheme = url.split(":", 1)[0][:20] if ":" in url else "(none)"
        raise RequestError(
            400,
            f"{param}: only inline base64 data URLs (data:image/png;base64,...) are accepted; "
            f"this server does not fetch {scheme!r} URLs",
            code="unsupported_image_url", param=param,
        )  # fmt: skip
    if not comma or not head.lower().endswith(";base64"):
        raise RequestError(400, f"{param}: data URL must be base64 (data:image/png;base64,...)",
                           code="invalid_image_url", param=param)  # fmt: skip
    mediatype = head[5:].split(";", 1)[0].strip().lower()
    if mediatype and not mediatype.startswith("image/"):
        raise RequestError(400, f"{param}: media type {mediatype!r} is not an image", code="invalid_image", param=param)
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)  # some clients wrap base64 lines
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"{param}: invalid base64 data ({exc})", code="invalid_image", param=param) from None
    try:
        img = Image.open(io.BytesIO(raw), formats=list(_IMAGE_FORMATS))
    except Exception:
        raise RequestError(
            422, f"{param}: the data is not a decodable {'/'.join(_IMAGE_FORMATS)} image ({len(raw)} bytes)",
            code="invalid_image", param=param,
        ) from None  # fmt: skip
    width, height = img.size
    if width * height > max_decode_pixels:
        raise RequestError(
            413, f"{param}: image is {width}x{height} = {width * height} pixels; this server decodes at most "
            f"{max_decode_pixels} (downscale it before sending)",
            code="image_too_large", param=param,
        )  # fmt: skip
    try:
        img.load()
        return img.convert("RGB")
    except Exception as exc:
        raise RequestError(
            422, f"{param}: the {img.format} image could not be decoded ({exc})", code="invalid_image", param=param
        ) from None


def _content_parts(content: Any, where: str, max_decode_pixels: int) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(400, f"{where}.content must be a string or a list of parts", param=f"{where}.content")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        param = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise RequestError(400, f"{param} must be an object", param=param)
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise RequestError(400, f"{param}.text must be a string", param=param)
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            parts.append({"type": "image", "image": decode_image_url(url, max_decode_pixels, param=param)})
        else:
            raise RequestError(
                400, f"{param}: unsupported part type {kind!r} (text and image_url only)", param=param,
                code="unsupported_content",
            )  # fmt: skip
    return parts


def _text_of(content: str | list[dict[str, Any]], where: str) -> str:
    if isinstance(content, str):
        return content
    if any(p["type"] != "text" for p in content):
        raise RequestError(400, f"{where}: a message to continue must be text only", param=where)
    return "".join(p["text"] for p in content)


def _number(body: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RequestError(400, f"{key} must be a number in [{low:g}, {high:g}], got {value!r}", param=key)
    return float(value)


def _max_tokens(body: Mapping[str, Any], config: ServerConfig) -> int:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(key)
    if value is None:
        return config.default_max_tokens
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= config.max_tokens_limit:
        raise RequestError(400, f"{key} must be an integer in [1, {config.max_tokens_limit}], got {value!r}", param=key)
    return value


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    if body.get("stream"):
        raise RequestError(400, "stream=true is not supported by vtcr serve; send stream=false", param="stream",
                           code="unsupported_parameter")  # fmt: skip
    n = body.get("n")
    if n is not None and n != 1:
        raise RequestError(400, f"n must be 1 (one completion per request), got {n!r}", param="n",
                           code="unsupported_parameter")  # fmt: skip
    for key in ("stop", "tools", "logprobs", "functions"):
        if body.get(key):
            raise RequestError(400, f"{key} is not supported by vtcr serve", param=key, code="unsupported_parameter")


def parse_chat_request(body: Any, config: ServerConfig) -> GenerationRequest:
    """Validate a decoded /v1/chat/completions JSON body into a GenerationRequest (RequestError if bad)."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != config.served_model_name:
        raise RequestError(
            404, f"model {model!r} does not exist; this server serves {config.served_model_name!r}",
            code="model_not_found", param="model",
        )  # fmt: skip
    _refuse_unsupported(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages is required: a non-empty list of {role, content} objects", param="messages")
    converted: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(400, f"{where} must be an object", param=where)
        role = message.get("role")
        if role not in _ROLES:
            raise RequestError(400, f"{where}.role must be one of {', '.join(_ROLES)}, got {role!r}", param=where)
        content = message.get("content")
        if content is None and role == "assistant":
            content = ""
        converted.append({"role": _ROLES[role], "content": _content_parts(content, where, config.max_decode_pixels)})

    prefix = ""
    continue_final = body.get("continue_final_message", False)
    add_prompt = body.get("add_generation_prompt")
    if continue_final:
        if add_prompt:
            raise RequestError(400, "continue_final_message and add_generation_prompt cannot both be true",
                               param="add_generation_prompt")  # fmt: skip
        if converted[-1]["role"] != "assistant":
            raise RequestError(400, "continue_final_message needs an assistant message last", param="messages")
        prefix = _text_of(converted.pop()["content"], f"messages[{len(messages) - 1}]")
        if not converted:
            raise RequestError(400, "messages needs at least one message before the one to continue", param="messages")
    elif add_prompt is False:
        raise RequestError(400, "add_generation_prompt=false is supported only with continue_final_message=true",
                           param="add_generation_prompt")  # fmt: skip

    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(400, f"seed must be an integer, got {seed!r}", param="seed")
    return GenerationRequest(
        messages=converted,
        max_new_tokens=_max_tokens(body, config),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        seed=seed,
        assistant_prefix=prefix,
    )


def conversation_key(messages: list[dict[str, Any]]) -> str:
    """A prefix-cache key from the roles and text of `messages`, images left out.

    Successive VTC-R1 rounds of one problem send the same text (system prompt, question) with more
    page images, so they share a key and the backend prefills only the new pages. The backend
    checks token ids and image digests before reusing anything, so a shared key is never wrong.
    """
    def text(content: Any) -> Any:
        return content if isinstance(content, str) else [p["text"] for p in content if p["type"] == "text"]

    texts = [(m["role"], text(m["content"])) for m in messages]
    return "serve:" + hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode("utf-8")).hexdigest()


def completion_response(result: GenerationResult, model: str, request_id: str, created: int) -> dict[str, Any]:
    """The OpenAI chat.completion object for one result (plus vtcr's own accounting)."""
    cached = max(result.prompt_tokens - result.prefill_tokens, 0)
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.generated_tokens,
            "total_tokens": result.prompt_tokens + result.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
        "vtcr": {
            "vision_tokens": result.vision_tokens,
            "prefill_tokens": result.prefill_tokens,
            "seconds": round(result.seconds, 6),
            "preprocess_seconds": round(result.preprocess_seconds, 6),
        },
    }


# ---- the application (no sockets) --------------------------------------------------------------


class ChatApp:
    """Routes requests to the backend. One generation at a time; at most `max_queue` running or waiting."""

    def __init__(self, backend: Backend, config: ServerConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.config = config
        self._clock = clock
        self._generate_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._waiting = 0

    def model_entry(self) -> dict[str, Any]:
        """The served model as `/v1/models` lists it, plus what vtcr knows of it: the render config
        of the pages it was trained to read (the openai backend renders optical memory with it)."""
        entry: dict[str, Any] = {"id": self.config.served_model_name, "object": "model", "created": 0, "owned_by": "vtcr"}
        render = getattr(self.backend, "render_config", None)
        if render is not None:
            from vtcr.render import preset_name

            entry["vtcr"] = {"render_preset": preset_name(render), "render_config": render.to_dict()}
        opens = getattr(self.backend, "prompt_opens", None)
        if isinstance(opens, str):  # what the model's generation prompt opens (the engine needs it for round 1)
            entry.setdefault("vtcr", {})["prompt_opens"] = opens
        return entry

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model_entry()]}

    def chat(self, raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        request = parse_chat_request(body, self.config)
        if self.config.prefix_cache:
            request = replace(request, prefix_key=conversation_key(request.messages))
        with self._count_lock:
            if self._waiting >= self.config.max_queue:
                raise RequestError(503, f"server busy: {self._waiting} requests queued; retry later", code="overloaded")
            self._waiting += 1
        try:
            with self._generate_lock:
                result = self.backend.generate(request)
        except ValueError as exc:  # the library's "bad input" (e.g. prompt too long, extreme aspect ratio)
            raise RequestError(400, str(exc), code="invalid_request") from None
        except Exception as exc:
            message = f"generation failed: {type(exc).__name__}: {exc}"
            raise RequestError(500, message, code="generation_failed") from exc
        finally:
            with self._count_lock:
                self._waiting -= 1
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        return completion_response(result, self.config.served_model_name, request_id, int(self._clock()))


# ---- HTTP glue ----------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    server_version = "vtcr-serve"
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.app.config.read_timeout_s
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (BaseHTTPRequestHandler's name)
        sys.stderr.write(f"vtcr serve: {self.address_string()} {format % args}\n")

    def _send_json(self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (malformed request line, headers too long, unknown method) as JSON."""
        self.close_connection = True
        short = self.responses.get(code, ("error",))[0]
        self._send_error(RequestError(code, message or short, code=short.lower().replace(" ", "_")))

    def _send_error(self, error: RequestError) -> None:
        headers = {"Retry-After": "1"} if error.status == 503 else None
        self._send_json(error.status, error.payload(), headers)

    def _content_length(self) -> int:
        """The declared body size; RequestError when missing, malformed or above the limit."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(
                411, "chunked request bodies are not supported; send Content-Length", code="length_required"
            )
        value = self.headers.get("Content-Length")
        if value is None:
            raise RequestError(411, "Content-Length is required", code="length_required")
        try:
            length = int(value)
        except ValueError:
            length = -1
        if length < 0:
            raise RequestError(400, f"invalid Content-Length {value!r}")
        limit = self.server.app.config.max_request_bytes
        if length > limit:
            raise RequestError(
                413, f"request body is {length} bytes; the limit is {limit} bytes (--max-request-mb)",
                code="request_too_large",
            )  # fmt: skip
        return length

    def handle_expect_100(self) -> bool:
        # Answer "Expect: 100-continue" with the 413 itself, before the client sends the body.
        try:
            self._content_length()
        except RequestError as error:
            if error.status == 413:
                self.close_connection = True
                self._send_error(error)
                return False
        return super().handle_expect_100()

    def _drain(self, length: int) -> None:
        """Read and drop up to `length` body bytes, so that the client can read our answer."""
        left = min(length, _DRAIN_LIMIT_BYTES)
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self._path()
        if path == "/health":
            self._send_json(200, {"status": "ok"})
        elif path == f"{API_PREFIX}/models":
            self._send_json(200, self.server.app.models())
        elif path.startswith(f"{API_PREFIX}/models/"):
            name = unquote(path[len(f"{API_PREFIX}/models/"):])
            if name == self.server.app.config.served_model_name:
                self._send_json(200, self.server.app.model_entry())
            else:
                self._send_error(RequestError(404, f"the model {name!r} does not exist", code="model_not_found", param="model"))
        elif path == f"{API_PREFIX}/chat/completions":
            self._send_error(RequestError(405, "use POST for /v1/chat/completions", code="method_not_allowed"))
        else:
            self._send_error(RequestError(404, f"no such endpoint: GET {path}", code="not_found"))

    def do_POST(self) -> None:  # noqa: N802
        path = self._path()
        try:
            length = self._content_length()
        except RequestError as error:
            declared = self.headers.get("Content-Length", "")
            self.close_connection = True
            self._send_error(error)  # answered before the body is read
            if error.status == 413 and declared.isdigit():
                self.wfile.flush()
                self._drain(int(declared))
            return
        raw = self.rfile.read(length)
        if len(raw) < length:  # the client went away mid-body
            self.close_connection = True
            return
        if path != f"{API_PREFIX}/chat/completions":
            status = 405 if path in ("/health", f"{API_PREFIX}/models") else 404
            message = f"use GET for {path}" if status == 405 else f"no such endpoint: POST {path}"
            self._send_error(RequestError(status, message, code="method_not_allowed" if status == 405 else "not_found"))
            return
        try:
            payload = self.server.app.chat(raw)
        except RequestError as error:
            if error.status >= 500:
                self.log_error("%s", error.message)
            self._send_error(error)
            return
        self._send_json(200, payload)

    def _method_not_allowed(self) -> None:
        self.close_connection = True  # any body stays unread
        self._send_error(RequestError(405, f"method {self.command} is not allowed", code="method_not_allowed"))

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # an abandoned connection never blocks shutdown

    app: ChatApp  # set before serving

    def __init__(self, config: ServerConfig) -> None:
        try:
            super().__init__((config.host, config.port), _Handler)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None


def make_server(backend: Backend, config: ServerConfig) -> ThreadingHTTPServer:
    """A bound (not yet serving) HTTP server; `config.port` 0 picks a free port (see server_address)."""
    httpd = _Server(config)
    httpd.app = ChatApp(backend, config)
    return httpd


def server_url(httpd: ThreadingHTTPServer) -> str:
    host, port = httpd.server_address[:2]
    host = f"[{host}]" if ":" in str(host) else host
    return f"http://{host}:{port}{API_PREFIX}"


def _announce(message: str) -> None:
    print(message, flush=True)  # flushed: scripts and tests wait for the listening line


def run_server(httpd: ThreadingHTTPServer, *, announce: Callable[[str], None] = _announce) -> None:
    """Serve until SIGINT or SIGTERM, then stop accepting, close the socket and return.

    Requests still generating when the signal arrives are abandoned (daemon threads).
    """
    stop = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    try:
        thread.start()
        announce(f"vtcr serve: listening on {server_url(httpd)} (Ctrl-C to stop)")
        while not stop.wait(0.5) and thread.is_alive():
            pass
        announce("vtcr serve: shutting down")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(
    model_path: str,
    config: ServerConfig,
    *,
    device: str | None = None,
    dtype: str | None = None,
    max_image_pixels: int | None = None,
    announce: Callable[[str], None] = _announce,
) -> None:
    """Load `model_path` with the transformers backend and serve it until SIGINT/SIGTERM.

    max_image_pixels: cap on each image's resized area; default the checkpoint's vtcr.json value,
    else the family's processor maximum.
    """
    from .transformers_backend import TransformersBackend

    # Bind first: a taken port fails in a second, not after the model has loaded.
    httpd = _Server(config)
    try:
        kwargs: dict[str, Any] = {"name": config.served_model_name, "prefix_cache": config.prefix_cache}
        if max_image_pixels is not None:
            kwargs["max_image_pixels"] = max_image_pixels
        backend = TransformersBackend.from_pretrained(model_path, device=device, dtype=dtype, **kwargs)
    except BaseException:
        httpd.server_close()
        raise
    httpd.app = ChatApp(backend, config)
    run_server(httpd, announce=announce)
