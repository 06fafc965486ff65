"""In-process generation with transformers, keeping each problem's prompt KV cache across rounds.

Round k+1 of a VTC-R1 problem sends round k's prompt with more page images inserted before the end
of the user turn. So per `prefix_key` this backend keeps the token ids and the KV cache
(`DynamicCache`) of the last prompt; the next request finds the common prefix, crops the cache to it
and prefills only the rest -- which holds the NEW images' placeholders, so only the new images go
through the image processor and the vision tower.

M-RoPE (Qwen2.5-VL, Qwen3-VL, GLM-4.1V): a token's rotary position depends on every image before
it, so positions are computed for the whole sequence with the model's own `get_rope_index` and the
suffix slice is passed (as the 4-row text+t/h/w layout `generate` itself uses); decoding continues at
text position p with M-RoPE position p + rope_delta. Prefill and decoding are a small loop of our own
(temperature / top-p sampling from a seeded `torch.Generator`, greedy at temperature 0, stop on the
model's end-of-turn ids), because `generate` cannot start from a cropped cache with images in the
uncached part.

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
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .backend import ContextLengthError, GenerationRequest, GenerationResult, TextStream


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
    """One token from next-token `logits` (1-D): greedy at temperature 0, else temperature, top-k
    (k > 0 keeps the k most likely tokens) and top-p.

    Drawn as argmax(p / E) with E ~ Exp(1) i.i.d. from `generator` (an exponential race, the
    Gumbel-max trick), which samples exactly from p and, unlike inverting a cumulative sum over 150k
    tokens, does not flip on last-bit differences in p (prefix reuse vs full recompute).
    """
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if 0 < top_k < probs.numel():
        probs = torch.where(probs >= torch.topk(probs, top_k).values[-1], probs, 0.0)
        probs = probs / probs.sum()
    if top_p < 1.0:
        probs = torch.where(probs >= top_p_floor(probs, top_p), probs, 0.0)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return int(torch.argmax(probs / race))


def penalize_repetition(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """`logits` with the tokens in `seen` (ids) made less likely: positive logits divided by
    `penalty`, negative ones multiplied (transformers' and vLLM's repetition_penalty)."""
    picked = logits[seen]
    out = logits.clone()
    out[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return out


def _crop(cache: Any, keep: int) -> None:
    extra = cache.get_seq_length() - keep
    if extra > 0:
        cache.crop(-extra)  # negative: remove that many tokens (transformers 4.x and 5.x alike)


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


class TransformersBackend:
    """A loaded VLM as a `Backend` (one generate call at a time; thread-safe).

    prefix_cache: keep each `prefix_key`'s prompt KV across calls (off: prefill everything, the
    baseline the benchmark compares with). record_logprobs: put the log-probability of each sampled
    token under the full distribution in `result.extra["logprobs"]`. max_prefixes: conversations
    kept at once (least recently used dropped first). max_image_pixels: cap on each image's resized
    area (`from_pretrained` takes the checkpoint's `vtcr.json` value, so inference sees images as
    training did). render_config: the pages the model was trained to read (`from_pretrained`: its
    vtcr.json; None when unknown), which the engine renders optical memory with. context_length:
    the most prompt + output tokens per sequence (default and upper bound: the model config's
    max_position_embeddings); a longer prompt raises `ContextLengthError` before any model call.

    Every GenerationRequest field is honoured: stop strings, top_k, repetition_penalty (over the
    prompt and the output), logprobs (of the model's raw distribution, before temperature and
    filtering), on_token (text pieces as decoded, stop strings held back) and cancel (checked before
    prefill and before each decode step).
    """

    concurrency = 1

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
        context_length: int | None = None,
    ):
        inner = getattr(model, "model", model)
        if not callable(getattr(inner, "get_rope_index", None)):
            raise ValueError(
                f"{type(model).__name__} is not an M-RoPE VLM (Qwen2-VL / Qwen2.5-VL / Qwen3-VL / GLM-4.1V family): "
                "the transformers backend computes multimodal positions with its get_rope_index"
            )
        self.model = model
        self.processor = processor
        self.name = name
        from vtcr.render import render_config as _as_render_config

        self.render_config = _as_render_config(render_config)
        self.prefix_cache = prefix_cache
        self.max_prefixes = max_prefixes
        self.record_logprobs = record_logprobs
        self._rope_index = inner.get_rope_index
        text_config = getattr(model.config, "text_config", model.config)
        model_len = int(getattr(text_config, "max_position_embeddings", 0) or 0) or None
        if context_length is not None and context_length < 2:
            raise ValueError(f"context_length must be at least 2, got {context_length}")
        self.context_length = min(x for x in (context_length, model_len) if x) if (context_length or model_len) else None
        # transformers >= 5.2x names the KV cache argument `cache` (and deprecates `past_key_values`)
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
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
        self._lock = threading.Lock()  # one generation at a time
        self._prefixes: OrderedDict[str, _Prefix] = OrderedDict()
        self._prefix_lock = threading.Lock()

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
        if request.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {request.max_new_tokens}")
        start = time.perf_counter()
        with self._lock, torch.inference_mode():
            if _cancelled(request):  # gave up while waiting for the model: nothing computed
                return GenerationResult("", 0, 0, 0, 0, "cancelled", time.perf_counter() - start)
            prep = self._prepare(request)
            t_prefill = time.perf_counter()
            logits, cache = self._prefill(prep)
            t_decode = time.perf_counter()
            tokens, finish, logprobs, text = self._decode(logits, cache, prep.ids, prep.delta, request)
            self._store(request, prep, cache, tokens)
        end = time.perf_counter()
        return GenerationResult(
            text=text,
            generated_tokens=len(tokens),
            prompt_tokens=len(prep.ids),
            prefill_tokens=len(prep.ids) - prep.reuse,
            vision_tokens=sum(self._n_tokens(g) for g in prep.grids),
            finish_reason=finish,
            seconds=end - start,
            preprocess_seconds=prep.preprocess_s,
            extra={
                "prefill_s": t_decode - t_prefill, "decode_s": end - t_decode, "reused_tokens": prep.reuse,
                "token_ids": tokens, **({"logprobs": logprobs} if logprobs is not None else {}),
            },
        )  # fmt: skip

    def next_token_logits(self, request: GenerationRequest) -> tuple[torch.Tensor, int]:
        """Logits of the first generated token and the prefill token count, computed exactly as
        `generate` computes them (reusing and then keeping this prefix_key's cache). For checks."""
        with self._lock, torch.inference_mode():
            prep = self._prepare(request)
            logits, cache = self._prefill(prep)
            self._store(request, prep, cache, [])
        return logits.float().cpu(), len(prep.ids) - prep.reuse

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

    def _prepare(self, request: GenerationRequest) -> _Prepared:
        images = message_images(request.messages)
        from vtcr.models.conventions import render_prompt

        text = render_prompt(self.processor, request.messages, source=f"the chat template of {self.name}")
        text += request.assistant_prefix
        digests = [image_digest(img) for img in images]
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
                _crop(cache, reuse)
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
        return out.logits[0, -1], _cache_of(out)

    def _decode(self, logits: torch.Tensor, cache: Any, prompt: list[int], delta: int, request: GenerationRequest):
        """(tokens, finish_reason, logprobs or None, text) of one sequence decoded from `logits`."""
        generator = torch.Generator(device=self.device)
        if request.seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(request.seed))
        tokenizer = self.processor.tokenizer
        stream = TextStream(lambda ids: tokenizer.decode(ids, skip_special_tokens=True), request.stop,
                            request.on_token)  # fmt: skip
        limit = request.max_new_tokens
        if self.context_length is not None:
            limit = min(limit, self.context_length - len(prompt))
        top = request.logprobs
        penalty = request.repetition_penalty
        seen = torch.tensor(sorted(set(prompt)), dtype=torch.long, device=self.device) if penalty != 1.0 else None
        tokens: list[int] = []
        logprobs: list[Any] | None = [] if top is not None or self.record_logprobs else None
        position = len(prompt)
        finish = "length"
        while True:
            if _cancelled(request):
                finish = "cancelled"
                break
            if seen is not None:
                logits = penalize_repetition(logits, seen, penalty)
            token = sample_token(logits, request.temperature, request.top_p, generator, request.top_k)
            tokens.append(token)
            if top is not None:  # the request's: per token, its entry with the top alternatives
                logprobs.append(self._logprob_entry(logits, token, top))
            elif logprobs is not None:  # record_logprobs: the sampled token's log-probability only
                logprobs.append(float(torch.log_softmax(logits.float(), dim=-1)[token]))
            if token in self.stop_ids:
                finish = "stop"
                break
            if stream.push(tokens):
                finish = "stop"
                break
            if len(tokens) >= limit:
                break
            if seen is not None and not bool((seen == token).any()):
                seen = torch.cat([seen, torch.tensor([token], device=self.device)])
            text_pos = torch.tensor([position], device=self.device).view(1, 1, 1)
            position_ids = torch.cat([text_pos, (text_pos + delta).expand(3, 1, 1)], dim=0)
            out = self.model(
                input_ids=torch.tensor([[token]], device=self.device),
                position_ids=position_ids,
                use_cache=True,
                **{self._cache_arg: cache},
            )
            logits = out.logits[0, -1]
            position += 1
        text = stream.finish(tokens[:-1] if tokens and tokens[-1] in self.stop_ids else tokens)
        return tokens, finish, logprobs, text

    def _logprob_entry(self, logits: torch.Tensor, token: int, top: int) -> dict[str, Any]:
        """The sampled token's log-probability and the `top` most likely tokens (raw distribution)."""
        lp = torch.log_softmax(logits.float(), dim=-1)
        decode = self.processor.tokenizer.decode
        entry: dict[str, Any] = {"id": token, "token": decode([token]), "logprob": float(lp[token]), "top": []}
        if top > 0:
            values, ids = torch.topk(lp, min(top, lp.numel()))
            entry["top"] = [{"id": int(i), "token": decode([int(i)]), "logprob": float(v)}
                            for v, i in zip(values.tolist(), ids.tolist())]  # fmt: skip
        return entry

    def _store(self, request: GenerationRequest, prep: _Prepared, cache: Any, tokens: list[int]) -> None:
        key = request.prefix_key
        if key is None or not self.prefix_cache:
            return
        if request.keep_generated:  # every sampled token but the last went through the model
            ids = prep.ids + tokens[:-1]
        else:  # the prompt only: the next round shares (part of) it, never this round's output
            ids = list(prep.ids)
            _crop(cache, len(ids))
        state = _Prefix(ids=ids, cache=cache, digests=prep.digests, grids=prep.grids, starts=prep.starts)
        with self._prefix_lock:
            self._prefixes[key] = state
            self._prefixes.move_to_end(key)
            while len(self._prefixes) > self.max_prefixes:
                self._prefixes.popitem(last=False)


def _cancelled(request: GenerationRequest) -> bool:
    return request.cancel is not None and request.cancel.is_set()


def _cache_of(out: Any) -> Any:
    """The KV cache a forward call returned: `cache` in current transformers, `past_key_values` before."""
    if hasattr(out, "keys") and "cache" in out.keys():
        return out["cache"]
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
