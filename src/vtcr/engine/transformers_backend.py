"""In-process generation with transformers: batched decoding, and each problem's prompt KV cache
kept across rounds.

Threading model. `generate()` is the public entry and is thread-safe: the engine (`iter_reason`
keeps `concurrency` calls in flight) and `vtcr serve` call it from many threads. It validates the
request and renders its prompt in the caller's thread, queues it and waits. One decode thread owns
the model (started by the first waiting call, gone when nothing is queued or running): each step it
admits waiting requests while fewer than `batch_size` rows run -- prefilling each new row alone,
reusing its prefix cache -- lets every row sample its next token with its own generator, retires
rows that stopped (end of turn, stop string, length, cancel), and runs ONE forward for all the
remaining rows. Rows join and leave at any step; `batch_size=1` decodes one request at a time.
`on_token` callbacks run on the decode thread, between steps: keep them short, and never call
`generate` from one (the decode thread would wait for itself).

The batch. All rows share one DynamicCache, left-padded so that every row ends at the same cache
index: row b's real tokens are cache[b, :, pad_b:], its padding is zeros masked out by the 2-D
attention mask, and its positions are its own (text position = its own length; M-RoPE position =
that + its rope delta). A joining row's prefill cache is padded to the batch (or the batch to it);
a leaving row's KV is cut out of the batch and kept as its prefix; padding every row has is trimmed.
With one row and no padding the step is exactly the sequential loop (no mask).

What holds, batched vs alone. Attention over a padded row is mathematically the row's own
attention, but a batched matmul and a masked attention may sum in another order than a batch of
one, so logits can differ in the last bits (about 1e-6 relative in fp32). Greedy text: identical
batched or alone whenever no two top logits are that close -- asserted on tiny Qwen3-VL and GLM-4.1V
with pages (tests/test_batched_generation.py), exact in practice. Sampled text: each row draws
from its own `torch.Generator` seeded with the request's seed, one exponential vector per token
whatever else runs, so a seed gives the same text alone on every call, and batched the same
random numbers meet logits equal to within that rounding; the exponential race (`sample_token`)
does not flip on last-bit differences except for a near tie (or a token at the top-p / top-k
boundary), so batched sampled text equals alone except on such near ties (none seen in the tests).
A request without a seed is seeded from the OS and reproduces nothing.

Shared prefill. Requests with an identical prompt (same rendered text, assistant prefix included,
and the same images by content), admitted in one step or still queued when the first of them is
prefilled -- e.g. the n choices of one OpenAI request -- are prefilled once: the others start from a
copy of its cache and report prefill_tokens 0 (`extra["shared_prefill"]`).

Request fields (`GenerationRequest`). temperature (0: greedy), top_p, top_k (0: off) and
repetition_penalty (1.0: off; the logits of every prompt or output token divided when positive and
multiplied when not, as transformers and vLLM do, before temperature); order: penalty, temperature,
top-k, top-p over what top-k kept. stop: the text ends before the first stop string (finish_reason
"stop"; the token that completed it is counted). logprobs=k: `extra["logprobs"]` holds per
generated token {"id", "token", "logprob", "top": [k most likely {"id", "token", "logprob"}]}, from
the model's raw distribution (log-softmax of the logits before penalty, temperature and filters;
"token" is the token decoded alone, special tokens included). on_token: each new piece of text,
released only once it decodes to whole characters (byte-level tokens that end inside a UTF-8
character wait) and, with stop strings, held back until it cannot start one: the pieces concatenate
to the result's text. cancel: checked before every step (and before admission); a cancelled row
stops within one step with finish_reason "cancelled" and the text so far.

Prefix reuse. Round k+1 of a VTC-R1 problem sends round k's prompt with more page images inserted
before the end of the user turn. So per `prefix_key` this backend keeps the token ids and the KV
cache (`DynamicCache`) of the last prompt; the next request finds the common prefix, crops the
cache to it and prefills only the rest -- which holds the NEW images' placeholders, so only the new
images go through the image processor and the vision tower.

M-RoPE (Qwen2.5-VL, Qwen3-VL, GLM-4.1V): a token's rotary position depends on every image before
it, so positions are computed for the whole sequence with the model's own `get_rope_index` and the
suffix slice is passed (as the 4-row text+t/h/w layout `generate` itself uses); decoding continues at
text position p with M-RoPE position p + rope_delta. Prefill and decoding are a loop of our own
(seeded `torch.Generator` sampling, stop on the model's end-of-turn ids), because `generate` cannot
start from a cropped cache with images in the uncached part, nor admit rows mid-way.

Prompts are the checkpoint's own chat template over the round's system and user turns, with its
generation prompt (`vtcr.models.conventions.render_prompt`, the same text `vtcr train` builds);
`prompt_opens` is what that prompt already opened of the model's turn (``<think>\n`` for Qwen3-VL
Thinking), which the engine puts in front of the first round's text. Stop ids: the checkpoint's
generation_config ``eos_token_id`` (Qwen3-VL: 151645 ``<|im_end|>``, 151643 ``<|endoftext|>``) plus
the tokenizer's eos.

Cached prefixes are checked, never trusted: an image counts as cached only when its content digest
matches, and the token ids must match up to the reused length. The round text is decoded without
special tokens (control tokens such as an image placeholder would otherwise come back as text and
break the next prompt); `<think>` / `</think>` are plain tokens in vtcr tokenizers and stay.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .backend import ContextLengthError, GenerationRequest, GenerationResult


def image_digest(img: Any) -> str:
    """Content digest of a PIL image (mode, size, pixels): identical pages share it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{img.mode}:{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n], np.int64) != np.asarray(b[:n], np.int64))
    return int(diff[0]) if diff.size else n


