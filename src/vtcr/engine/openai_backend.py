"""The `openai` backend: chat completions over HTTP against any OpenAI-compatible server.

Works with `vllm serve`, SGLang (`python -m sglang.launch_server`) and `vtcr serve`; nothing of
theirs is imported. Only the standard library is used (http.client), so the backend runs anywhere.

    backend = OpenAIBackend("http://127.0.0.1:8000/v1", "Qwen/Qwen3-VL-8B-Instruct", concurrency=32)
    result = backend.generate(GenerationRequest(messages, max_new_tokens=8192, seed=0))

Wire format. Image parts ({"type": "image", "image": PIL}) become
{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}} (deterministic PNG bytes
from `vtcr.render.png_bytes`, encoded once per image object). A non-empty `assistant_prefix` is
sent as a trailing assistant message with ``continue_final_message: true`` and
``add_generation_prompt: false``: vLLM's chat-completions extension (recent SGLang and `vtcr serve`
accept it too) that continues that message instead of opening a new turn. A server without it
would answer after the prefix as a new turn, so use such a server only without a prefix (the
`text` mode needs one). `max_new_tokens` is sent as `max_tokens`, which all three accept.

`timeout_s` must exceed the slowest whole generation (responses are not streamed): a timeout is
retried, and the retry generates again from the start.

Start vLLM without `--reasoning-parser`: the loop reads `<think>...</think>` from the content
itself; a reasoning parser moves it to `reasoning_content` (kept in `extra`, never merged back).

Failures. Each attempt has a socket timeout (`timeout_s` bounds every connect/send/read wait, not
the whole response). Connection errors (refused, reset, closed mid-response), timeouts, HTTP 5xx
and 429 are retried up to `max_retries` times with exponential backoff and jitter; the jitter is
a hash of (jitter_seed, request, attempt), so delays are reproducible yet differ across requests.
Other 4xx fail at once. Either way `BackendError` is raised naming the URL, the status and the
server's own message. At most `concurrency` requests are in flight at once across all threads
that share the backend; a request waiting out a backoff gives its slot to others.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import math
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from .backend import GenerationRequest, GenerationResult

# Statuses worth another try: overload (429), server errors (5xx).
RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))
# Families whose image-token arithmetic vtcr.tokens knows, matched in a lowercased model name.
_FAMILY_HINTS = (
    ("qwen3-vl", "qwen3-vl"),
    ("qwen3_vl", "qwen3-vl"),
    ("qwen2.5-vl", "qwen2.5-vl"),
    ("qwen2_5_vl", "qwen2.5-vl"),
    ("qwen2-vl", "qwen2-vl"),
    ("glm-4.1v", "glm-4.1v"),
    ("glm4v", "glm-4.1v"),
    ("glyph", "glm-4.1v"),
    ("vtc-r1", "glm-4.1v"),  # the paper's released checkpoints are Glyph fine-tunes
)


class BackendError(RuntimeError):
    """A generation request failed for good (after its retries, or at once for a client error).

    `url` is the endpoint, `status` the last HTTP status (None for a connection problem or timeout),
    `attempts` how many requests were sent, `retryable` whether the last failure was of the
    retried kind (so the retries ran out rather than the request being refused).
    """

    def __init__(
        self, message: str, *, url: str, status: int | None = None, attempts: int = 1, retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.attempts = attempts
        self.retryable = retryable


@dataclass(frozen=True)
class _Failure:
    """One failed attempt: what to report and whether to try again."""

    message: str
    status: int | None
    retryable: bool
    retry_after_s: float | None = None


def chat_completions_url(base_url: str) -> str:
    """`{base}/v1/chat/completions` for a base URL given with or without the `/v1` suffix."""
    base = base_url.strip().rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
    if base.endswith("/chat/completions"):
        return base
    if not parts.path.endswith("/v1"):
        base += "/v1"
    return base + "/chat/completions"


def infer_family(model: str) -> str | None:
    """The vision family (vtcr.tokens spelling) a model name points to, or None when unsure."""
    name = model.lower()
    for hint, fam in _FAMILY_HINTS:
        if hint in name:
            return fam
    return None


def backoff_delay(attempt: int, base_s: float, cap_s: float, key: str) -> float:
    """Seconds to wait before retry number `attempt` (0-based): "equal jitter" exponential backoff.

    Half of min(cap, base*2^attempt) is fixed, the other half scaled by a uniform number derived
    from `key` and `attempt`, so the same request waits the same, and different requests spread out.
    """
    ceiling = min(cap_s, base_s * (2.0**attempt))
    digest = hashlib.sha256(f"{key}:{attempt}".encode()).digest()
    unit = int.from_bytes(digest[:8], "big") / 2.0**64
    return ceiling * (0.5 + 0.5 * unit)


def _retry_after(headers: http.client.HTTPMessage) -> float | None:
    value = headers.get("Retry-After")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:  # an HTTP date; rare from inference servers
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _server_message(body: bytes) -> str:
    """The server's error text: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the raw body."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if "message" in data:
            return str(data["message"])
        if "detail" in data:
            return str(data["detail"])
    return text[:500]


