"""The prompts VTC-R1 trains and reasons with, and THE fixed order of a user turn.

Training data (`vtcr.data`) and the reasoning engine import these, so a model is always asked the
way it was trained.

User-turn order (fixed): the question text first, then the page images of earlier rounds in round
order -- every page of round 0 (top to bottom), then every page of round 1, and so on. In
placeholder form (LLaMA-Factory sharegpt) that is the question immediately followed by one
`<image>` per page, with no separator; in typed-parts form (transformers / TRL chat templates) it is
one text part followed by one image part per page. The paper's two scripts disagree (images before
the question in one, after it in the other); vtcr always uses question-then-images, which is also
what its reference inference script sends.
"""

from __future__ import annotations

SYSTEM_PROMPT = (
    "These images record your previous reasoning process. Based on this reasoning, continue and "
    "complete the final answer. Do not restart the reasoning.\n"
    "If no images are provided, start the reasoning from scratch."
)

# LLaMA-Factory's image placeholder: one per image, replaced by the model's image tokens.
IMAGE_PLACEHOLDER = "<image>"


def _check(question: str, n_images: int) -> None:
    if not isinstance(question, str):
        raise ValueError(f"question must be a str, got {type(question).__name__}")
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 0:
        raise ValueError(f"n_images must be a non-negative int, got {n_images!r}")


def user_content(question: str, n_images: int) -> str:
    """The user turn as one string: the question, then `n_images` `<image>` placeholders."""
    _check(question, n_images)
    return question + IMAGE_PLACEHOLDER * n_images


def user_parts(question: str, n_images: int) -> list[dict]:
    """The same user turn as typed chat parts: one text part, then `n_images` image parts.

    Every part has both keys (`text` is None for images) so a batch of them has one schema.
    """
    _check(question, n_images)
    return [{"type": "text", "text": question}] + [{"type": "image", "text": None} for _ in range(n_images)]
