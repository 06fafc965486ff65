"""The reading experiment's layouts (perf/builtin_reading.py): what its alignment labels rely on.

The `aligned` arm trains the vision tower so that token (row r, column c) of an isolated-layout
page comes out as the embedding of line r's state digit in column c. These tests render real pages
and check that those tokens hold that one digit and nothing else, and that the isolated layout is
the built-in models' own (recipe v6).
"""

from __future__ import annotations

import random

import numpy as np

from perf.builtin_reading import ISOLATED, LINES, TOKEN_PX, page
from vtcr.builtin.recipe import LINE_TOKENS, builtin_render_config
from vtcr.render import get_renderer


def _ink(img) -> np.ndarray:
    return np.asarray(img.convert("L")) < 200


def test_isolated_layout_puts_each_state_digit_alone_in_its_vision_token():
    renderer, rng = get_renderer(ISOLATED.render_config()), random.Random(7)
    for _ in range(20):
        img, states = page(ISOLATED, renderer, rng)
        assert img.size == ISOLATED.page  # multiples of 32 px: the processor keeps the page as it is
        ink = _ink(img)
        for r in range(LINES):
            for c in ISOLATED.state_cols:
                cell = ink[r * TOKEN_PX:(r + 1) * TOKEN_PX, c * TOKEN_PX:(c + 1) * TOKEN_PX]
                cols, rows = np.where(cell.any(0))[0], np.where(cell.any(1))[0]
                assert cols.size and cols.max() - cols.min() <= 8, (r, c)  # one digit wide
                # Line r's glyph (~10 px tall); the line below may reach the token's last pixel row.
                body = rows[rows < TOKEN_PX - 1]
                assert body.max() - body.min() <= 11, (r, c)
                assert cell[TOKEN_PX - 1].sum() <= 6  # at most the top pixel row of one digit
            # the token column before the state holds the line's "->", never a state digit
            left = ink[r * TOKEN_PX:(r + 1) * TOKEN_PX, ISOLATED.state_cols[0] * TOKEN_PX - 4:ISOLATED.state_cols[0] * TOKEN_PX]
            assert not left.any()
        # and each line's state is the digits the labels say: the line text ends with them
        assert all(len(s) == 3 and s.isdigit() for s in states)


def test_the_same_digit_renders_the_same_token_on_every_line_and_page():
    """What the alignment needs to be learnable: a digit's token looks the same wherever it sits
    (up to the 2-px drift of the 30-px line pitch against 32-px tokens)."""
    renderer, rng = get_renderer(ISOLATED.render_config()), random.Random(3)
    seen: dict[tuple[str, int], np.ndarray] = {}
    for _ in range(10):
        img, states = page(ISOLATED, renderer, rng)
        ink = _ink(img)
        for r, state in enumerate(states):
            for k, c in enumerate(ISOLATED.state_cols):
                cell = ink[r * TOKEN_PX:(r + 1) * TOKEN_PX - 1, c * TOKEN_PX:(c + 1) * TOKEN_PX]
                glyph = cell[:, cell.any(0)][cell.any(1)]
                key = (state[k], k)
                if key in seen and seen[key].shape == glyph.shape:
                    assert (seen[key] == glyph).mean() > 0.9
                seen.setdefault(key, glyph)
    assert len({d for d, _ in seen}) == 10


def test_isolated_layout_is_the_builtin_models_own():
    from vtcr.data.synthetic import state_text

    ours, shipped = ISOLATED.render_config().to_dict(), builtin_render_config().to_dict()
    assert ours == shipped
    text, state = ISOLATED.line(random.Random(0))
    assert text.endswith(f" ->{state_text(*map(int, state))}\n") and len(text) == LINE_TOKENS  # the task line, newline included
