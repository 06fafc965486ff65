"""`vtcr serve`: an OpenAI-compatible chat-completions server over one in-process backend.

For CPU users without vLLM, and the real server the `openai` backend is tested against. Standard
library only (http.server); the model runs through `TransformersBackend`.

Endpoints
  GET  /health                 {"status": "ok"} (never needs the API key)
  GET  /stats                  completions in flight, and completed / cancelled / failed counts
  GET  /v1/models              the one served model (`max_model_len`, plus vtcr's render config of
                               the model and `prompt_opens`, what its generation prompt opens)
  GET  /v1/models/{id}         that model alone (404 for any other id)
  POST /v1/chat/completions    chat completions, streaming (server-sent events) or not

Requests. `messages` with roles system/developer/user/assistant; content a string or a list of
{"type": "text"} and {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}
parts (PNG, JPEG or WebP). Only inline base64 data URLs are accepted: the server never fetches a
remote or file URL. Parameters honoured (everything else is refused with a 400 naming it, never
ignored; see `SUPPORTED_PARAMETERS` and `NO_OP_VALUES`):
  model (optional; must name the served model); max_tokens / max_completion_tokens (default: what
  is left of the context; generation also stops at the context length, finish_reason "length");
  temperature (default 1.0; 0 is greedy); top_p; seed; n (several completions of one prompt:
  choice i is sampled with seed + i, or unseeded when no seed is given); stop (a string or up to 4);
  logprobs / top_logprobs (of the model's raw distribution, before temperature and filtering);
  stream / stream_options.include_usage; vLLM's top_k, repetition_penalty, continue_final_message
  and add_generation_prompt (the trailing assistant message is continued instead of a new turn).
  frequency_penalty / presence_penalty 0, an empty logit_bias, response_format {"type": "text"},
  tools [] / tool_choice "none" and `user` change nothing and are accepted.

Streaming (stream=true): `data: {chat.completion.chunk}` lines, the first of each choice with
delta.role, then delta.content pieces, then a chunk with its finish_reason (and, with logprobs,
that choice's logprobs.content); with stream_options.include_usage every chunk has "usage": null
and one last chunk with empty choices carries the usage; the stream ends with `data: [DONE]`.
A failure after the stream has started is sent as a `data: {"error": ...}` line before [DONE].
The status line waits for the first piece of output, so refusals that need the prompt (context
length) still get their 4xx status.

Limits. Body size (`max_request_bytes`, 413 before the body is read); images per request
(`max_images`, 400); pixels per image from its header (`max_decode_pixels`, 413 before decoding:
decompression bombs); the context length (`max_model_len`, else the model's; a prompt that leaves
no room gets 400 naming its length and the limit, before any model compute); a per-request time
limit (`request_timeout_s`, counted from arrival; 504 and the generation cancelled); at most
`max_queue` completions running or waiting, beyond that 503 with Retry-After. Images larger than
the model's pixel cap (`--max-image-pixels`, else the checkpoint's vtcr.json, else the family's
processor maximum) are downscaled by the processor, aspect ratio kept; `usage.prompt_tokens` and
`vtcr.vision_tokens` count the resized image.

Concurrency. Connections are handled on threads; up to `max_concurrency` (default: the backend's
`concurrency` attribute) generate calls run at once, so a batching backend batches concurrent
requests. A client that disconnects (the socket polled while it waits; a failed write while
streaming) has its generation cancelled through `GenerationRequest.cancel`, which the backend checks
every decode step. SIGTERM / SIGINT: stop accepting, give in-flight requests `shutdown_grace_s` to
finish, cancel the rest, answer them, exit.

Authentication. With `api_key` (--api-key or VTCR_API_KEY), every /v1 request needs
`Authorization: Bearer KEY` (401 otherwise), as with vLLM. The default bind is 127.0.0.1.

Responses are OpenAI chat.completion objects with `usage` (prompt_tokens include the image tokens,
counted once for n choices; prompt_tokens_details.cached_tokens = prompt tokens the backend reused)
and a `vtcr` field with vision_tokens, prefill_tokens and timings. Errors are {"error": {"message",
"type", "param", "code"}}: 400 malformed or invalid request, 401 API key, 404 unknown path or model,
405 wrong method, 411 missing Content-Length, 413 body or image too large, 422 image data that does
not decode, 503 queue full or shutting down, 504 time limit, 500 generation failed. Malformed HTTP
(a garbage request line, too many headers) gets a real status line and the same JSON.

Prefix cache: requests whose messages have the same roles and text (a problem's successive rounds,
which only add page images) share a cache slot in the backend, so only the new part of the prompt
is prefilled; `usage.prompt_tokens_details.cached_tokens` says how much was reused, as vLLM does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import queue
import select
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from .backend import Backend, ContextLengthError, GenerationRequest, GenerationResult

API_PREFIX = "/v1"
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
# Most bytes read and thrown away after answering 413, so that the client can read the answer
# (closing with unread data makes the peer see a reset instead of the status).
_DRAIN_LIMIT_BYTES = 256 * 2**20
MAX_STOP = 4
MAX_N = 16
MAX_TOP_LOGPROBS = 20
_POLL_S = 0.02  # how often a waiting handler checks its client, the time limit and the job

SUPPORTED_PARAMETERS = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "n", "stop",
    "logprobs", "top_logprobs", "stream", "stream_options", "top_k", "repetition_penalty",
    "continue_final_message", "add_generation_prompt", "user",
})  # fmt: skip
# OpenAI parameters vtcr does not implement, accepted only with the value that changes nothing.
NO_OP_VALUES: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logit_bias": ({},),
    "response_format": ({"type": "text"},),
    "tools": ([],),
    "tool_choice": ("none",),
    "parallel_tool_calls": (True, False),
    "functions": ([],),
}


@dataclass(frozen=True)
class ServerConfig:
    """Settings of `vtcr serve` (JSON round-trip: ServerConfig(**json.loads(s)))."""

    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str = "vtcr"
    max_request_bytes: int = 32 * 2**20
    max_decode_pixels: int = 64 * 2**20  # per image, from its header; guards against decompression bombs
    max_images: int = 64  # per request
    default_max_tokens: int | None = None  # None: what is left of the context
    max_model_len: int | None = None  # cap on the context length (prompt + output); None: the model's
    max_queue: int = 64  # completions running or waiting; more get 503
    max_concurrency: int | None = None  # generate calls at once; None: the backend's `concurrency`
    request_timeout_s: float = 600.0  # from arrival to the last byte; then 504 and the generation cancelled
    shutdown_grace_s: float = 10.0  # on SIGTERM, how long in-flight requests may still finish
    read_timeout_s: float = 60.0  # a client that stops sending is dropped after this
    prefix_cache: bool = True  # reuse the KV of a conversation's earlier prompt (see conversation_key)
    api_key: str | None = None  # when set, /v1 requests need "Authorization: Bearer <api_key>"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        return cls(**json.loads(text))


class RequestError(Exception):
    """A request the server refuses: HTTP status plus the OpenAI error fields."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 retry_after: int | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.retry_after = retry_after  # seconds, sent as Retry-After (503)
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


