"""Training samples of one built problem.

Sample k of a problem with n segments: system prompt, then the user turn (the question and the
pages of segments 0..k-1, in the fixed order of `vtcr.prompts`), then the assistant turn =
segment k (`turns[k]`). Pages are shared: segment j's pages appear in samples j+1..n-1.

Two shapes of the same sample:
- `sharegpt_sample`: LLaMA-Factory sharegpt (`messages` with string `content`, one `<image>` per
  image in the user content, `images` = paths relative to the build folder);
- `typed_sample`: transformers / TRL conversational form (content = list of typed parts), plus ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vtcr.prompts import user_content, user_parts


def sample_images(record: dict[str, Any], k: int) -> list[str]:
    """Relative paths of the pages sample k sees: every page of segments 0..k-1, in order."""
    return [page["file"] for pages in record["pages"][:k] for page in pages]


def sharegpt_sample(record: dict[str, Any], k: int, system_prompt: str) -> dict[str, Any]:
    images = sample_images(record, k)
    return {
        "messages": [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": user_content(record["question"], len(images))},
            {"role": "assistant", "content": record["turns"][k]},
        ],
        "images": images,
    }


def typed_sample(record: dict[str, Any], k: int, system_prompt: str) -> dict[str, Any]:
    images = sample_images(record, k)
    return {
        "id": f"{record['id']}/{k}",
        "problem_id": record["id"],
        "segment_index": k,
        "num_segments": len(record["turns"]),
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
            {"role": "user", "content": user_parts(record["question"], len(images))},
            {"role": "assistant", "content": [{"type": "text", "text": record["turns"][k]}]},
        ],
        "images": images,
    }


def iter_samples(record: dict[str, Any], system_prompt: str, typed: bool = False) -> Iterator[dict[str, Any]]:
    make = typed_sample if typed else sharegpt_sample
    for k in range(len(record["turns"])):
        yield make(record, k, system_prompt)
