"""What a checkpoint's chat template does, found by rendering it, and the rules vtcr builds on that.

Real checkpoints bring their own templates (see ../shared/models): Qwen3-VL Thinking ends the
generation prompt with ``<think>\\n`` and rewrites assistant history around ``</think>``; Instruct
opens nothing; Qwen2.5-VL adds a default system prompt; GLM-4.1V needs string contents. vtcr never
derives a loss span or a round's text from how a template re-renders an assistant message. It
renders a template only (1) over the system and user turns, with the generation prompt -- the
prompt of a training sample and of an inference round alike -- and (2) a few probe conversations
that tell it the template's conventions (`ChatConventions`):

- ``generation_prompt``: the text ``add_generation_prompt=True`` appends;
- ``opens``: the part of it that already belongs to the model's turn (``<think>\\n`` for Qwen3-VL
  Thinking, else empty): dropped from the start of a training target, and put back in front of the
  first round's generated text, so that what inference records and renders is what build-data holds;
- ``default_system``: the system prompt the template writes when none is given;
- ``image_placeholder``: what one image item becomes before the processor expands it;
- ``end_of_turn`` + ``after_end_of_turn``: the family's end-of-turn token and what the template
  writes right after it (``\\n`` for the Qwen templates: they close every assistant message with
  ``<|im_end|>\\n``; nothing for GLM, whose turn ends with the family's ``<|endoftext|>``).

The training target of a segment (`training_target`) is the segment minus ``opens`` plus
``end_of_turn + after_end_of_turn``; LLaMA-Factory's Qwen templates train on the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .architectures import family

THINK_OPEN = "<think>"

# Probe texts: plain words no template rewrites.
_SYSTEM_PROBE = "VTCRPROBESYSTEM"
_USER_PROBE = "VTCRPROBEUSER"
_ASSISTANT_PROBE = "VTCRPROBEASSISTANT"
_BEFORE_IMAGE, _AFTER_IMAGE = "VTCRPROBEBEFORE", "VTCRPROBEAFTER"

_WHAT_TO_DO = (
    "pass the checkpoint's own template (`vtcr init-model --chat-template FILE`, or a chat_template.jinja "
    "in the model folder) that writes the system and user turns, a generation prompt for "
    "add_generation_prompt=True, and the assistant text verbatim before its end-of-turn token"
)


def template_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` as every template reads them: system and assistant contents made of text parts
    become one string (GLM-4.1V's template prints a list content as a Python list); user turns keep
    their parts (images are items of the turn)."""
    out = []
    for message in messages:
        content = message.get("content")
        if message.get("role") in ("system", "assistant") and isinstance(content, list):
            if all(part.get("type") == "text" for part in content):
                message = {**message, "content": "".join(part.get("text") or "" for part in content)}
        out.append(message)
    return out


