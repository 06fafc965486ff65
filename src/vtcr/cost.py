"""What optical memory saves: text tokens of a text vs vision tokens of its rendered pages.

    report = measure_compression(text, preset("dense"), tokenizer=load_tokenizer(path))
    report.models["qwen3-vl"].ratio   # text tokens per vision token
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .render import DEFAULT_BACKEND, RenderConfig, get_renderer
from .tokens import BUILTIN_TOKENIZER, FAMILIES, compression_ratio, count_text_tokens, load_tokenizer, vision_tokens

def resolve_tokenizer(path_or_id: str | None) -> Any:
    """`None` -> the bundled Qwen3 tokenizer ("builtin:qwen3"); otherwise `load_tokenizer`."""
    return load_tokenizer(path_or_id or BUILTIN_TOKENIZER)


@dataclass(frozen=True)
class ModelCost:
    vision_tokens: int
    ratio: float  # text tokens per vision token; NaN when nothing was rendered


@dataclass(frozen=True)
class CompressionReport:
    chars: int
    text_tokens: int
    pages: int
    sizes: list[tuple[int, int]]
    models: dict[str, ModelCost] = field(default_factory=dict)
    render_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The `vtcr compress --json` contract."""
        return {
            "chars": self.chars,
            "text_tokens": self.text_tokens,
            "pages": self.pages,
            "models": {
                family: {"vision_tokens": cost.vision_tokens,
                         "ratio": None if cost.ratio != cost.ratio else round(cost.ratio, 4)}
                for family, cost in self.models.items()
            },
        }


def measure_compression(text: str, config: RenderConfig, tokenizer: Any, *, backend: str = DEFAULT_BACKEND,
                        families: tuple[str, ...] = FAMILIES) -> CompressionReport:
    start = time.perf_counter()
    pages = get_renderer(config, backend).render(text)
    seconds = time.perf_counter() - start
    sizes = [img.size for img in pages]
    text_tokens = count_text_tokens(text, tokenizer) if text else 0
    models = {}
    for family in families:
        vt = sum(vision_tokens(size, family) for size in sizes)
        models[family] = ModelCost(vt, compression_ratio(text_tokens, vt))
    return CompressionReport(len(text), text_tokens, len(pages), sizes, models, seconds)