def _number(body: Mapping[str, Any], key: str, default: float, low: float, high: float, *, open_low: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high
    if bad or (open_low and value == low):
        interval = f"({low:g}, {high:g}]" if open_low else f"[{low:g}, {high:g}]"
        raise RequestError(400, f"{key} must be a number in {interval}, got {value!r}", param=key)
    return float(value)


def _integer(body: Mapping[str, Any], key: str, low: int, high: int | None, what: str = "") -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        interval = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise RequestError(400, f"{key} must be an integer {interval}{what}, got {value!r}", param=key)
    return value


def _max_tokens(body: Mapping[str, Any], config: ServerConfig, context_length: int | None) -> int:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    limit = context_length
    value = _integer(body, key, 1, limit, f" (the context length is {limit})" if limit else "")
    if value is not None:
        return value
    if config.default_max_tokens is not None:
        return config.default_max_tokens
    # What is left of the context: the backend stops at the context length.
    return context_length if context_length is not None else 2**31 - 1


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    """A 400 naming the first parameter vtcr does not implement (null counts as absent)."""
    for key, value in body.items():
        if key in SUPPORTED_PARAMETERS or value is None:
            continue
        if key in NO_OP_VALUES:
            if any(type(value) is type(ok) and value == ok for ok in NO_OP_VALUES[key]):
                continue
            allowed = " or ".join(json.dumps(v) for v in NO_OP_VALUES[key])
            message = f"{key}={json.dumps(value)[:80]} is not supported by vtcr serve (only {allowed}, which changes nothing)"
        else:
            message = f"unsupported parameter {key!r}: vtcr serve does not implement it"
        raise RequestError(400, message, param=key, code="unsupported_parameter")


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items) or len(items) > MAX_STOP:
        raise RequestError(400, f"stop must be a non-empty string or a list of at most {MAX_STOP} non-empty strings, "
                           f"got {json.dumps(value)[:80]}", param="stop")  # fmt: skip
    return tuple(items)


