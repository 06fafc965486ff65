"""The run record: what happened to one problem, round by round (JSON, one object per problem).

    {"question", "mode", "model", "answer", "finished", "error", "stop_reason", "seconds",
     "seed", "config", "rounds": [{"text", "generated_tokens", "images", "vision_tokens",
     "prompt_tokens", "prefill_tokens", "finish_reason", "generate_s", "preprocess_s", "render_s",
     "pages", "prefill_s"}, ...]}

`images`: how many images the round was given; `pages`: how many pages its own text became (0 when
it was not rendered: the last round, or modes without optical memory). `stop_reason`: "answer"
(finished), "max_rounds", "empty_round" (a round produced no text: nothing to render or continue),
"length" / "no_answer" (``standard`` hit its token limit / ended its turn without an answer) or
"error". Page images stay in memory only when the
config asks for them (`save_images`) and are written by `write_run`, never by the loop itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from vtcr._io import write_json_atomic

STOP_REASONS = ("answer", "max_rounds", "empty_round", "length", "no_answer", "error")


@dataclass
class RoundRecord:
    text: str
    generated_tokens: int
    images: int
    vision_tokens: int
    prompt_tokens: int
    prefill_tokens: int
    finish_reason: str
    generate_s: float
    preprocess_s: float = 0.0
    render_s: float = 0.0
    pages: int = 0
    prefill_s: float | None = None  # prefill part of generate_s, when the backend measures it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunRecord:
    question: str
    mode: str
    model: str
    answer: str | None = None
    finished: bool = False
    error: str | None = None
    stop_reason: str | None = None
    seconds: float = 0.0
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    rounds: list[RoundRecord] = field(default_factory=list)
    # Pages rendered from each round's text (round i -> its pages); kept only with save_images.
    page_images: list[list[Any]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("rounds", "page_images")}
        out["rounds"] = [r.to_dict() for r in self.rounds]
        return out

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        known = {f.name for f in fields(cls)} - {"rounds", "page_images"}
        round_keys = {f.name for f in fields(RoundRecord)}
        rounds = [RoundRecord(**{k: v for k, v in r.items() if k in round_keys}) for r in data.get("rounds", [])]
        return cls(**{k: v for k, v in data.items() if k in known}, rounds=rounds)

    @property
    def generated_tokens(self) -> int:
        return sum(r.generated_tokens for r in self.rounds)

    @property
    def response(self) -> str:
        """All rounds' text, concatenated: the reasoning as the grader sees it."""
        return "".join(r.text for r in self.rounds)


def save_round_pages(page_images: list[list[Any]], out_dir: str | os.PathLike, rel_dir: str) -> list[list[str]]:
    """Write each round's pages as `out_dir/rel_dir/round_01_page_001.png`, ... (the one naming
    scheme, `vtcr._io.page_file_name`); returns their paths relative to `out_dir`, per round."""
    from vtcr.render import save_pages

    out = Path(out_dir)
    return [
        [str(p.relative_to(out)) for p in save_pages(pages, out / rel_dir, round_index=k)]
        for k, pages in enumerate(page_images, start=1)
    ]


def write_run(record: RunRecord, out_dir: str | os.PathLike, name: str = "run") -> Path:
    """Write `out_dir/{name}.json` and, when the record holds page images, the pages as
    `out_dir/{name}_pages/round_01_page_001.png`, ... Returns the JSON path."""
    out = Path(out_dir)
    data = record.to_dict()
    for rnd, files in zip(data["rounds"], save_round_pages(record.page_images, out, f"{name}_pages")):
        rnd["page_files"] = files
    return write_json_atomic(out / f"{name}.json", data)
