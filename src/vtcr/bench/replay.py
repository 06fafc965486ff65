"""Teacher-forced replay of a reasoning trace through a VLM, in each of vtcr's modes.

Every mode decodes exactly the same tokens -- the trace's, as build-data segments it -- so the modes
differ only in what the model attends to, which is what they cost:

- ``standard``: the question, then the whole trace decoded as one growing context;
- ``vtc``: round k = system prompt + question + the pages of segments 0..k-1, prefilled with prefix
  reuse (round k's prompt is round k-1's plus the new pages: only the new part is prefilled, only the
  new pages are preprocessed and go through the vision tower), then segment k decoded; the round's
  decoded tokens are then dropped from the cache, as the engine does;
- ``vtc_no_reuse``: the reference loop: the same prompts, every round prefilled (and every page
  preprocessed) from scratch;
- ``text``: the same rounds with earlier segments kept as text in the context (the engine's
  ``text`` mode continues one assistant turn, so its cache keeps what was decoded).

The model's forward is driven directly (prefill, then one forward per decoded token, greedy argmax
over the logits kept), with M-RoPE positions from the model's own ``get_rope_index``. A batch of B
is B copies of the trace decoded together, one forward per step for all rows: the shapes and the KV
cache of B different traces of the same length, without padding. Rendering and image preprocessing
are timed and part of ``total_s``. Peak KV bytes are the cache tensors' own sizes; peak memory is
the CUDA allocator's peak on a GPU and the process's peak resident set (VmHWM, reset per mode
through /proc/self/clear_refs) on a CPU.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from vtcr._cpu import usable_cores

from .cost_model import Round

MODES = ("standard", "vtc", "vtc_no_reuse", "text")
# wall: perf_counter; process: this process's CPU time (on a shared CPU, a one-thread run's CPU
# time is close to its wall time on an idle machine; never on a GPU, whose work is not CPU time)
CLOCKS = ("wall", "process")


@dataclass(frozen=True)
class ReplayTrace:
    """One trace ready to replay: its question and its rounds' texts and token ids (build-data's
    assistant turns: segment 0 with the opener, the last with `</think>`, summary and answer)."""

    id: str
    question: str
    turns: tuple[str, ...]
    turn_ids: tuple[tuple[int, ...], ...]

    @property
    def tokens(self) -> int:
        return sum(len(t) for t in self.turn_ids)


@dataclass
class ModeResult:
    prefill_s: float = 0.0
    decode_s: float = 0.0
    render_s: float = 0.0
    preprocess_s: float = 0.0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    decode_steps: int = 0
    pages: int = 0
    vision_tokens: int = 0
    peak_kv_bytes: int = 0
    peak_context: int = 0
    peak_memory_bytes: int | None = None
    rounds: list[Round] = field(default_factory=list)

    def to_dict(self, batch: int) -> dict[str, Any]:
        total = self.render_s + self.preprocess_s + self.prefill_s + self.decode_s
        return {
            "prefill_s": self.prefill_s, "decode_s": self.decode_s, "total_s": total,
            "render_s": self.render_s, "preprocess_s": self.preprocess_s,
            "prefill_tokens": self.prefill_tokens, "decode_tokens": self.decode_tokens,
            "decode_tokens_per_s": batch * self.decode_steps / self.decode_s if self.decode_s > 0 else None,
            "peak_kv_bytes": self.peak_kv_bytes, "peak_context": self.peak_context,
            "peak_memory_bytes": self.peak_memory_bytes, "pages": self.pages, "vision_tokens": self.vision_tokens,
            "rounds": len(self.rounds),
        }  # fmt: skip


def cache_bytes(cache: Any) -> int:
    """Bytes held by the key and value tensors of a transformers cache."""
    if cache is None:
        return 0
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if t is not None and hasattr(t, "nbytes"):
                total += int(t.nbytes)
    return total


class _Memory:
    """Peak memory of one mode: CUDA allocator peak, else the process's VmHWM (reset per mode)."""

    def __init__(self, device: Any):
        self.device = device

    def reset(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass

    def peak(self) -> int | None:
        import torch

        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None


class Replayer:
    """Replays traces through one loaded model (`model`, its `processor`) and a page renderer."""

    def __init__(self, model: Any, processor: Any, renderer: Any, *, system_prompt: str | None = None,
                 decode_stride: int = 1, clock: str = "wall"):
        from vtcr.prompts import SYSTEM_PROMPT

        if decode_stride < 1:
            raise ValueError(f"decode_stride must be >= 1, got {decode_stride}")
        self.decode_stride = decode_stride
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
        self.clock = time.perf_counter if clock == "wall" else time.process_time
        self.model = model
        self.processor = processor
        self.renderer = renderer
        self.system_prompt = SYSTEM_PROMPT if system_prompt is None else system_prompt
        inner = getattr(model, "model", model)
        self._rope_index = inner.get_rope_index
        self.device = next(model.parameters()).device
        self.image_token = processor.image_token
        self.image_token_id = int(model.config.image_token_id)
        self.merge = int(processor.image_processor.merge_size)
        self.memory = _Memory(self.device)

    # ---- prompts ---------------------------------------------------------------------------

    def _messages(self, question: str, n_pages: int, with_system: bool) -> list[dict[str, Any]]:
        from vtcr.prompts import user_parts

        messages: list[dict[str, Any]] = []
        if with_system:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        messages.append({"role": "user", "content": user_parts(question, n_pages)})
        return messages

    def _prompt_text(self, question: str, n_pages: int, with_system: bool) -> str:
        from vtcr.models.conventions import render_prompt

        return render_prompt(self.processor, self._messages(question, n_pages, with_system))

    def _tokenize(self, text: str, grids: list[tuple[int, int, int]]) -> list[int]:
        chunks = text.split(self.image_token)
        if len(chunks) - 1 != len(grids):
            raise ValueError(f"the prompt holds {len(chunks) - 1} image placeholders but {len(grids)} pages were given")
        expanded = chunks[0] + "".join(self.image_token * self._n_tokens(g) + c for g, c in zip(grids, chunks[1:]))
        return list(self.processor.tokenizer(expanded)["input_ids"])

    def _n_tokens(self, grid: tuple[int, int, int]) -> int:
        t, h, w = grid
        return t * h * w // (self.merge * self.merge)

    def _preprocess(self, images: list[Any]) -> tuple[list[Any], list[tuple[int, int, int]]]:
        import torch

        if not images:
            return [], []
        out = self.processor.image_processor(images=images, return_tensors="pt")
        grids = [tuple(int(x) for x in g) for g in out["image_grid_thw"].tolist()]
        pixels = list(torch.split(out["pixel_values"], [t * h * w for t, h, w in grids]))
        return pixels, grids

    # ---- model calls -----------------------------------------------------------------------

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def _positions(self, ids: list[int], grids: list[tuple[int, int, int]]) -> tuple[Any, int]:
        import torch

        ids_t = torch.tensor([ids], dtype=torch.long, device=self.device)
        mm = (ids_t == self.image_token_id).int()
        grid_t = torch.tensor(grids, dtype=torch.long, device=self.device) if grids else None
        mrope, delta = self._rope_index(ids_t, mm_token_type_ids=mm, image_grid_thw=grid_t)
        text = torch.arange(ids_t.shape[1], device=self.device).view(1, 1, -1)
        return torch.cat([text, mrope.to(self.device)], dim=0), int(delta.reshape(-1)[0])

    def _prefill(self, ids: list[int], grids: list[tuple[int, int, int]], reuse: int, cache: Any,
                 new_pixels: list[Any], new_grids: list[tuple[int, int, int]], batch: int) -> tuple[Any, int]:
        import torch

        positions, delta = self._positions(ids, grids)
        ids_t = torch.tensor([ids[reuse:]], dtype=torch.long, device=self.device).expand(batch, -1)
        kwargs: dict[str, Any] = {}
        if new_pixels:
            pv = torch.cat(new_pixels).to(self.device, self.model.dtype)
            kwargs["pixel_values"] = torch.cat([pv] * batch) if batch > 1 else pv
            kwargs["image_grid_thw"] = torch.tensor(new_grids * batch, dtype=torch.long, device=self.device)
        out = self.model(
            input_ids=ids_t, mm_token_type_ids=(ids_t == self.image_token_id).int(),
            position_ids=positions[:, :, reuse:].expand(-1, batch, -1), cache=cache,
            use_cache=True, logits_to_keep=1, **kwargs,
        )  # fmt: skip
        out.logits[:, -1].argmax(-1)
        return out.cache, delta

    def _decode(self, cache: Any, start: int, delta: int, tokens: tuple[int, ...], batch: int) -> tuple[int, float]:
        """Feed `tokens[:-1]` one step at a time (the last token is the one a real run stops on);
        (steps, seconds). With `decode_stride` S > 1 only every S-th step is a timed one-token
        forward; the S-1 tokens between go in as one untimed chunk (the cache ends up the same) and
        the decode seconds are the timed steps' mean times the steps."""
        import torch

        feed = tokens[:-1]
        stride = self.decode_stride
        position, timed, seconds, i = start, 0, 0.0, 0
        while i < len(feed):
            n = 1 if stride == 1 or i % stride == 0 else min(stride - i % stride, len(feed) - i)
            text_pos = (position + torch.arange(n, device=self.device)).view(1, 1, n).expand(1, batch, n)
            position_ids = torch.cat([text_pos, (text_pos + delta).expand(3, -1, -1)], dim=0)
            ids = torch.tensor(feed[i : i + n], dtype=torch.long, device=self.device).view(1, n).expand(batch, n)
            if n == 1:
                self._sync()
                t0 = self.clock()
            out = self.model(input_ids=ids, position_ids=position_ids, cache=cache, use_cache=True,
                             logits_to_keep=1)
            out.logits[:, -1].argmax(-1)
            if n == 1:
                self._sync()
                seconds += self.clock() - t0
                timed += 1
            position += n
            i += n
        steps = len(feed)
        return steps, (seconds * steps / timed if timed else 0.0)

    # ---- modes -----------------------------------------------------------------------------

    def run(self, trace: ReplayTrace, mode: str, batch: int = 1) -> ModeResult:
        import torch

        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.memory.reset()
        res = ModeResult()
        with torch.inference_mode():
            if mode == "standard":
                self._run_standard(trace, batch, res)
            elif mode == "text":
                self._run_text(trace, batch, res)
            else:
                self._run_vtc(trace, batch, res, reuse=mode == "vtc")
        res.peak_memory_bytes = self.memory.peak()
        return res

    def _round(self, res: ModeResult, ids: list[int], grids, reuse: int, cache: Any, new_pixels, new_grids,
               turn: tuple[int, ...], batch: int, patches: tuple[int, ...]) -> Any:
        self._sync()
        t0 = self.clock()
        cache, delta = self._prefill(ids, grids, reuse, cache, new_pixels, new_grids, batch)
        self._sync()
        t1 = self.clock()
        steps, decode_s = self._decode(cache, len(ids), delta, turn, batch)
        res.prefill_s += t1 - t0
        res.decode_s += decode_s
        res.prefill_tokens += len(ids) - reuse
        res.decode_tokens += len(turn)
        res.decode_steps += steps
        res.peak_kv_bytes = max(res.peak_kv_bytes, cache_bytes(cache))
        res.peak_context = max(res.peak_context, len(ids) + steps)
        res.rounds.append(Round(cached=reuse, prefill=len(ids) - reuse, image_patches=patches, decode_steps=steps))
        return cache

    def _run_standard(self, trace: ReplayTrace, batch: int, res: ModeResult) -> None:
        ids = self._tokenize(self._prompt_text(trace.question, 0, with_system=False), [])
        tokens = tuple(t for turn in trace.turn_ids for t in turn)
        self._round(res, ids, [], 0, None, [], [], tokens, batch, ())

    def _run_text(self, trace: ReplayTrace, batch: int, res: ModeResult) -> None:
        from vtcr.engine.transformers_backend import common_prefix_len, crop_cache

        base = self._tokenize(self._prompt_text(trace.question, 0, with_system=False), [])
        cache, cached_ids = None, []
        ids = list(base)
        for turn in trace.turn_ids:
            reuse = min(common_prefix_len(cached_ids, ids), len(ids) - 1) if cache is not None else 0
            if cache is not None:
                crop_cache(cache, reuse)
            cache = self._round(res, ids, [], reuse, cache, [], [], turn, batch, ())
            cached_ids = ids + list(turn[:-1])  # every decoded token but the last went through the model
            ids = ids + list(turn)

    def _run_vtc(self, trace: ReplayTrace, batch: int, res: ModeResult, reuse: bool) -> None:
        from vtcr.engine.transformers_backend import common_prefix_len, crop_cache, image_runs

        pages: list[Any] = []
        pixels: list[Any] = []
        grids: list[tuple[int, int, int]] = []
        cache, cached_ids = None, []
        for k, turn in enumerate(trace.turn_ids):
            if k > 0:  # render the previous round's text: its pages join the prompt
                t0 = self.clock()
                new_pages = self.renderer.render(trace.turns[k - 1])
                res.render_s += self.clock() - t0
                pages += new_pages
                res.pages += len(new_pages)
                t0 = self.clock()
                if reuse:
                    new_px, new_grids = self._preprocess(new_pages)
                    pixels += new_px
                    grids += new_grids
                else:  # the reference loop sends (and preprocesses) every page again
                    pixels, grids = self._preprocess(pages)
                res.preprocess_s += self.clock() - t0
            ids = self._tokenize(self._prompt_text(trace.question, len(pages), with_system=True), grids)
            starts = [s for s, _ in image_runs(ids, self.image_token_id)]
            if reuse and cache is not None:
                keep = min(common_prefix_len(cached_ids, ids), len(ids) - 1)
                for s, g in zip(starts, grids):  # never split an image's placeholder run
                    if s < keep < s + self._n_tokens(g):
                        keep = s
                crop_cache(cache, keep)
            else:
                keep, cache = 0, None
            first = sum(1 for s in starts if s < keep)  # pages wholly inside the reused prefix
            new_px, new_grids = pixels[first:], grids[first:]
            patches = tuple(t * h * w for t, h, w in new_grids)
            res.vision_tokens = sum(self._n_tokens(g) for g in grids)
            cache = self._round(res, ids, grids, keep, cache, new_px, new_grids, turn, batch, patches)
            crop_cache(cache, len(ids))  # the round's own tokens are not part of the next prompt
            cached_ids = ids


def torch_threads() -> int:
    """The cores this process may really use (affinity), capped by OMP_NUM_THREADS when set."""
    cores = usable_cores()
    env = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(cores, int(env))) if env.isdigit() and int(env) > 0 else cores
