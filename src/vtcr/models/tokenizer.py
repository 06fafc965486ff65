"""Fit a tokenizer to an architecture family (loading is `vtcr.tokens.load_tokenizer`).

`load_family_tokenizer` also knows ``builtin:glm-4.1v``: a STAND-IN for GLM-4.1V's tokenizer, whose
files are not available offline. It is the real Qwen3 vocabulary (``builtin:qwen3``) plus GLM-4.1V's
control tokens as its chat template writes them (``[gMASK]``, ``<sop>``, ``<|system|>``, ``<|user|>``,
``<|assistant|>``, ``<|begin_of_image|>``, ``<|image|>``, ``<|end_of_image|>``, ...) and the tokens its
model writes (``<think>``, ``</think>``, ``<|begin_of_box|>``, ``<|end_of_box|>``). Text tokenizes
differently from the real GLM tokenizer and the ids are not GLM's; the chat format and every
control token are GLM's, which is what prompts, loss spans and stop rules depend on.
"""

from __future__ import annotations

from typing import Any

from .architectures import TokenIds, family

GLM_STAND_IN = "builtin:glm-4.1v"


def _add_family_tokens(tokenizer: Any, arch: str) -> None:
    """Add `arch`'s control tokens (special) and model-written tokens (plain) that `tokenizer` lacks."""
    from transformers import AddedToken

    fam = family(arch)
    vocab = tokenizer.get_vocab()
    missing_special = [t for t in fam.special_tokens if t not in vocab]
    if missing_special:
        tokenizer.add_tokens(
            [AddedToken(t, special=True, normalized=False) for t in missing_special], special_tokens=True
        )
    missing_plain = [t for t in fam.plain_tokens if t not in tokenizer.get_vocab()]
    if missing_plain:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in missing_plain])


def load_family_tokenizer(path_or_id: Any) -> Any:
    """`vtcr.tokens.load_tokenizer`, plus the GLM-4.1V stand-in ``builtin:glm-4.1v`` (module docstring)."""
    from vtcr.tokens import BUILTIN_TOKENIZER, load_tokenizer

    if str(path_or_id) == GLM_STAND_IN:
        tokenizer = load_tokenizer(BUILTIN_TOKENIZER)
        _add_family_tokens(tokenizer, "glm-4.1v")
        fam = family("glm-4.1v")
        tokenizer.eos_token, tokenizer.pad_token = fam.eos_token, fam.pad_token
        return tokenizer
    return load_tokenizer(path_or_id)


def missing_family_tokens(tokenizer: Any, arch: str) -> list[str]:
    """The control and model-written tokens of `arch` that `tokenizer` does not have as one token."""
    fam = family(arch)
    vocab = tokenizer.get_vocab()
    return [t for t in (*fam.special_tokens, *fam.plain_tokens) if t not in vocab]


def check_family_tokens(tokenizer: Any, arch: str, name: str) -> None:
    """ValueError naming the tokens of `arch` that tokenizer `name` lacks (a real checkpoint's
    template and model need every one of them as a single token)."""
    missing = missing_family_tokens(tokenizer, arch)
    if missing:
        hint = f"; offline, `--tokenizer {GLM_STAND_IN}` is a stand-in that has them" if arch == "glm-4.1v" else ""
        raise ValueError(
            f"tokenizer {name} lacks {len(missing)} of the {arch} tokens the checkpoint's chat template and model use: "
            f"{', '.join(missing)}. Use the checkpoint's own tokenizer{hint}"
        )


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def prepare_tokenizer(tokenizer: Any, arch: str, published_vocab_size: int | None = None) -> TokenIds:
    """Make `tokenizer` speak `arch`'s chat format, in place, and return the ids the config needs.

    Adds the family's control tokens that are missing (as special tokens) and ``<think>``/``</think>``
    (as normal added tokens, so decoding keeps them), sets eos/pad to the family's, and installs
    the family's chat template. The vocabulary is the published one when the tokenizer fits in
    it, otherwise the tokenizer's largest id + 1 rounded up to a multiple of 64.
    """
    from .chat_template import chat_template

    fam = family(arch)
    _add_family_tokens(tokenizer, arch)
    tokenizer.eos_token = fam.eos_token
    tokenizer.pad_token = fam.pad_token
    tokenizer.chat_template = chat_template(arch)
    return token_ids(tokenizer, arch, published_vocab_size)


def token_ids(tokenizer: Any, arch: str, published_vocab_size: int | None = None) -> TokenIds:
    """The ids of `arch`'s control tokens in `tokenizer` and the vocabulary size a config needs."""
    fam = family(arch)

    def tid(token: str) -> int:
        ids = tokenizer.convert_tokens_to_ids([token])
        if not ids or ids[0] is None or ids[0] == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no id for {token!r} after adding it")
        return int(ids[0])

    published = published_vocab_size or fam.published_vocab_size
    top = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)  # ids may have holes
    vocab_size = published if top <= published else _round_up(top, 64)
    return TokenIds(
        vocab_size=vocab_size,
        image=tid(fam.image_token),
        video=tid(fam.video_token),
        image_start=tid(fam.image_start_token),
        image_end=tid(fam.image_end_token),
        video_start=tid(fam.video_start_token),
        video_end=tid(fam.video_end_token),
        pad=tid(fam.pad_token),
        bos=tokenizer.bos_token_id,
        stop=tuple(tid(t) for t in fam.stop_tokens),
    )