@dataclass(frozen=True)
class ChatCall:
    """A validated chat-completions request: what to generate, how many times, how to answer."""

    request: GenerationRequest
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False

    def choice_requests(self) -> list[GenerationRequest]:
        """One GenerationRequest per choice: seeds seed, seed + 1, ... (unseeded stay unseeded)."""
        seed = self.request.seed
        return [replace(self.request, seed=None if seed is None else seed + i) for i in range(self.n)]


def parse_chat_call(body: Any, config: ServerConfig, context_length: int | None = None) -> ChatCall:
    """Validate a decoded /v1/chat/completions JSON body (RequestError if bad or unsupported)."""
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
    n_images = sum(1 for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list)
                   for p in m["content"] if isinstance(p, dict) and p.get("type") == "image_url")  # fmt: skip
    if n_images > config.max_images:
        raise RequestError(400, f"the request has {n_images} images; this server takes at most {config.max_images} "
                           "per request (--max-images)", param="messages", code="too_many_images")  # fmt: skip
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
    n = _integer(body, "n", 1, MAX_N) or 1
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise RequestError(400, f"stream must be true or false, got {stream!r}", param="stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise RequestError(400, "stream_options is only allowed with stream=true", param="stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise RequestError(400, f"stream_options supports only include_usage, got {json.dumps(options)[:80]}",
                               param="stream_options")  # fmt: skip
        include_usage = bool(options.get("include_usage"))
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise RequestError(400, f"logprobs must be true or false, got {logprobs!r}", param="logprobs")
    top_logprobs = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top_logprobs is not None and not logprobs:
        raise RequestError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
    top_k = _integer(body, "top_k", -1, None) or 0
    request = GenerationRequest(
        messages=converted,
        max_new_tokens=_max_tokens(body, config, context_length),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, open_low=True),
        seed=seed,
        assistant_prefix=prefix,
        top_k=max(top_k, 0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, 10.0, open_low=True),
        stop=_stop(body),
        logprobs=(top_logprobs or 0) if logprobs else None,
    )
    return ChatCall(request, n=n, stream=bool(stream), include_usage=include_usage, logprobs=bool(logprobs))


def parse_chat_request(body: Any, config: ServerConfig, context_length: int | None = None) -> GenerationRequest:
    """The GenerationRequest of a /v1/chat/completions body (its first choice's)."""
    return parse_chat_call(body, config, context_length).request


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


def openai_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """A backend's per-token logprob entries as OpenAI's choice.logprobs object."""
    if entries is None:
        return None

    def item(e: dict[str, Any]) -> dict[str, Any]:
        return {"token": e["token"], "logprob": e["logprob"], "bytes": list(e["token"].encode("utf-8"))}

    return {"content": [{**item(e), "top_logprobs": [item(t) for t in e.get("top", [])]} for e in entries]}


