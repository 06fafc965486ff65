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

