"""The engine's configuration, its five modes, and the one rule that ends a run.

Modes (what round k, counted from 1, sends to the model):

- ``vtc`` (VTC-R1): system prompt `vtcr.prompts.SYSTEM_PROMPT`, then the user turn in the fixed
  order of `vtcr.prompts` -- the question, then every page of rounds 1..k-1 in round order. At most
  `round_tokens` new tokens. A round that does not end the run is rendered with the model's render
  preset and its pages are appended.
- ``standard`` (the baseline): one round, the question only, one long text context of
  `max_rounds * round_tokens` new tokens. No optical-memory system prompt (`standard_system_prompt`,
  default none, sets one).
- ``text`` (ablation: iteration without rendering): the same segmentation as ``vtc``, but earlier
  rounds stay text. Round k continues one assistant turn that already holds the concatenated text of
  rounds 1..k-1 (`GenerationRequest.assistant_prefix`), each round at most `round_tokens` new tokens.
  System prompt as in ``standard``.
- ``no-memory`` (the paper's ablation): like ``vtc``, but pages are never appended: every round sees
  only the system prompt and the question.
- ``blank-memory`` (control: is what is written on the pages read?): like ``vtc`` -- the same rounds
  rendered, the same number of pages of the same size in the same places -- but every page is sent
  blank (its background colour only). A model that reads its pages falls to ``no-memory``'s level
  here; one that scores as in ``vtc`` uses only how many pages there are (the round number), not
  what they say. ``no-memory`` alone cannot tell these apart.

Every mode uses the chat template's plain generation prompt (no ``enable_thinking``): a VTC-R1
model writes its own ``<think>``, as its training samples do, and a round's text is what the model
generated -- except that a generation prompt that already opens ``<think>\\n`` (Qwen3-VL Thinking)
puts it in front of the first round's text (`vtcr.engine.loop`), as build-data's first segment has it.

A run ends when the text after the last ``</think>`` holds a non-empty ``<answer>...</answer>`` (a
final ``\\boxed{}`` or GLM ``<|begin_of_box|>…<|end_of_box|>`` after ``</think>`` also counts, unless `boxed_counts_as_final` is off), when a round
is empty (nothing to render or continue), or after `max_rounds` rounds (``finished: false``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from typing import Any

from vtcr.grade import ANSWER_TYPES, last_answer_box
from vtcr.prompts import SYSTEM_PROMPT, user_parts

MODES = ("vtc", "standard", "text", "no-memory", "blank-memory")
PAGE_MODES = ("vtc", "blank-memory")  # modes that render each round and send pages

_THINK_CLOSE = "</think>"
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class EngineConfig:
    """How one problem is reasoned about. Round-trips through JSON (`to_json` / `from_json`).

    render_preset / render_config: the pages of optical memory (a preset name, or a RenderConfig /
    its Glyph JSON dict); neither: the model's own (its vtcr.json, or what `vtcr serve` reports), else
    the paper's layout with a warning (`vtcr.render.resolve_render_config`). A run record's config
    holds the one used. system_prompt: the optical-memory prompt of ``vtc`` / ``no-memory`` (None: no
    system turn). standard_system_prompt: the system turn of ``standard`` and ``text``. answer_type:
    how `answer` is extracted (`vtcr.grade.extract_answer`): "math" or "multiple_choice".
    """

    mode: str = "vtc"
    max_rounds: int = 8
    round_tokens: int = 8192
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 0
    boxed_counts_as_final: bool = True
    render_preset: str | None = None
    render_config: Any = None  # RenderConfig | None (a Glyph JSON dict is converted)
    save_images: bool = False
    system_prompt: str | None = SYSTEM_PROMPT
    standard_system_prompt: str | None = None
    answer_type: str = "math"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        for name in ("max_rounds", "round_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"unknown answer_type {self.answer_type!r}; expected one of {', '.join(ANSWER_TYPES)}")
        from vtcr.render import preset, render_config

        if self.render_preset is not None:
            named = preset(self.render_preset)  # ValueError naming the known presets
        if self.render_config is not None:
            config = render_config(self.render_config)
            if self.render_preset is not None and config != named:
                raise ValueError(f"render_config differs from render preset {self.render_preset!r}: give one of them")
            object.__setattr__(self, "render_config", config)

    @property
    def render(self) -> Any:
        """What this config asks to render with (a RenderConfig or preset name), or None: the model's."""
        return self.render_config if self.render_config is not None else self.render_preset

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.render_config is not None:
            out["render_config"] = self.render_config.to_dict()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown EngineConfig keys: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> EngineConfig:
        return cls.from_dict(json.loads(text))

    @property
    def tokens_per_round(self) -> int:
        return self.max_rounds * self.round_tokens if self.mode == "standard" else self.round_tokens


def is_final(text: str, boxed_counts_as_final: bool = True) -> bool:
    """True when `text` ends the run: after its last ``</think>``, a non-empty ``<answer>`` (or a
    non-empty final ``\\boxed{}`` when `boxed_counts_as_final`).

    Text without any ``</think>`` counts as all "after" for ``<answer>`` tags (models rarely write
    them while thinking), but a ``\\boxed{}`` there is a step of the reasoning, never final.
    Pass the text of all rounds so far: a ``</think>`` closed in an earlier round still counts.
    """
    cut = text.rfind(_THINK_CLOSE)
    tail = text if cut < 0 else text[cut + len(_THINK_CLOSE) :]
    if any(inner.strip() for inner in _ANSWER.findall(tail)):
        return True
    return boxed_counts_as_final and cut >= 0 and last_answer_box(tail) is not None


def check_question(question: Any, where: str = "question") -> str:
    if not isinstance(question, str):
        raise ValueError(f"{where} must be a str, got {type(question).__name__}")
    if not question.strip():
        raise ValueError(f"{where} is empty: nothing to reason about")
    return question


def round_messages(config: EngineConfig, question: str, pages: list) -> list[dict[str, Any]]:
    """The chat messages of one round: system turn (per mode), then the user turn in the fixed order
    of `vtcr.prompts.user_parts` with the PIL pages attached to the image parts."""
    system = config.system_prompt if config.mode in ("vtc", "no-memory", "blank-memory") else config.standard_system_prompt
    parts = user_parts(question, len(pages))
    for part, page in zip(parts[1:], pages):
        part["image"] = page
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": parts})
    return messages