def render_chat(
    template: str, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool, tokenizer: Any = None,
    source: str = "chat template",
) -> str:  # fmt: skip
    """`messages` (normalised by `template_messages`) rendered by the Jinja `template` the way
    transformers renders chat templates (its sandbox, trim_blocks/lstrip_blocks, the tokenizer's
    special-token names as variables)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    extra = dict(getattr(tokenizer, "special_tokens_map", None) or {})
    try:
        rendered, _ = render_jinja_template(
            [template_messages(messages)], chat_template=template, add_generation_prompt=add_generation_prompt, **extra
        )
    except Exception as exc:  # jinja2 raises its own types (TemplateError, UndefinedError, ...)
        raise ValueError(f"{source} cannot render a vtcr conversation: {type(exc).__name__}: {exc}; {_WHAT_TO_DO}") from None
    return rendered[0]


def render_prompt(processor_or_template: Any, messages: Sequence[dict[str, Any]], *, source: str | None = None) -> str:
    """The prompt of a training sample or an inference round: the system and user turns of `messages`
    rendered by the checkpoint's template with its generation prompt. `processor_or_template` is a
    processor (its chat template and tokenizer) or a template string."""
    if isinstance(processor_or_template, str):
        template, tokenizer = processor_or_template, None
    else:
        template = processor_or_template.chat_template
        tokenizer = getattr(processor_or_template, "tokenizer", None)
        if not template:
            raise ValueError(f"{source or 'the processor'} has no chat template; {_WHAT_TO_DO}")
    return render_chat(template, messages, add_generation_prompt=True, tokenizer=tokenizer,
                       source=source or "chat template")  # fmt: skip


@dataclass(frozen=True)
class ChatConventions:
    """What one chat template does (see the module docstring). Round-trips through `to_dict`."""

    arch: str
    generation_prompt: str
    opens: str
    default_system: str | None
    image_placeholder: str
    end_of_turn: str
    after_end_of_turn: str

    @property
    def opens_think(self) -> bool:
        return self.opens.startswith(THINK_OPEN)

    @property
    def target_suffix(self) -> str:
        """What every training target ends with: the end-of-turn token and what the template writes after it."""
        return self.end_of_turn + self.after_end_of_turn

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "opens_think": self.opens_think, "target_suffix": self.target_suffix}


def _probe(template: str, messages: list[dict[str, Any]], source: str, add_generation_prompt: bool = False) -> str:
    return render_chat(template, messages, add_generation_prompt=add_generation_prompt, source=source)


def chat_conventions(template: str, arch: str, *, source: str = "chat template") -> ChatConventions:
    """The conventions of `template` for a model of family `arch`, found by rendering probe
    conversations. ValueError naming `source` and what to do when vtcr cannot split the template
    into a prompt and a target (no generation prompt, assistant text rewritten, an end of turn that
    is not the family's)."""
    fam = family(arch)
    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"{source} is empty; {_WHAT_TO_DO}")
    system = {"role": "system", "content": [{"type": "text", "text": _SYSTEM_PROBE}]}
    user = {"role": "user", "content": [{"type": "text", "text": _USER_PROBE}]}

    without = _probe(template, [system, user], source)
    with_prompt = _probe(template, [system, user], source, add_generation_prompt=True)
    if not with_prompt.startswith(without) or len(with_prompt) == len(without):
        raise ValueError(
            f"{source} writes no generation prompt (add_generation_prompt=True does not append to the conversation), "
            f"so vtcr cannot tell where the model's turn starts; {_WHAT_TO_DO}"
        )
    generation_prompt = with_prompt[len(without) :]
    at = generation_prompt.find(THINK_OPEN)
    opens = generation_prompt[at:] if at >= 0 else ""

    full = _probe(template, [system, user, {"role": "assistant", "content": _ASSISTANT_PROBE}], source)
    end = full.rfind(_ASSISTANT_PROBE)
    if end < 0:
        raise ValueError(f"{source} does not write an assistant message's text, so vtcr cannot find its end of turn; {_WHAT_TO_DO}")
    tail = full[end + len(_ASSISTANT_PROBE) :]
    if tail.startswith(fam.eos_token):
        after = tail[len(fam.eos_token) :]
    elif not tail:  # the turn ends where the next one starts (GLM): the family's end-of-turn token closes it
        after = ""
    else:
        raise ValueError(
            f"{source} ends an assistant message with {tail!r}, not with {fam.eos_token!r} (the {arch} end-of-turn "
            f"token), so vtcr cannot tell the loss span of a training target; {_WHAT_TO_DO}"
        )

    alone = _probe(template, [user], source)
    head, _, rest = without.partition(_SYSTEM_PROBE)
    default_system = None
    if alone.startswith(head) and alone.endswith(rest) and len(alone) > len(head) + len(rest):
        default_system = alone[len(head) : len(alone) - len(rest)]

    items = [{"type": "text", "text": _BEFORE_IMAGE}, {"type": "image", "text": None}, {"type": "text", "text": _AFTER_IMAGE}]
    with_image = _probe(template, [{"role": "user", "content": items}], source)
    between = with_image.partition(_BEFORE_IMAGE)[2].partition(_AFTER_IMAGE)[0]
    if fam.image_token not in between:
        raise ValueError(
            f"{source} does not write the {arch} image token {fam.image_token!r} for an image item "
            f"(it writes {between!r}); {_WHAT_TO_DO}"
        )
    return ChatConventions(
        arch=arch, generation_prompt=generation_prompt, opens=opens, default_system=default_system,
        image_placeholder=between.strip(), end_of_turn=fam.eos_token, after_end_of_turn=after,
    )  # fmt: skip


def strip_opening(segment: str, conventions: ChatConventions) -> str:
    """`segment` without what the generation prompt already wrote (``<think>\\n``; a bare ``<think>``
    directly followed by text too)."""
    opens = conventions.opens
    if opens and segment.startswith(opens):
        return segment[len(opens) :]
    bare = opens.rstrip()
    if bare and segment.startswith(bare):
        return segment[len(bare) :]
    return segment


def training_target(segment: str, conventions: ChatConventions) -> str:
    """The text a training sample supervises: the segment the dataset holds (minus the opening the
    generation prompt wrote) and the end of turn (see the module docstring)."""
    return strip_opening(segment, conventions) + conventions.target_suffix


def round_text(generated: str, conventions_opens: str, round_index: int) -> str:
    """A round's text as build-data holds the same segment: the first round's starts with what the
    generation prompt opened (``<think>\\n``), later rounds' are what the model generated."""
    return conventions_opens + generated if round_index == 0 else generated
