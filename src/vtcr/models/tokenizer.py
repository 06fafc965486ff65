"""Fit a tokenizer to an architecture family (loading is `vtcr.tokens.load_tokenizer`)."""

from __future__ import annotations

from typing import Any

from .architectures import TokenIds, family


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def prepare_tokenizer(tokenizer: Any, arch: str, published_vocab_size: int | None = None) -> TokenIds:
    """Make `tokenizer` speak `arch`'s chat format, in place, and return the ids the config needs.

    Adds the family's control tokens that are missing (as special tokens) and ``<think>``/``</think>``
    (as normal added tokens, so decoding keeps them), sets eos/pad to the family's, and installs
    the family's chat template. The vocabulary is the published one when the tokenizer fits in
    it, otherwise the tokenizer's largest id + 1 rounded up to a multiple of 64.
    """
    from transformers import AddedToken

    from .chat_template import chat_template

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
    tokenizer.eos_token = fam.eos_token
    tokenizer.pad_token = fam.pad_token
    tokenizer.chat_template = chat_template(arch)

    def tid(token: str) -> int:
        ids = tokenizer.convert_tokens_to_ids([token])
        if not ids or ids[0] is None or ids[0] == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no id for {token!r} after adding it")
        return int(ids[0])

    published = published_vocab_size or fam.published_vocab_size
    top = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)  # ids may have holes
    vocab_size = published if top <= published else _round_up(top, 64)
    ids = TokenIds(
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
    return ids