def image_runs(ids: list[int], image_token_id: int) -> list[tuple[int, int]]:
    """(start, length) of each run of image placeholder tokens, in order."""
    arr = np.asarray(ids, np.int64) == image_token_id
    if not arr.any():
        return []
    edges = np.flatnonzero(np.diff(np.concatenate(([0], arr.astype(np.int8), [0]))))
    return [(int(s), int(e - s)) for s, e in zip(edges[::2], edges[1::2])]


def message_images(messages: list[dict[str, Any]]) -> list[Any]:
    """The PIL images of the image parts of `messages`, in order."""
    images = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if part.get("type") in ("image", "image_url") or "image" in part:
                img = part.get("image")
                if img is None or isinstance(img, str) or not hasattr(img, "tobytes"):
                    raise ValueError("the transformers backend needs every image part to carry a PIL image ('image')")
                images.append(img)
    return images


def top_p_floor(probs: torch.Tensor, top_p: float) -> float:
    """The smallest probability that top-p (nucleus) filtering of `probs` keeps: the kept set is the
    most likely tokens whose mass reaches `top_p` (tokens tied with the last one are kept too)."""
    if probs.device.type == "cpu":  # numpy sorts 150k floats ~20x faster than torch.sort on a CPU
        vals = np.sort(probs.numpy())[::-1]
        before = np.cumsum(vals) - vals
        return float(vals[int((before < top_p).sum()) - 1])
    vals = torch.sort(probs, descending=True).values
    before = torch.cumsum(vals, dim=0) - vals
    return float(vals[int((before < top_p).sum()) - 1])


def sample_token(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator, top_k: int = 0
) -> int:
    """One token from next-token `logits` (1-D): greedy at temperature 0, else temperature, then
    top-k (`top_k` > 0 keeps the k most likely; ties with the k-th kept), then top-p over what is left.

    Drawn as argmax(p / E) with E ~ Exp(1) i.i.d. from `generator` (an exponential race, the
    Gumbel-max trick), which samples exactly from p and, unlike inverting a cumulative sum over 150k
    tokens, does not flip on last-bit differences in p (prefix reuse vs full recompute, batched vs
    alone). Every sampled token draws one vector of E from the generator, whatever the filters.
    """
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if 0 < top_k < probs.shape[-1]:
        kth = torch.topk(probs, top_k).values[-1]
        probs = torch.where(probs >= kth, probs, 0.0)
        if top_p < 1.0:
            probs = probs / probs.sum()
    if top_p < 1.0:
        probs = torch.where(probs >= top_p_floor(probs, top_p), probs, 0.0)
    # E = -log(U), U uniform in [0, 1): the same Exp(1) race, about twice as fast on a CPU as
    # Tensor.exponential_ (150k draws per token add up when many rows sample each step)
    race = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype).log_().neg_()
    return int(torch.argmax(probs / race))


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' / vLLM's repetition penalty: the logit of every token marked in `seen` (a bool
    mask over the vocabulary: prompt and output tokens) is divided by `penalty` when positive and
    multiplied by it when not. 1.0: unchanged."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


@dataclass
class _Prefix:
    """What one conversation left behind: tokens whose KV is in `cache`, and its prompt's images."""

    ids: list[int]
    cache: Any
    digests: list[str]
    grids: list[tuple[int, int, int]]
    starts: list[int]  # first placeholder index of each image in `ids`


@dataclass
class _Prepared:
    ids: list[int]
    grids: list[tuple[int, int, int]]
    digests: list[str]
    starts: list[int]
    reuse: int  # leading tokens whose KV comes from the cache
    cache: Any  # cropped cache, or None
    pixel_values: torch.Tensor | None  # of the images whose placeholders are in ids[reuse:]
    new_grids: list[tuple[int, int, int]]
    preprocess_s: float
    delta: int = 0  # M-RoPE position minus text position after the prompt (set by _prefill)


def crop_cache(cache: Any, keep: int) -> None:
    """Cut a DynamicCache back to its first `keep` tokens (in place)."""
    extra = cache.get_seq_length() - keep
    if extra > 0:
        cache.crop(-extra)  # negative: remove that many tokens (transformers 4.x and 5.x alike)


