"""Split a reasoning trace into segments of at most N tokens, losslessly.

A trace is `OPENER REASONING </think> REST`: the opener is everything up to and including `<think>`
(usually just `<think>`), the rest is the solution summary. `split_reasoning` cuts REASONING so
that `"".join(segments) == reasoning` exactly, every segment is non-empty and at most `max_tokens`
tokens of the given tokenizer. Cut preference, strongest first:

0. paragraph breaks (a blank line; the blank line stays at the end of the earlier segment),
1. sentence ends (`.`/`!`/`?` followed by spaces) and line breaks,
2. spaces between words,
3. sentence/line cuts, then 4. space cuts, inside a formula (`$…$`, `$$…$$`, `\\[…\\]`, `\\(…\\)`),
5. a hard cut at the longest prefix that fits (only when no separator exists at all).

Levels 0-2 never cut inside a formula; levels 3-4 are used only for a stretch of formula longer
than a whole segment. No cut leaves a piece of only whitespace (a blank run joins the text after
it), so no segment is empty or blank unless a single blank run is longer than a segment. Pieces are packed greedily; when a segment must close, it closes at its strongest
boundary that keeps it at least half full. Token counts of the joined segments are re-checked
with the tokenizer, because BPE merges across a cut can differ from the sum of the pieces.

`assistant_turns` then makes the training targets: the opener is prepended to segment 0, and the
last segment gets `</think>`, the solution summary (when the trace has one) and
`<answer>GOLD</answer>` -- the shape the reasoning engine treats as final.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Sky-T1 / NovaSky tags: mapped to <think> form by `normalize_trace` (documented rule).
SKY_THOUGHT = ("<|begin_of_thought|>", "<|end_of_thought|>")
SKY_SOLUTION = ("<|begin_of_solution|>", "<|end_of_solution|>")

CountFn = Callable[[Sequence[str]], list[int]]

# Cut *after* each match. Paragraph: a newline, then one or more blank lines.
_PARAGRAPH = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")
_SENTENCE_OR_LINE = re.compile(r"(?<=[.!?。！？])[ \t]+|\n")
_WORD = re.compile(r"[ \t]+")
# Cut levels, strongest first: (pattern, may cut inside a formula). Past the last: a hard cut.
_LEVELS = (
    (_PARAGRAPH, False),
    (_SENTENCE_OR_LINE, False),
    (_WORD, False),
    (_SENTENCE_OR_LINE, True),
    (_WORD, True),
)
_HARD_LEVEL = len(_LEVELS)

# Display math first so `$$…$$` is not read as two empty inline formulas. Inline `$…$` may not
# span a blank line: an unpaired dollar (a price) then cannot swallow the rest of the trace.
_FORMULA = re.compile(
    r"\$\$.+?\$\$"
    r"|\\\[.+?\\\]"
    r"|\\\(.+?\\\)"
    r"|(?<![\\$])\$(?:\\.|[^$\\\n]|\n(?![ \t]*\n))+?\$",
    re.DOTALL,
)

MIN_SEGMENT_TOKENS = 16


@dataclass(frozen=True)
class TraceParts:
    """A generation split at its first `</think>`: opener + reasoning + `</think>` + rest."""

    opener: str
    reasoning: str
    rest: str

    def text(self) -> str:
        return self.opener + self.reasoning + THINK_CLOSE + self.rest


def normalize_trace(text: str) -> str:
    """Map a Sky-T1 generation to `<think>` form; any other text is returned unchanged.

    Rule (applied only when the text has no `</think>` but has `<|end_of_thought|>`):
    `<think>\\n{thought}\\n</think>\\n\\n{solution}`, where thought is the text between
    `<|begin_of_thought|>` (or the start) and `<|end_of_thought|>`, and solution is the text after
    it with the solution tags removed, both stripped of surrounding whitespace. This is exactly
    how the shared traces' `r1_style` field was made from their `trace` field.
    """
    if THINK_CLOSE in text or SKY_THOUGHT[1] not in text:
        return text
    head, _, tail = text.partition(SKY_THOUGHT[1])
    thought = head.split(SKY_THOUGHT[0], 1)[-1]
    solution = tail.replace(SKY_SOLUTION[0], "").replace(SKY_SOLUTION[1], "")
    return f"{THINK_OPEN}\n{thought.strip()}\n{THINK_CLOSE}\n\n{solution.strip()}"


def split_trace(text: str) -> TraceParts | None:
    """The parts of a `<think>…</think>…` generation, or None when it has no `</think>`.

    Splits at the first `</think>`; the opener ends after the first `<think>` before it (empty
    when the generation has no opening tag, as some R1 outputs do).
    """
    close = text.find(THINK_CLOSE)
    if close < 0:
        return None
    open_at = text.find(THINK_OPEN, 0, close)
    start = 0 if open_at < 0 else open_at + len(THINK_OPEN)
    return TraceParts(opener=text[:start], reasoning=text[start:close], rest=text[close + len(THINK_CLOSE) :])


def final_tail(rest: str, answer: str) -> str:
    """What follows the reasoning in the last segment: `</think>`, summary, `<answer>GOLD</answer>`."""
    summary = rest.strip()
    body = f"\n\n{summary}" if summary else ""
    return f"{THINK_CLOSE}{body}\n\n<answer>{answer.strip()}</answer>"


def assistant_turns(parts: TraceParts, segments: Sequence[str], answer: str) -> list[str]:
    """Training targets, one per round: segment k, with the opener on round 0 and the tail on the last."""
    if not segments:
        raise ValueError("assistant_turns needs at least one segment")
    turns = list(segments)
    turns[0] = parts.opener + turns[0]
    turns[-1] = turns[-1] + final_tail(parts.rest, answer)
    return turns


def formula_spans(text: str) -> list[tuple[int, int]]:
    """Half-open [start, end) character spans of the math formulas in `text`, in order."""
    return [m.span() for m in _FORMULA.finditer(text)]


def _inside(pos: int, starts: list[int], spans: list[tuple[int, int]]) -> bool:
    i = bisect.bisect_right(starts, pos) - 1
    return i >= 0 and spans[i][0] < pos < spans[i][1]


@dataclass(frozen=True)
class _Piece:
    start: int
    end: int
    tokens: int
    level: int  # strength of the cut at `end` (0 strongest); the last piece's end is the text end


def _cuts(text: str, start: int, end: int, pattern: re.Pattern, avoid: Callable[[int], bool] | None) -> list[int]:
    cuts: list[int] = []
    prev = start
    for match in pattern.finditer(text, start, end):
        pos = match.end()
        if not start < pos < end or (avoid is not None and avoid(pos)):
            continue
        if text[prev:pos].strip():  # a blank piece would be a blank segment: glue it to the next
            cuts.append(pos)
            prev = pos
    if cuts and not text[cuts[-1] : end].strip():
        cuts.pop()
    return cuts


def _hard_cut(text: str, start: int, end: int, max_tokens: int, count: CountFn) -> int:
    """The end of the longest prefix of text[start:end] with at most max_tokens tokens (> start)."""
    lo, hi = start + 1, end - 1  # the whole span is known to be too long
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count([text[start:mid]])[0] <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _pieces(
    text: str, start: int, end: int, tokens: int, level: int, max_tokens: int, count: CountFn, avoid
) -> list[_Piece]:
    """Split text[start:end] (known to have `tokens` tokens) into pieces of <= max_tokens each."""
    if tokens <= max_tokens:
        return [_Piece(start, end, tokens, _HARD_LEVEL)]
    cuts: list[int] = []
    while not cuts and level < _HARD_LEVEL:
        pattern, in_formula = _LEVELS[level]
        cuts = _cuts(text, start, end, pattern, None if in_formula else avoid)
        if not cuts:
            level += 1
    if not cuts:
        cuts = [_hard_cut(text, start, end, max_tokens, count)]
    bounds = [start, *cuts, end]
    spans = list(zip(bounds, bounds[1:]))
    counts = count([text[a:b] for a, b in spans])
    out: list[_Piece] = []
    for (a, b), n in zip(spans, counts):
        sub = _pieces(text, a, b, n, min(level + 1, _HARD_LEVEL), max_tokens, count, avoid)
        # Every inner cut of this span is a level-`level` cut; keep the finer cuts' own levels.
        out.extend(sub[:-1])
        out.append(_Piece(sub[-1].start, sub[-1].end, sub[-1].tokens, level if b != end else _HARD_LEVEL))
    return out


def _close_at(segment: list[_Piece], max_tokens: int) -> int:
    """How many pieces of a full segment to keep: its strongest boundary that is at least half full."""
    best, best_level, filled = len(segment), segment[-1].level, 0
    for i, piece in enumerate(segment, 1):
        filled += piece.tokens
        if 2 * filled >= max_tokens and piece.level <= best_level and i < len(segment):
            best, best_level = i, piece.level
    if segment[-1].level <= best_level:
        best = len(segment)
    return best


def _pack(pieces: list[_Piece], max_tokens: int) -> list[list[_Piece]]:
    segments: list[list[_Piece]] = []
    current: list[_Piece] = []
    filled = 0
    for piece in pieces:
        while current and filled + piece.tokens > max_tokens:
            keep = _close_at(current, max_tokens)
            segments.append(current[:keep])
            current = current[keep:]
            filled = sum(p.tokens for p in current)
        current.append(piece)
        filled += piece.tokens
    if current:
        segments.append(current)
    return segments


def _merge_blank(segments: list[str], max_tokens: int, count: CountFn) -> list[str]:
    """Fold whitespace-only segments (a stray line break between two full segments) into a
    neighbour, previous first, whenever the merged text still fits."""
    out: list[str] = []
    i = 0
    while i < len(segments):
        seg = segments[i]
        if not seg.strip() and len(segments) > 1:
            if out and count([out[-1] + seg])[0] <= max_tokens:
                out[-1] += seg
                i += 1
                continue
            if i + 1 < len(segments) and count([seg + segments[i + 1]])[0] <= max_tokens:
                segments[i + 1] = seg + segments[i + 1]
                i += 1
                continue
        out.append(seg)
        i += 1
    return out


def split_reasoning(reasoning: str, max_tokens: int, count: CountFn) -> list[str]:
    """Lossless split of `reasoning` into non-empty segments of at most `max_tokens` tokens each.

    `count(texts) -> list[int]` counts tokens of each text (e.g. `vtcr.tokens.count_text_tokens`
    with the target model's tokenizer). An empty reasoning gives no segments.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < MIN_SEGMENT_TOKENS:
        raise ValueError(f"segment tokens must be an int >= {MIN_SEGMENT_TOKENS}, got {max_tokens!r}")
    if not reasoning:
        return []
    spans = formula_spans(reasoning)
    starts = [s for s, _ in spans]

    def avoid(pos: int) -> bool:
        return _inside(pos, starts, spans)

    total = count([reasoning])[0]
    pieces = _pieces(reasoning, 0, len(reasoning), total, 0, max_tokens, count, avoid)
    groups = _pack(pieces, max_tokens)
    # Re-check real counts: move trailing pieces on while a joined segment is over the limit.
    i = 0
    while i < len(groups):
        text = reasoning[groups[i][0].start : groups[i][-1].end]
        if len(groups[i]) > 1 and count([text])[0] > max_tokens:
            moved = groups[i].pop()
            if i + 1 == len(groups):
                groups.append([])
            groups[i + 1].insert(0, moved)
            continue
        i += 1
    segments = _merge_blank([reasoning[g[0].start : g[-1].end] for g in groups if g], max_tokens, count)
    assert "".join(segments) == reasoning, "segmentation must be lossless"
    return segments