def _usage(results: list[GenerationResult]) -> dict[str, Any]:
    prompt = results[0].prompt_tokens  # one prompt, however many choices
    completion = sum(r.generated_tokens for r in results)
    cached = max(results[0].prompt_tokens - results[0].prefill_tokens, 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}  # fmt: skip


def _vtcr_fields(results: list[GenerationResult]) -> dict[str, Any]:
    return {
        "vision_tokens": results[0].vision_tokens,
        "prefill_tokens": sum(r.prefill_tokens for r in results),
        "seconds": round(max(r.seconds for r in results), 6),
        "preprocess_seconds": round(sum(r.preprocess_seconds for r in results), 6),
    }


def completion_response(result: GenerationResult | list[GenerationResult], model: str, request_id: str, created: int,
                        *, logprobs: bool = False) -> dict[str, Any]:  # fmt: skip
    """The OpenAI chat.completion object for one result or n (plus vtcr's own accounting)."""
    results = result if isinstance(result, list) else [result]
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": r.text},
                "finish_reason": r.finish_reason,
                "logprobs": openai_logprobs(r.extra.get("logprobs")) if logprobs else None,
            }
            for i, r in enumerate(results)
        ],
        "usage": _usage(results),
        "vtcr": _vtcr_fields(results),
    }


# ---- the application (no sockets) --------------------------------------------------------------


class Job:
    """The n generations of one ChatCall, running on threads. Streaming readers take `events`:
    ("piece", i, text), ("done", i, GenerationResult), ("error", i, RequestError)."""

    def __init__(self, call: ChatCall, deadline: float) -> None:
        self.call = call
        self.deadline = deadline  # time.monotonic() after which the job is cancelled (504)
        self.cancel = threading.Event()
        self.why_cancelled = ""
        self.events: queue.Queue = queue.Queue()
        self.results: list[GenerationResult | None] = [None] * call.n
        self.error: RequestError | None = None
        self.done = threading.Event()
        self._left = call.n
        self._lock = threading.Lock()

    def stop(self, why: str) -> None:
        if not self.cancel.is_set():
            self.why_cancelled = why
            self.cancel.set()

    def _finish(self, index: int, result: GenerationResult | None, error: RequestError | None) -> None:
        with self._lock:
            if error is not None and self.error is None:
                self.error = error
                self.stop("error")  # the other choices share the prompt: they fail the same way
            self.results[index] = result
            self.events.put(("error", index, error) if error is not None else ("done", index, result))
            self._left -= 1
            if self._left == 0:
                self.done.set()