def _cache_kv(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of every layer of a DynamicCache, each (batch, heads, tokens, head_dim)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:  # transformers 5.x
        for layer in layers:
            if "Sliding" in type(layer).__name__:
                raise ValueError("batched decoding supports full-attention caches only (this model has sliding-window layers)")
        return [(layer.keys, layer.values) for layer in layers]
    return list(zip(cache.key_cache, cache.value_cache))  # transformers 4.x


def _cache_of(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (k, v) in enumerate(kv):
        cache.update(k, v, layer)
    return cache


def _left_pad(x: torch.Tensor, n: int) -> torch.Tensor:
    return x if n == 0 else torch.cat([x.new_zeros(*x.shape[:2], n, x.shape[3]), x], dim=2)


class _Batch:
    """The running batch: one DynamicCache for all rows, left-padded so every row ends at the same
    cache index (row b's real tokens are cache[b, :, pads[b]:]); padding is masked out of attention."""

    def __init__(self) -> None:
        self.rows: list[_Row] = []
        self.pads: list[int] = []
        self.cache: Any = None
        self.length = 0  # cache tokens, padding included

    def add(self, rows: list[_Row]) -> None:
        if not rows:
            return
        lengths = [r.cache.get_seq_length() for r in rows]
        width = max([self.length, *lengths])
        parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        if self.rows:
            grow = width - self.length
            parts.append([(_left_pad(k, grow), _left_pad(v, grow)) for k, v in _cache_kv(self.cache)])
            self.pads = [p + grow for p in self.pads]
        for r, n in zip(rows, lengths):
            parts.append([(_left_pad(k, width - n), _left_pad(v, width - n)) for k, v in _cache_kv(r.cache)])
            self.pads.append(width - n)
            r.cache, r.merged = None, True
        self.cache = _cache_of([(torch.cat([p[i][0] for p in parts]), torch.cat([p[i][1] for p in parts]))
                                for i in range(len(parts[0]))])  # fmt: skip
        self.rows += rows
        self.length = width

    def remove(self, rows: list[_Row]) -> None:
        gone = {id(r) for r in rows}
        keep = [b for b, r in enumerate(self.rows) if id(r) not in gone]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.__init__()
            return
        pads = [self.pads[b] for b in keep]
        trim = min(pads)  # padding every remaining row has is dropped
        index = torch.tensor(keep, device=_cache_kv(self.cache)[0][0].device)
        self.cache = _cache_of([(k.index_select(0, index)[:, :, trim:], v.index_select(0, index)[:, :, trim:])
                                for k, v in _cache_kv(self.cache)])  # fmt: skip
        self.rows = [self.rows[b] for b in keep]
        self.pads = [p - trim for p in pads]
        self.length -= trim

    def extract(self, row: _Row, keep: int) -> Any:
        """A batch-1 cache of the first `keep` real tokens of `row` (a copy)."""
        b = next(i for i, r in enumerate(self.rows) if r is row)
        p = self.pads[b]
        return _cache_of([(k[b : b + 1, :, p : p + keep].clone(), v[b : b + 1, :, p : p + keep].clone())
                          for k, v in _cache_kv(self.cache)])  # fmt: skip

    def attention_mask(self, device: Any) -> torch.Tensor | None:
        """(rows, cache tokens + 1): 0 over each row's padding; None when no row is padded."""
        if not any(self.pads):
            return None
        pads = torch.tensor(self.pads, device=device).view(-1, 1)
        return (torch.arange(self.length + 1, device=device).view(1, -1) >= pads).long()


class _TextStream:
    """Incremental detokenisation for `on_token` and stop strings.

    A piece is released only once it decodes to complete characters (a token that ends inside a
    multi-byte UTF-8 character waits for the next), and with stop strings the last
    len(longest stop) - 1 characters are held back until they cannot start a stop string, so the
    pieces given to `on_token` always concatenate to the result's text.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...], on_token: Any) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.on_token = on_token
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.prefix = self.read = 0  # ids[prefix:read] decoded to the text already taken
        self.text = ""
        self.sent = 0
        self.stopped: str | None = None  # the text up to the first stop string, once one appeared

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _emit(self, upto: int) -> None:
        if upto > self.sent:
            piece, self.sent = self.text[self.sent : upto], upto
            if self.on_token is not None:
                self.on_token(piece)

    def push(self, token: int) -> bool:
        """Take one generated (non-stop-id) token; True when a stop string has appeared."""
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        now = self._decode(self.ids[self.prefix :])
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return False
        searched = max(0, len(self.text) - self.hold)
        self.text += now[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)
        hits = [i for i in (self.text.find(s, searched) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = self.text = self.text[: min(hits)]
            self._emit(len(self.text))
            return True
        self._emit(len(self.text) - self.hold if self.stop else len(self.text))
        return False

    def finish(self, text: str) -> None:
        """Release the rest of the final `text` (which starts with what was already released)."""
        self.text = text
        self._emit(len(text))


@dataclass
class _Job:
    """One generate call waiting for (or in) the decode thread."""

    request: GenerationRequest
    text: str  # the rendered prompt, assistant prefix included
    images: list[Any]
    digests: list[str]
    queued: float
    done: threading.Event = field(default_factory=threading.Event)
    result: GenerationResult | None = None
    error: BaseException | None = None

    @property
    def prompt_key(self) -> tuple[str, tuple[str, ...]]:
        return self.text, tuple(self.digests)


@dataclass
class _Row:
    """One request being decoded: its prompt, sampler state and output so far."""

    job: _Job
    prep: _Prepared
    generator: torch.Generator
    logits: torch.Tensor | None  # next-token logits (1-D)
    cache: Any  # its own batch-1 cache until it joins the batch
    started: float
    prefill_s: float
    shared: bool = False  # prefill shared with an identical prompt (prefill_tokens 0)
    merged: bool = False
    tokens: list[int] = field(default_factory=list)
    fed: int = 0  # generated tokens whose KV is in the cache
    seen: torch.Tensor | None = None  # vocabulary mask of prompt + output tokens (repetition penalty)
    stream: _TextStream | None = None
    logprobs: list[Any] = field(default_factory=list)
    finish: str | None = None
    stop_id: bool = False
    error: BaseException | None = None
    decode_start: float = 0.0
    widest: int = 0  # most rows in one of its decode steps

    @property
    def position(self) -> int:
        """Text position of the next token fed to the model."""
        return len(self.prep.ids) + self.fed


class TransformersBackend:
    """A loaded VLM as a `Backend`: thread-safe `generate`, up to `batch_size` requests decoded together.

    batch_size: rows decoded together, one forward per step (also `concurrency`, the generate calls
    the engine keeps in flight); 1 decodes one request at a time. prefix_cache: keep each
    `prefix_key`'s prompt KV across calls (off: prefill everything, the baseline the benchmark
    compares with). record_logprobs: put the log-probability of each sampled token under the model's
    distribution in `result.extra["logprobs"]` (a float per token; a request's `logprobs` asks for
    the full per-token records instead). max_prefixes: conversations kept at once (least recently
    used dropped first). max_image_pixels: cap on each image's resized area (`from_pretrained` takes
    the checkpoint's `vtcr.json` value, so inference sees images as training did). render_config:
    the pages the model was trained to read (`from_pretrained`: its vtcr.json; None when unknown),
    which the engine renders optical memory with. context_length: the most prompt + output tokens
    per sequence (default and upper bound: the model config's max_position_embeddings); a longer
    prompt raises `ContextLengthError` before any model call, and output stops ("length") there.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        name: str = "model",
        render_config: Any = None,
        max_image_pixels: int | None = None,
        prefix_cache: bool = True,
        max_prefixes: int = 64,
        record_logprobs: bool = False,
        batch_size: int = 8,
        context_length: int | None = None,
    ):
        inner = getattr(model, "model", model)
        if not callable(getattr(inner, "get_rope_index", None)):
            raise ValueError(
                f"{type(model).__name__} is not an M-RoPE VLM (Qwen2-VL / Qwen2.5-VL / Qwen3-VL / GLM-4.1V family): "
                "the transformers backend computes multimodal positions with its get_rope_index"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.model = model
        self.processor = processor
        self.name = name
        from vtcr.render import render_config as _as_render_config

        self.render_config = _as_render_config(render_config)
        self.prefix_cache = prefix_cache
        self.max_prefixes = max_prefixes
        self.record_logprobs = record_logprobs
        self.batch_size = batch_size
        self.concurrency = batch_size  # the engine keeps this many generate calls in flight
        text_config = getattr(model.config, "text_config", model.config)
        model_len = int(getattr(text_config, "max_position_embeddings", 0) or 0) or None
        if context_length is not None and context_length < 2:
            raise ValueError(f"context_length must be at least 2, got {context_length}")
        self.context_length = min(x for x in (context_length, model_len) if x) if (context_length or model_len) else None
        # transformers >= 5.2x names the KV cache argument `cache` (and deprecates `past_key_values`)
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self._rope_index = inner.get_rope_index
        self.device = next(model.parameters()).device
        self.image_token = processor.image_token
        self.image_token_id = int(model.config.image_token_id)
        self.merge = int(processor.image_processor.merge_size)
        self.stop_ids = self._stop_ids()
        from vtcr.models.conventions import chat_conventions
        from vtcr.models.processor import arch_of_processor

        self.conventions = chat_conventions(processor.chat_template or "", arch_of_processor(processor),
                                            source=f"the chat template of {name}")  # fmt: skip
        self.prompt_opens = self.conventions.opens
        self._size_kwargs: dict[str, Any] = {}
        if max_image_pixels is not None:
            from vtcr.models.processor import image_size_budget

            self._size_kwargs["size"] = image_size_budget(processor, max_image_pixels)
        self._lock = threading.Lock()  # held while the model runs (a decode step, or next_token_logits)
        self._prefixes: OrderedDict[str, _Prefix] = OrderedDict()
        self._prefix_lock = threading.Lock()
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()  # guards _queue and _worker
        self._worker: threading.Thread | None = None

    @classmethod
    def from_pretrained(
        cls, path_or_id: str | os.PathLike, *, device: Any = None, dtype: Any = None, **kwargs: Any
    ) -> TransformersBackend:
        """Load a checkpoint folder (or hub id): bf16 on GPU, fp32 on CPU unless `dtype` says otherwise."""
        from vtcr.models import load_model, resolve_model_path

        path = resolve_model_path(path_or_id)
        model, processor, meta = load_model(path, device=device, dtype=dtype)
        kwargs.setdefault("name", str(path_or_id))
        kwargs.setdefault("render_config", meta.render())
        kwargs.setdefault("max_image_pixels", meta.max_image_pixels)
        return cls(model, processor, **kwargs)

    def _stop_ids(self) -> frozenset[int]:
        """generation_config's eos_token_id (the model config's when it has none), plus the tokenizer's eos."""
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config):
            eos = getattr(source, "eos_token_id", None)
            ids.update([eos] if isinstance(eos, int) else (eos or []))
            if ids:
                break
        if self.processor.tokenizer.eos_token_id is not None:
            ids.add(int(self.processor.tokenizer.eos_token_id))
        return frozenset(ids)

    # ---- the Backend protocol --------------------------------------------------------------

    def release(self, prefix_key: str) -> None:
        with self._prefix_lock:
            self._prefixes.pop(prefix_key, None)

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate one reply (blocks until done; call it from as many threads as you like)."""
        job = self._job(request)  # bad requests fail here, in the caller's thread
        with self._cond:
            self._queue.append(job)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="vtcr-decode", daemon=True)
                self._worker.start()
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def next_token_logits(self, request: GenerationRequest) -> tuple[torch.Tensor, int]:
        """Logits of the first generated token and the prefill token count, computed exactly as
        `generate` computes them (reusing and then keeping this prefix_key's cache). For checks."""
        with self._lock, torch.inference_mode():
            prep = self._prepare(request)
            logits, cache = self._prefill(prep)
            self._store(request.prefix_key, request.keep_generated, prep, cache, [])
        return logits.float().cpu(), len(prep.ids) - prep.reuse

    def _job(self, request: GenerationRequest) -> _Job:
        if request.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {request.max_new_tokens}")
        if not request.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {request.temperature!r}")
        if not 0 < request.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {request.top_p!r}")
        if isinstance(request.top_k, bool) or not isinstance(request.top_k, int) or request.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0: off), got {request.top_k!r}")
        if not request.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1.0: off), got {request.repetition_penalty!r}")
        if request.logprobs is not None and (isinstance(request.logprobs, bool) or not isinstance(request.logprobs, int)
                                             or request.logprobs < 0):  # fmt: skip
            raise ValueError(f"logprobs must be None or an int >= 0, got {request.logprobs!r}")
        if isinstance(request.stop, str) or any(not isinstance(s, str) or not s for s in request.stop):
            raise ValueError(f"stop must be a sequence of non-empty strings, got {request.stop!r}")
        images = message_images(request.messages)
        from vtcr.models.conventions import render_prompt

        text = render_prompt(self.processor, request.messages, source=f"the chat template of {self.name}")
        return _Job(request=request, text=text + request.assistant_prefix, images=images,
                    digests=[image_digest(img) for img in images], queued=time.perf_counter())  # fmt: skip

    # ---- the decode thread -------------------------------------------------------------------

    def _work(self) -> None:
        """The decode thread: admit waiting requests, step the batch, retire finished rows; exits
        when nothing is waiting or running (the next generate call starts it again)."""
        batch = _Batch()
        with torch.inference_mode():
            while True:
                with self._cond:
                    room = self.batch_size - len(batch.rows)
                    jobs = [self._queue.popleft() for _ in range(min(room, len(self._queue)))]
                    if not jobs and not batch.rows:
                        self._worker = None
                        return
                new: list[_Row] = []
                try:
                    with self._lock:
                        new = self._admit(jobs, room)
                        self._step(batch, new)
                except BaseException as exc:  # a failed batched step fails every row in it
                    for row in batch.rows + [r for r in new if not r.merged and r.finish is None]:
                        self._fail(row.job, exc)
                    batch = _Batch()

    def _fail(self, job: _Job, exc: BaseException) -> None:
        if not job.done.is_set():
            job.error = exc
            job.done.set()

    def _admit(self, jobs: list[_Job], room: int) -> list[_Row]:
        """Prefill each new request alone (reusing its prefix cache). Requests with an identical
        prompt (same rendered text and images), admitted together or still waiting when it is
        prefilled, share one prefill: each follower starts from a copy of its leader's cache."""
        rows: list[_Row] = []
        leaders: dict[tuple[str, tuple[str, ...]], _Row] = {}
        pending = list(jobs)
        while pending:
            job = pending.pop(0)
            cancel = job.request.cancel
            if cancel is not None and cancel.is_set():  # cancelled while waiting: nothing computed
                self._finish_cancelled_early(job)
                continue
            started = time.perf_counter()
            leader = leaders.get(job.prompt_key)
            try:
                if leader is not None:
                    row = self._new_row(job, leader.prep, leader.logits, leader.cache, started, 0.0, shared=True)
                else:
                    prep = self._prepare(job.request, job)
                    logits, cache = self._prefill(prep)
                    row = self._new_row(job, prep, logits, cache, started, time.perf_counter() - started)
                    leaders[job.prompt_key] = row
            except Exception as exc:
                self._fail(job, exc)
                continue
            rows.append(row)
            if leader is None and len(rows) + len(pending) < room:  # identical prompts that arrived meanwhile
                with self._cond:
                    same = [j for j in self._queue if j.prompt_key == job.prompt_key][: room - len(rows) - len(pending)]
                    for j in same:
                        self._queue.remove(j)
                pending[:0] = same
        return rows

    def _new_row(self, job: _Job, prep: _Prepared, logits: torch.Tensor, cache: Any, started: float,
                 prefill_s: float, shared: bool = False) -> _Row:  # fmt: skip
        request = job.request
        generator = torch.Generator(device=self.device)
        if request.seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(request.seed))
        row = _Row(job=job, prep=prep, generator=generator, logits=logits, cache=cache, started=started,
                   prefill_s=prefill_s, shared=shared, decode_start=time.perf_counter())  # fmt: skip
        if request.repetition_penalty != 1.0:
            vocab = logits.shape[-1]
            row.seen = torch.zeros(vocab, dtype=torch.bool, device=logits.device)
            ids = torch.tensor([i for i in prep.ids if 0 <= i < vocab], dtype=torch.long, device=logits.device)
            row.seen[ids] = True
        if request.on_token is not None or request.stop:
            row.stream = _TextStream(self.processor.tokenizer, request.stop, request.on_token)
        return row

    def _step(self, batch: _Batch, new: list[_Row]) -> None:
        """One decode step: every row samples its next token from its own logits; finished rows
        leave, new rows join, and one forward over the whole batch gives everyone's next logits."""
        finished: list[_Row] = []
        for row in batch.rows + new:
            cancel = row.job.request.cancel
            if cancel is not None and cancel.is_set():
                row.finish = "cancelled"
            else:
                try:
                    self._take(row, self._sample(row))
                except Exception as exc:  # e.g. an on_token callback that raised: this row only
                    row.error = exc
            if row.finish is not None or row.error is not None:
                finished.append(row)
        for row in finished:
            self._retire(row, batch)
        batch.remove([r for r in finished if r.merged])
        batch.add([r for r in new if r.finish is None and r.error is None])
        if batch.rows:
            self._forward(batch)

    def _sample(self, row: _Row) -> int:
        request = row.job.request
        raw = row.logits.float()
        logits = raw if row.seen is None else apply_repetition_penalty(raw, row.seen, request.repetition_penalty)
        token = sample_token(logits, request.temperature, request.top_p, row.generator, request.top_k)
        if request.logprobs is not None or self.record_logprobs:
            logp = torch.log_softmax(raw, dim=-1)
            if request.logprobs is None:
                row.logprobs.append(float(logp[token]))
            else:
                row.logprobs.append(self._logprob_entry(logp, token, request.logprobs))
        return token

    def _logprob_entry(self, logp: torch.Tensor, token: int, k: int) -> dict[str, Any]:
        def piece(i: int) -> str:
            return self.processor.tokenizer.decode([i], skip_special_tokens=False)

        top = torch.topk(logp, min(k, logp.shape[-1])) if k else None
        return {
            "id": token, "token": piece(token), "logprob": float(logp[token]),
            "top": [] if top is None else [{"id": int(i), "token": piece(int(i)), "logprob": float(v)}
                                           for v, i in zip(top.values.tolist(), top.indices.tolist())],
        }  # fmt: skip

    def _take(self, row: _Row, token: int) -> None:
        row.tokens.append(token)
        if row.seen is not None:
            row.seen[token] = True
        if token in self.stop_ids:
            row.finish, row.stop_id = "stop", True
            return
        if row.stream is not None and row.stream.push(token):
            row.finish = "stop"
            return
        limit = row.job.request.max_new_tokens
        if self.context_length is not None:
            limit = min(limit, self.context_length - len(row.prep.ids))
        if len(row.tokens) >= limit:
            row.finish = "length"

    def _forward(self, batch: _Batch) -> None:
        rows = batch.rows
        n = len(rows)
        ids = torch.tensor([[r.tokens[-1]] for r in rows], dtype=torch.long, device=self.device)
        text_pos = torch.tensor([r.position for r in rows], dtype=torch.long, device=self.device).view(1, n, 1)
        delta = torch.tensor([r.prep.delta for r in rows], dtype=torch.long, device=self.device).view(1, n, 1)
        position_ids = torch.cat([text_pos, (text_pos + delta).expand(3, n, 1)], dim=0)
        out = self.model(
            input_ids=ids,
            position_ids=position_ids,
            attention_mask=batch.attention_mask(self.device),
            use_cache=True,
            **{self._cache_arg: batch.cache},
        )
        batch.cache = getattr(out, self._cache_arg)
        batch.length += 1
        logits = out.logits[:, -1]
        for b, r in enumerate(rows):
            r.logits = logits[b]
            r.fed += 1
            r.widest = max(r.widest, n)

    def _retire(self, row: _Row, batch: _Batch) -> None:
        """Hand a finished row its result (or error) and keep its prefix cache."""
        job, prep, request = row.job, row.prep, row.job.request
        row.logits = None
        if row.error is not None:
            self._fail(job, row.error)
            return
        try:
            key = request.prefix_key if self.prefix_cache else None
            if key is not None:
                keep = len(prep.ids) + (row.fed if request.keep_generated else 0)
                if row.merged:
                    cache = batch.extract(row, keep)
                else:  # finished on its first token: its own prefill cache (a copy when shared)
                    cache = _cache_of([(k.clone(), v.clone()) for k, v in _cache_kv(row.cache)]) if row.shared else row.cache
                self._store(key, request.keep_generated, prep, cache, row.tokens[: row.fed])
            row.cache = None
            job.result = self._result(row)
        except Exception as exc:
            self._fail(job, exc)
            return
        job.done.set()

    def _result(self, row: _Row) -> GenerationResult:
        prep, request = row.prep, row.job.request
        end = time.perf_counter()
        body = row.tokens[:-1] if row.stop_id else row.tokens
        if row.stream is not None and row.stream.stopped is not None:
            text = row.stream.stopped
        else:
            text = self.processor.tokenizer.decode(body, skip_special_tokens=True)
        if row.stream is not None:
            row.stream.finish(text)
        extra: dict[str, Any] = {
            "prefill_s": row.prefill_s, "decode_s": end - row.decode_start, "queue_s": row.started - row.job.queued,
            "reused_tokens": len(prep.ids) if row.shared else prep.reuse, "shared_prefill": row.shared,
            "batch_rows": row.widest, "token_ids": list(row.tokens),
        }  # fmt: skip
        if request.logprobs is not None or self.record_logprobs:
            extra["logprobs"] = row.logprobs
        return GenerationResult(
            text=text,
            generated_tokens=len(row.tokens),
            prompt_tokens=len(prep.ids),
            prefill_tokens=0 if row.shared else len(prep.ids) - prep.reuse,
            vision_tokens=sum(self._n_tokens(g) for g in prep.grids),
            finish_reason=row.finish or "cancelled",
            seconds=end - row.started,
            preprocess_seconds=0.0 if row.shared else prep.preprocess_s,
            extra=extra,
        )

    def _finish_cancelled_early(self, job: _Job) -> None:
        job.result = GenerationResult(
            text="", generated_tokens=0, prompt_tokens=0, prefill_tokens=0, vision_tokens=0, finish_reason="cancelled",
            seconds=0.0, extra={"queue_s": time.perf_counter() - job.queued, "token_ids": []},
        )  # fmt: skip
        job.done.set()

    # ---- prompt preparation ----------------------------------------------------------------

    def _n_tokens(self, grid: tuple[int, int, int]) -> int:
        t, h, w = grid
        return t * h * w // (self.merge * self.merge)

    def _preprocess(self, images: list[Any]) -> tuple[list[torch.Tensor], list[tuple[int, int, int]]]:
        if not images:
            return [], []
        out = self.processor.image_processor(images=images, return_tensors="pt", **self._size_kwargs)
        grids = [tuple(int(x) for x in g) for g in out["image_grid_thw"].tolist()]
        pixels = list(torch.split(out["pixel_values"], [t * h * w for t, h, w in grids]))
        return pixels, grids

    def _tokenize(self, text: str, grids: list[tuple[int, int, int]]) -> list[int]:
        """The processor's placeholder expansion: the i-th image token becomes image i's run."""
        chunks = text.split(self.image_token)
        if len(chunks) - 1 != len(grids):
            raise ValueError(
                f"the prompt holds {len(chunks) - 1} image placeholders but {len(grids)} images were given"
            )
        expanded = chunks[0] + "".join(self.image_token * self._n_tokens(g) + c for g, c in zip(grids, chunks[1:]))
        return list(self.processor.tokenizer(expanded)["input_ids"])

    def _prepare(self, request: GenerationRequest, job: _Job | None = None) -> _Prepared:
        job = job if job is not None else self._job(request)
        images, text, digests = job.images, job.text, job.digests
        key = request.prefix_key if self.prefix_cache else None
        with self._prefix_lock:
            state = self._prefixes.pop(key, None) if key is not None else None

        # Images already in the cached prompt keep their grids; only the others are preprocessed.
        m = 0
        if state is not None:
            while m < min(len(digests), len(state.digests)) and digests[m] == state.digests[m]:
                m += 1
        t0 = time.perf_counter()
        pixels: dict[int, torch.Tensor] = {}
        new_pixels, new_grids = self._preprocess(images[m:])
        pixels.update(zip(range(m, len(images)), new_pixels))
        grids = (state.grids[:m] if state is not None else []) + new_grids
        preprocess_s = time.perf_counter() - t0
        ids = self._tokenize(text, grids)
        if self.context_length is not None and len(ids) >= self.context_length:
            raise ContextLengthError(len(ids), self.context_length)
        runs = image_runs(ids, self.image_token_id)
        if [n for _, n in runs] != [self._n_tokens(g) for g in grids]:
            raise ValueError("image placeholder runs in the prompt do not match the images (adjacent images?)")
        starts = [s for s, _ in runs]

        reuse, cache = 0, None
        if state is not None:
            limit = state.starts[m] if m < len(state.starts) else len(state.ids)
            reuse = min(common_prefix_len(state.ids, ids), limit, len(ids) - 1)
            for s, n in runs:  # never split an image's placeholder run
                if s < reuse < s + n:
                    reuse = s
            if reuse > 0:
                cache = state.cache
                crop_cache(cache, reuse)
            else:
                reuse = 0
        first = sum(1 for s in starts if s < reuse)  # images wholly inside the reused prefix
        missing = [j for j in range(first, len(images)) if j not in pixels]
        if missing:  # rare: the prefix broke before an image that was cached
            t1 = time.perf_counter()
            redo, _ = self._preprocess([images[j] for j in missing])
            pixels.update(zip(missing, redo))
            preprocess_s += time.perf_counter() - t1
        suffix_images = list(range(first, len(images)))
        pixel_values = torch.cat([pixels[j] for j in suffix_images]) if suffix_images else None
        return _Prepared(
            ids=ids, grids=grids, digests=digests, starts=starts, reuse=reuse, cache=cache,
            pixel_values=pixel_values, new_grids=[grids[j] for j in suffix_images], preprocess_s=preprocess_s,
        )  # fmt: skip

    # ---- model calls -----------------------------------------------------------------------

    def _positions(self, ids_t: torch.Tensor, grids: list[tuple[int, int, int]]) -> tuple[torch.Tensor, int]:
        """(4, 1, L) position ids -- text positions, then M-RoPE t/h/w -- and the rope delta."""
        mm = (ids_t == self.image_token_id).int()
        grid_t = torch.tensor(grids, dtype=torch.long, device=ids_t.device) if grids else None
        mrope, delta = self._rope_index(ids_t, mm_token_type_ids=mm, image_grid_thw=grid_t)
        text = torch.arange(ids_t.shape[1], device=ids_t.device).view(1, 1, -1)
        return torch.cat([text, mrope.to(ids_t.device)], dim=0), int(delta.reshape(-1)[0])

    def _prefill(self, prep: _Prepared) -> tuple[torch.Tensor, Any]:
        ids_t = torch.tensor([prep.ids], dtype=torch.long, device=self.device)
        positions, prep.delta = self._positions(ids_t, prep.grids)
        r = prep.reuse
        kwargs: dict[str, Any] = {}
        if prep.pixel_values is not None:
            kwargs["pixel_values"] = prep.pixel_values.to(self.device)
            kwargs["image_grid_thw"] = torch.tensor(prep.new_grids, dtype=torch.long, device=self.device)
        out = self.model(
            input_ids=ids_t[:, r:],
            mm_token_type_ids=(ids_t[:, r:] == self.image_token_id).int(),
            position_ids=positions[:, :, r:],
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: prep.cache},
            **kwargs,
        )
        return out.logits[0, -1], getattr(out, self._cache_arg)

    def _store(self, key: str | None, keep_generated: bool, prep: _Prepared, cache: Any, generated: list[int]) -> None:
        """Keep `cache` as `key`'s prefix: the prompt, plus (`keep_generated`, the `text` mode, whose
        next request continues this output) the `generated` tokens whose KV it holds."""
        if key is None or not self.prefix_cache:
            return
        ids = prep.ids + list(generated) if keep_generated else list(prep.ids)
        crop_cache(cache, len(ids))
        state = _Prefix(ids=ids, cache=cache, digests=prep.digests, grids=prep.grids, starts=prep.starts)
        with self._prefix_lock:
            self._prefixes[key] = state
            self._prefixes.move_to_end(key)
            while len(self._prefixes) > self.max_prefixes:
                self._prefixes.popitem(last=False)
