"""The one interface every generation backend implements (transformers in-process, OpenAI-compatible
HTTP servers such as `vllm serve`, SGLang or `vtcr serve`).

Messages are OpenAI-style chat messages whose content is a string or a list of parts; image parts
carry PIL images in memory: {"type": "image", "image": <PIL.Image>}. Each backend converts them to
what it needs (processor inputs; base64 data URLs on the wire).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol


@dataclass(frozen=True)
class GenerationRequest:
    messages: list[dict[str, Any]]
    max_new_tokens: int
    # Plain sampling unless told otherwise (the OpenAI API's defaults); the engine always passes its
    # EngineConfig's values.
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    # Identifies one problem's conversation across rounds, so a backend may keep the KV cache of its
    # stable prefix (system, question, earlier images) and prefill only what is new. None: no reuse.
    prefix_key: str | None = None
    # Text the assistant turn starts with (the `text` mode continues earlier rounds' text).
    assistant_prefix: str = ""
    # Hint for prefix caching: the next request of this prefix_key continues this one's output (the
    # `text` mode), so a backend may keep the generated tokens' KV too. Backends may ignore it.
    keep_generated: bool = False
    # vLLM-style sampling controls (0 / 1.0: off). top_k keeps the k most likely tokens;
    # repetition_penalty divides positive (multiplies negative) logits of every token already in
    # the prompt or the output, as transformers and vLLM do.
    top_k: int = 0
    repetition_penalty: float = 1.0
    # Stop strings: the text ends before the first one generated (finish_reason "stop").
    stop: tuple[str, ...] = ()
    # None: no log-probabilities. k >= 0: result.extra["logprobs"] holds, per generated token,
    # {"id", "token", "logprob", "top": [{"id", "token", "logprob"}, ...k most likely]}.
    logprobs: int | None = None
    # Streaming and cancellation (not part of the request's identity): on_token receives each new
    # piece of text as it is decoded; once cancel is set, generation stops within a step and the
    # result has finish_reason "cancelled".
    on_token: Callable[[str], None] | None = field(default=None, compare=False, repr=False)
    cancel: Any = field(default=None, compare=False, repr=False)  # threading.Event-like: .is_set()


@dataclass(frozen=True)
class GenerationResult:
    text: str
    generated_tokens: int
    prompt_tokens: int  # tokens of the whole prompt (text + image placeholders)
    prefill_tokens: int  # prompt tokens actually computed this call (prompt_tokens minus reused prefix)
    vision_tokens: int  # image placeholder tokens in the prompt
    finish_reason: str  # "stop" (end of turn or a stop string) | "length" (hit max_new_tokens) | "cancelled"
    seconds: float  # wall time of the call (queueing excluded where the backend can tell)
    preprocess_seconds: float = 0.0  # image preprocessing inside the backend, when measured
    extra: dict[str, Any] = field(default_factory=dict)


class ContextLengthError(ValueError):
    """The prompt leaves no room for output within the model's context length."""

    def __init__(self, prompt_tokens: int, context_length: int) -> None:
        super().__init__(
            f"the prompt is {prompt_tokens} tokens; this model's context length is {context_length} tokens "
            "(prompt and output together), so nothing can be generated: shorten the messages or send fewer images"
        )
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


class TextStream:
    """Output text of a growing token list, for backends: stop strings and streaming in one place.

    Call `push(tokens)` after each generated token (all output tokens so far, end-of-turn token
    excluded); it returns True once a stop string appears, and the text then ends before it. Pieces
    go to `on_token` as soon as they cannot be the start of a stop string (and are not a half-decoded
    character); `finish()` sends the rest and returns the whole text.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...] = (),
                 on_token: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self._decode = decode
        self.stop = tuple(s for s in stop if s)
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self._on_token = on_token
        self.text = ""
        self.stopped = False
        self._sent = 0

    def push(self, tokens: list[int]) -> bool:
        if not self.stop and self._on_token is None:
            return False  # nothing to watch: the text is decoded once, in finish()
        if self._on_token is None:  # stop strings only: look at the last few tokens first (a token
            # carries at least a third of a character, so a stop string spans at most 3 x its length)
            tail = self._decode(tokens[-(3 * (self._hold + 1) + 8) :])
            if not any(s in tail for s in self.stop):
                return False
        self.text = self._decode(tokens)
        if self.stop:
            start = max(0, self._sent - self._hold)
            found = [i for s in self.stop if (i := self.text.find(s, start)) >= 0]
            if found:
                self.text = self.text[: min(found)]
                self.stopped = True
                self._send(len(self.text))
                return True
        safe = len(self.text) - self._hold
        if self.text.endswith("\ufffd"):  # a character whose bytes are not all generated yet
            safe = min(safe, len(self.text) - 1)
        self._send(safe)
        return False

    def finish(self, tokens: list[int]) -> str:
        """The final text of `tokens` (cut at the stop string if one was found); sends what is left."""
        if not self.stopped:
            self.text = self._decode(tokens)
        self._send(len(self.text))
        return self.text

    def _send(self, upto: int) -> None:
        if upto > self._sent:
            piece, self._sent = self.text[self._sent : upto], upto
            if self._on_token is not None:
                self._on_token(piece)


class Backend(Protocol):
    """Optional attributes the engine and `vtcr serve` read when present: `concurrency` (int: how
    many generate calls may run at once from different threads; default 1), `context_length` (int:
    the most tokens, prompt plus output, one sequence may hold; a backend that knows it raises
    `ContextLengthError` for a prompt that leaves no room, before any model compute, and stops the
    output at the limit with finish_reason "length"), `render_config` (RenderConfig or
    None: the pages the model was trained to read; see `vtcr.render.resolve_render_config`) and
    `prompt_opens` (str: what the chat template's generation prompt already writes of the model's
    turn, e.g. ``<think>\n``; the engine puts it in front of the first round's text; default "")."""

    name: str  # model name recorded in run records

    def generate(self, request: GenerationRequest) -> GenerationResult: ...

    def release(self, prefix_key: str) -> None:
        """Forget any cached state of this conversation (called when a problem finishes)."""
        ...