class ChatApp:
    """Routes requests to the backend: up to `concurrency` generate calls at once, at most
    `max_queue` completions running or waiting."""

    def __init__(self, backend: Backend, config: ServerConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.config = config
        self._clock = clock
        self.concurrency = max(1, int(config.max_concurrency or getattr(backend, "concurrency", 1) or 1))
        self.context_length: int | None = getattr(backend, "context_length", None)
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._count_lock = threading.Lock()
        self._waiting = 0
        self._jobs: set[Job] = set()
        self._stats = {"completed": 0, "cancelled": 0, "failed": 0, "generated_tokens": 0, "cancelled_tokens": 0}
        self.draining = False  # set on shutdown: new requests get 503

    # ---- models ----

    def model_entry(self) -> dict[str, Any]:
        """The served model as `/v1/models` lists it, plus what vtcr knows of it: the render config
        of the pages it was trained to read (the openai backend renders optical memory with it)."""
        entry: dict[str, Any] = {"id": self.config.served_model_name, "object": "model", "created": 0, "owned_by": "vtcr"}
        if self.context_length is not None:
            entry["max_model_len"] = self.context_length
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

    # ---- chat ----

    def parse(self, raw: bytes) -> ChatCall:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        call = parse_chat_call(body, self.config, self.context_length)
        if self.config.prefix_cache:
            call = replace(call, request=replace(call.request, prefix_key=conversation_key(call.request.messages)))
        return call

    def stats(self) -> dict[str, Any]:
        """What `GET /stats` shows: completions running or queued, and counts since start."""
        with self._count_lock:
            return {"in_flight": self._waiting, "concurrency": self.concurrency, **self._stats}

    def in_flight(self) -> int:
        with self._count_lock:
            return len(self._jobs)

    def cancel_all(self, why: str) -> None:
        with self._count_lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.stop(why)

    def start(self, call: ChatCall, *, arrived: float | None = None) -> Job:
        """Queue the call's n generations (503 when the queue is full or the server is stopping)."""
        start = time.monotonic() if arrived is None else arrived
        job = Job(call, start + self.config.request_timeout_s)
        with self._count_lock:
            if self.draining:
                raise RequestError(503, "the server is shutting down", code="shutting_down", retry_after=5)
            if self._waiting + call.n > self.config.max_queue:
                raise RequestError(
                    503, f"server busy: {self._waiting} completions running or queued (--max-queue "
                    f"{self.config.max_queue}); retry later", code="overloaded", retry_after=1,
                )  # fmt: skip
            self._waiting += call.n
            self._jobs.add(job)
        for i, request in enumerate(call.choice_requests()):
            on_token = (lambda piece, i=i: job.events.put(("piece", i, piece))) if call.stream else None
            request = replace(request, cancel=job.cancel, on_token=on_token)
            threading.Thread(target=self._run, args=(job, i, request), daemon=True, name=f"vtcr-gen-{i}").start()
        return job

    def _run(self, job: Job, index: int, request: GenerationRequest) -> None:
        result, error = None, None
        try:
            with self._slots:
                result = self.backend.generate(request)
        except ContextLengthError as exc:
            error = RequestError(400, str(exc), code="context_length_exceeded", param="messages")
        except ValueError as exc:  # the library's "bad input" (e.g. an extreme aspect ratio)
            error = RequestError(400, str(exc), code="invalid_request")
        except Exception as exc:
            error = RequestError(500, f"generation failed: {type(exc).__name__}: {exc}", code="generation_failed")
        finally:
            with self._count_lock:
                self._waiting -= 1
                if result is None:
                    self._stats["failed"] += 1
                else:
                    kind = "cancelled" if result.finish_reason == "cancelled" else "completed"
                    self._stats[kind] += 1
                    self._stats["generated_tokens"] += result.generated_tokens
                    if kind == "cancelled":
                        self._stats["cancelled_tokens"] += result.generated_tokens
            if result is not None and result.finish_reason == "cancelled":
                sys.stderr.write(f"vtcr serve: generation cancelled after {result.generated_tokens} tokens "
                                 f"({job.why_cancelled})\n")  # fmt: skip
            job._finish(index, result, error)
            if job.done.is_set():
                with self._count_lock:
                    self._jobs.discard(job)

    def wait(self, job: Job, client_gone: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """Block until the job ends; the chat.completion object, or RequestError (also on timeout).
        `client_gone` is polled: when it says so the generation is cancelled (and RequestError 499)."""
        while not job.done.wait(_POLL_S):
            self._watch(job, client_gone)
        return self.response(job)

    def _watch(self, job: Job, client_gone: Callable[[], bool]) -> None:
        if job.cancel.is_set():
            return
        if time.monotonic() > job.deadline:
            job.stop("timeout")
        elif client_gone():
            job.stop("disconnected")

    def refusal(self, job: Job) -> RequestError | None:
        """Why the job has no answer: its error, a time limit, a disconnect or a shutdown."""
        if job.error is not None:
            return job.error
        if job.why_cancelled == "timeout":
            return RequestError(504, f"the request took longer than the time limit of {self.config.request_timeout_s:g} s "
                                "(--request-timeout); its generation was stopped", code="timeout")  # fmt: skip
        if job.why_cancelled == "shutdown":
            return RequestError(503, "the server shut down before the generation finished", code="shutting_down",
                                retry_after=5)  # fmt: skip
        if job.why_cancelled == "disconnected":
            return RequestError(499, "the client closed the connection", code="client_closed")
        return None

    def response(self, job: Job) -> dict[str, Any]:
        refused = self.refusal(job)
        if refused is not None:
            raise refused
        results = [r for r in job.results if r is not None]
        return completion_response(results, self.config.served_model_name, f"chatcmpl-{uuid.uuid4().hex}",
                                   int(self._clock()), logprobs=job.call.logprobs)  # fmt: skip

    def chat(self, raw: bytes) -> dict[str, Any]:
        """One non-streaming request, in process (no client to watch)."""
        return self.wait(self.start(self.parse(raw)))

    def chunk(self, request_id: str, created: int, choices: list[dict[str, Any]], call: ChatCall,
              usage: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        out = {"id": request_id, "object": "chat.completion.chunk", "created": created,
               "model": self.config.served_model_name, "choices": choices}  # fmt: skip
        if call.include_usage:
            out["usage"] = usage
        return out


# ---- HTTP glue ----------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length or is chunked
    default_request_version = "HTTP/1.0"  # never HTTP/0.9: even a garbage request line gets a status line
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
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else {}
        if error.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        self._send_json(error.status, error.payload(), headers)

    def _authorized(self) -> bool:
        """True when no key is configured or the request carries it; else answers 401."""
        key = self.server.app.config.api_key
        if not key:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode()):
            return True
        what = "is missing" if not given else "is not the server's API key"
        self._send_error(RequestError(401, f"the Authorization: Bearer key {what} (vtcr serve --api-key)",
                                      code="invalid_api_key"))  # fmt: skip
        return False

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

    def _client_gone(self) -> bool:
        """True when the client closed or reset its connection (polled while its request runs)."""
        try:
            poller = select.poll()  # not select.select: that fails on descriptors above 1023
            poller.register(self.connection, select.POLLIN | select.POLLHUP | select.POLLERR)
            if not poller.poll(0):
                return False
            return self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self._path()
        if path == "/health":
            self._send_json(200, {"status": "ok"})
            return
        if path == "/stats":
            self._send_json(200, self.server.app.stats())
            return
        if path.startswith(API_PREFIX) and not self._authorized():
            return
        if path == f"{API_PREFIX}/models":
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
        arrived = time.monotonic()
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
        if path.startswith(API_PREFIX) and not self._authorized():
            return
        if path != f"{API_PREFIX}/chat/completions":
            status = 405 if path in ("/health", f"{API_PREFIX}/models") else 404
            message = f"use GET for {path}" if status == 405 else f"no such endpoint: POST {path}"
            self._send_error(RequestError(status, message, code="method_not_allowed" if status == 405 else "not_found"))
            return
        app = self.server.app
        with self.server.busy:
            try:
                job = app.start(app.parse(raw), arrived=arrived)
            except RequestError as error:
                self._send_error(error)
                return
            try:
                if job.call.stream:
                    self._stream(job)
                else:
                    self._answer(job)
            except OSError:  # the client went away while we wrote
                job.stop("disconnected")
                self.close_connection = True

    def _answer(self, job: Job) -> None:
        try:
            payload = self.server.app.wait(job, self._client_gone)
        except RequestError as error:
            self._refuse(error)
            return
        self._send_json(200, payload)

    def _refuse(self, error: RequestError) -> None:
        if error.status == 499:  # nobody to answer
            self.close_connection = True
            self.log_message("client went away; its generation was cancelled")
            return
        if error.status >= 500:
            self.log_error("%s", error.message)
        self._send_error(error)

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _event(self, payload: Mapping[str, Any] | str) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        self._write_chunk(b"data: " + text.encode("utf-8") + b"\n\n")

    def _stream(self, job: Job) -> None:
        """Server-sent events; the status line waits for the first output (or the refusal)."""
        app, call = self.server.app, job.call
        request_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(app._clock())
        started = False
        left = call.n
        while left:
            app._watch(job, self._client_gone)  # time limit and disconnects, also while pieces flow
            try:
                kind, index, payload = job.events.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if not started:
                if kind == "error" or job.cancel.is_set():
                    job.done.wait()  # the other choices stop within a step
                    refused = app.refusal(job)
                    if refused is not None:
                        self._refuse(refused)
                        return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                started = True
                for i in range(call.n):
                    role = {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None}  # fmt: skip
                    self._event(app.chunk(request_id, created, [role], call))
            if kind == "piece":
                choice = {"index": index, "delta": {"content": payload}, "logprobs": None, "finish_reason": None}
                self._event(app.chunk(request_id, created, [choice], call))
                continue
            left -= 1
            if kind == "error" or payload.finish_reason == "cancelled":
                if kind == "error" or job.why_cancelled in ("timeout", "shutdown", "error"):
                    refused = app.refusal(job)
                    if refused is not None and refused.status != 499:
                        self._event(refused.payload())
                        self._event("[DONE]")
                        self._write_chunk(b"")
                        return
                self.close_connection = True  # the client is gone: nothing more to write
                job.stop("disconnected")
                return
            logprobs = openai_logprobs(payload.extra.get("logprobs")) if call.logprobs else None
            choice = {"index": index, "delta": {}, "logprobs": logprobs, "finish_reason": payload.finish_reason}
            self._event(app.chunk(request_id, created, [choice], call))
        if call.include_usage:
            results = [r for r in job.results if r is not None]
            self._event(app.chunk(request_id, created, [], call, usage=_usage(results)))
        self._event("[DONE]")
        self._write_chunk(b"")

    def _method_not_allowed(self) -> None:
        self.close_connection = True  # any body stays unread
        self._send_error(RequestError(405, f"method {self.command} is not allowed", code="method_not_allowed"))

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed  # noqa: N815


class _Busy:
    """Counts requests being answered (a context manager), so that shutdown can wait for them."""

    def __init__(self) -> None:
        self._count = 0
        self._cond = threading.Condition()

    def __enter__(self) -> None:
        with self._cond:
            self._count += 1

    def __exit__(self, *exc: Any) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._count == 0, timeout)

    @property
    def count(self) -> int:
        return self._count


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # an idle keep-alive connection never blocks shutdown

    app: ChatApp  # set before serving

    def __init__(self, config: ServerConfig) -> None:
        self.busy = _Busy()
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


def run_server(httpd: ThreadingHTTPServer, *, announce: Callable[[str], None] = _announce,
               stop: threading.Event | None = None) -> None:  # fmt: skip
    """Serve until SIGINT or SIGTERM (or `stop` is set), then shut down cleanly: stop accepting,
    let in-flight requests finish for `shutdown_grace_s`, cancel the rest (they get 503 or the end
    of their stream), close the socket and return."""
    stop = stop or threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    app: ChatApp = httpd.app  # type: ignore[attr-defined]
    busy: _Busy = httpd.busy  # type: ignore[attr-defined]
    try:
        thread.start()
        announce(f"vtcr serve: listening on {server_url(httpd)} (Ctrl-C to stop)")
        while not stop.wait(0.2) and thread.is_alive():
            pass
        announce(f"vtcr serve: shutting down ({busy.count} requests in flight)")
    finally:
        app.draining = True
        httpd.shutdown()
        if not busy.wait_idle(app.config.shutdown_grace_s):
            app.cancel_all("shutdown")
            busy.wait_idle(10.0)  # cancelled generations stop within a decode step
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
        kwargs: dict[str, Any] = {"name": config.served_model_name, "prefix_cache": config.prefix_cache,
                                  "context_length": config.max_model_len}  # fmt: skip
        if max_image_pixels is not None:
            kwargs["max_image_pixels"] = max_image_pixels
        if config.max_concurrency is not None:  # the requests at once are the rows decoded together
            kwargs["batch_size"] = config.max_concurrency
        backend = TransformersBackend.from_pretrained(model_path, device=device, dtype=dtype, **kwargs)
    except BaseException:
        httpd.server_close()
        raise
    httpd.app = ChatApp(backend, config)
    run_server(httpd, announce=announce)