class _DataUrlCache:
    """PNG data URLs of PIL images, computed once per live image object.

    The loop resends every earlier page each round; encoding a page costs ~30 ms, so it is done
    once. Entries are keyed by id() and dropped when their image is garbage-collected.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._urls: dict[int, tuple[weakref.ref, str]] = {}

    def _forget(self, key: int) -> None:
        with self._lock:
            self._urls.pop(key, None)

    def get(self, image: Any) -> str:
        from vtcr.render import png_bytes

        key = id(image)
        with self._lock:
            hit = self._urls.get(key)
        if hit is not None and hit[0]() is image:
            return hit[1]
        url = "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")
        with self._lock:
            self._urls[key] = (weakref.ref(image), url)
        weakref.finalize(image, self._forget, key)
        return url


class OpenAIBackend:
    """Backend over an OpenAI-compatible `/v1/chat/completions` endpoint (see the module doc).

    base_url: "http://host:port" or "http://host:port/v1". model: the served model name (also
    this backend's `name`). vision_family: for the `vision_tokens` of each result (the API does not
    report them; vtcr serve does): "auto" infers it from the model name, None disables (0 is
    recorded). max_image_pixels: the server's image cap when it is not the family default.
    extra_body: fields merged into every request (e.g. {"top_k": 20, "skip_special_tokens": False}).
    render_config: the pages the served model was trained to read (preset name, JSON file or
    RenderConfig); None asks the server once (`vtcr serve` reports its model's in `GET
    /v1/models/{id}`; vLLM and SGLang report none, and the engine then warns and renders the paper's
    layout). concurrency: requests in flight at once (the engine reads it too, to size its pool).
    prompt_opens: what the served chat template's generation prompt already writes of the model's
    turn (``"<think>\n"`` for Qwen3-VL Thinking); None asks the server (`vtcr serve` reports it;
    vLLM and SGLang do not, so give it for such a template there), else "".
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        concurrency: int = 8,
        jitter_seed: int = 0,
        vision_family: str | None = "auto",
        max_image_pixels: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
        render_config: Any = None,
        prompt_opens: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not model:
            raise ValueError("model must name the served model (see GET /v1/models)")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if backoff_s < 0 or backoff_max_s < 0:
            raise ValueError("backoff_s and backoff_max_s must be >= 0")
        self.url = chat_completions_url(base_url)
        self.name = model
        self.api_key = api_key
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.concurrency = int(concurrency)
        self.jitter_seed = jitter_seed
        if vision_family == "auto":
            vision_family = infer_family(model)
        if vision_family is not None:
            from vtcr.tokens import canonical_family

            vision_family = canonical_family(vision_family)
        self.vision_family = vision_family
        self.max_image_pixels = max_image_pixels
        self.extra_body = dict(extra_body or {})
        from vtcr.render import render_config as _as_render_config

        self._render_config = _as_render_config(render_config)
        self._asked_server = self._render_config is not None
        self._prompt_opens = prompt_opens
        self._info_asked, self._info = False, None
        self._info_lock = threading.Lock()
        self._sleep = sleep
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._images = _DataUrlCache()
        parts = urlsplit(self.url)
        self._scheme, self._netloc, self._path = parts.scheme, parts.netloc, parts.path

    # ---- what the server says about its model ------------------------------------------------

    @property
    def render_config(self):
        """The served model's render config (the engine reads it): the one given, else what the
        server reports for the model (asked once), else None."""
        with self._info_lock:
            if not self._asked_server:
                self._asked_server = True
                info = self._server_info()
                vtcr_info = info.get("vtcr") if isinstance(info, dict) else None
                reported = vtcr_info.get("render_config") if isinstance(vtcr_info, dict) else None
                if isinstance(reported, dict):
                    from vtcr.render import render_config

                    self._render_config = render_config(reported)
        return self._render_config

    @property
    def prompt_opens(self) -> str:
        """What the served template's generation prompt opens (the engine reads it): the one given,
        else what the server reports (asked once), else ""."""
        with self._info_lock:
            if self._prompt_opens is None:
                info = self._server_info()
                vtcr_info = info.get("vtcr") if isinstance(info, dict) else None
                reported = vtcr_info.get("prompt_opens") if isinstance(vtcr_info, dict) else None
                self._prompt_opens = reported if isinstance(reported, str) else ""
        return self._prompt_opens

    def _server_info(self) -> dict[str, Any] | None:
        """`model_info()`, asked once for both render_config and prompt_opens (call with _info_lock held)."""
        if not self._info_asked:
            self._info_asked, self._info = True, self.model_info()
        return self._info

    def model_info(self) -> dict[str, Any] | None:
        """`GET /v1/models/{model}` (else the model's entry in `GET /v1/models`), or None when the
        server answers neither. One attempt each: this is metadata, not generation."""
        base = self._path.rsplit("/chat/completions", 1)[0]
        for path in (f"{base}/models/{quote(self.name, safe='')}", f"{base}/models"):
            data, failure = self._request("GET", path, None, expect_choices=False)
            if data is None:
                continue
            if data.get("object") == "list":
                entry = next((m for m in data.get("data") or [] if isinstance(m, dict) and m.get("id") == self.name), None)
                if entry is not None:
                    return entry
                continue
            return data
        return None

    # ---- request building -------------------------------------------------------------------

    def _wire_content(self, content: Any, images: list[Any]) -> Any:
        if isinstance(content, str) or content is None:
            return content
        parts = []
        for part in content:
            kind = part.get("type")
            if kind == "image" or (kind is None and "image" in part):
                image = part["image"]
                if not hasattr(image, "save"):
                    raise ValueError(f"image parts must carry a PIL image, got {type(image).__name__}")
                images.append(image)
                parts.append({"type": "image_url", "image_url": {"url": self._images.get(image)}})
            elif kind in ("text", "image_url"):
                parts.append(dict(part))
            else:
                raise ValueError(f"unsupported message part type {kind!r} (use text or image parts)")
        return parts

    def build_body(self, request: GenerationRequest) -> tuple[dict[str, Any], list[Any]]:
        """The JSON body for `request` and the PIL images it carries (in prompt order)."""
        images: list[Any] = []
        messages = [
            {**{k: v for k, v in m.items() if k != "content"}, "content": self._wire_content(m.get("content"), images)}
            for m in request.messages
        ]
        body: dict[str, Any] = {
            **self.extra_body,
            "model": self.name,
            "messages": messages,
            "max_tokens": int(request.max_new_tokens),
            "temperature": float(request.temperature),
            "top_p": float(request.top_p),
            "stream": False,
        }
        if request.seed is not None:
            body["seed"] = int(request.seed)
        if request.assistant_prefix:
            messages.append({"role": "assistant", "content": request.assistant_prefix})
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        return body, images

    # ---- one HTTP attempt -------------------------------------------------------------------

    def _post(self, payload: bytes) -> tuple[dict[str, Any] | None, _Failure | None]:
        return self._request("POST", self._path, payload)

    def _request(
        self, method: str, path: str, payload: bytes | None, *, expect_choices: bool = True
    ) -> tuple[dict[str, Any] | None, _Failure | None]:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = cls(self._netloc, timeout=self.timeout_s)
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            status = response.status
            retry_after = _retry_after(response.headers)
        except TimeoutError:
            return None, _Failure(f"no response within {self.timeout_s:g} s (timeout)", None, True)
        except (OSError, http.client.HTTPException) as exc:
            # Refused, reset, closed without a response, or a truncated body.
            text = str(exc) or "no details"
            return None, _Failure(f"connection error: {type(exc).__name__}: {text}", None, True)
        finally:
            conn.close()
        if status != 200:
            message = f"HTTP {status}: {_server_message(raw)}"
            return None, _Failure(message, status, status in RETRY_STATUSES, retry_after)
        try:
            data = json.loads(raw)
        except ValueError:
            snippet = raw[:200].decode("utf-8", errors="replace")
            return None, _Failure(f"HTTP 200 with a body that is not JSON: {snippet!r}", status, False)
        if not isinstance(data, dict) or (expect_choices and not data.get("choices")):
            return None, _Failure(f"HTTP 200 without choices: {str(data)[:200]}", status, False)
        return data, None

    # ---- Backend ----------------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> GenerationResult:
        t0 = time.perf_counter()
        body, images = self.build_body(request)
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        preprocess = time.perf_counter() - t0
        key = f"{self.jitter_seed}:{hashlib.sha256(payload).hexdigest()}"
        delays: list[float] = []
        queued = 0.0
        for attempt in range(self.max_retries + 1):
            wait_start = time.perf_counter()
            with self._slots:
                start = time.perf_counter()
                queued += start - wait_start
                data, failure = self._post(payload)
                seconds = time.perf_counter() - start
            if data is not None:
                return self._result(data, request, images, seconds, preprocess, attempt + 1, delays, queued)
            assert failure is not None
            if not failure.retryable or attempt == self.max_retries:
                tried = f" after {attempt + 1} attempts" if attempt else ""
                raise BackendError(
                    f"{self.url}: {failure.message}{tried}",
                    url=self.url, status=failure.status, attempts=attempt + 1, retryable=failure.retryable,
                )  # fmt: skip
            delay = backoff_delay(attempt, self.backoff_s, self.backoff_max_s, key)
            if failure.retry_after_s is not None:
                delay = min(max(delay, failure.retry_after_s), max(self.backoff_max_s, delay))
            delays.append(delay)
            self._sleep(delay)
        raise AssertionError("unreachable")

    def _vision_tokens(self, images: list[Any], data: dict[str, Any]) -> int:
        # vtcr serve reports the exact count; OpenAI's usage has no such field.
        reported = data.get("vtcr")
        if isinstance(reported, dict) and isinstance(reported.get("vision_tokens"), int):
            return reported["vision_tokens"]
        if self.vision_family is None:
            return 0
        from vtcr.tokens import vision_tokens

        return sum(vision_tokens(img, self.vision_family, self.max_image_pixels) for img in images)

    def _result(
        self,
        data: dict[str, Any],
        request: GenerationRequest,
        images: list[Any],
        seconds: float,
        preprocess: float,
        attempts: int,
        delays: list[float],
        queued: float,
    ) -> GenerationResult:
        choice = data["choices"][0]
        message = choice.get("message") or {}
        text = message.get("content") or ""
        usage = data.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
        extra: dict[str, Any] = {
            "attempts": attempts,
            "retry_delays_s": delays,
            "queue_seconds": queued,
            "id": data.get("id"),
            "raw_finish_reason": choice.get("finish_reason"),
        }
        if not usage:
            extra["usage_missing"] = True
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if reasoning:
            extra["reasoning_content"] = reasoning
        if cached:
            extra["cached_tokens"] = cached
        finish = choice.get("finish_reason") or "stop"
        return GenerationResult(
            text=text,
            generated_tokens=int(usage.get("completion_tokens") or 0),
            prompt_tokens=prompt,
            prefill_tokens=max(prompt - cached, 0),
            vision_tokens=self._vision_tokens(images, data),
            finish_reason=str(finish),
            seconds=seconds,
            preprocess_seconds=preprocess,
            extra=extra,
        )

    def release(self, prefix_key: str) -> None:
        """Nothing to forget: the server manages its own prefix cache."""
