"""How well an OCR reading matches the text drawn on a page: character, word, digit and operator
accuracy, with the inline newline marker handled honestly. Pure functions, no I/O.

Edit distances come from `rapidfuzz` (C++ Levenshtein with an edit script, bit-parallel, so a
10,000-character page aligns in milliseconds; difflib's matcher is not a minimal edit distance and
is quadratic in pure Python).

Both sides are normalised the same way first (`normalise`): runs of whitespace, line breaks
included, become one space (a flowed page breaks lines where the source has none, and a `<br/>`
page's line breaks are the source's newlines), and a few glyph shapes OCR engines write in
another code point are folded (curly quotes to straight ones, dash and minus shapes to "-",
ligatures to their letters). Nothing else is folded: a superscript read as a digit, a Greek
letter read as a Latin one, `I` read as `|` all count as errors.

The newline marker (`dense` draws each source newline as " ↵ "): the marker is not content, so
it is neither a character to get right nor a place to hide errors. The reference keeps each
marker as one private-use symbol MARK; the OCR text is aligned to it; at each marker only the
OCR characters aligned to the marker itself (substituted for it, for the spaces around it, or
inserted right next to it) that are symbols (not letters, digits or spaces), at most
`MARKER_MAX_CHARS` of them, are taken as the marker's reading and set aside. The marker then
counts as a word separator on both sides. Everything else -- a real character misread next to
a marker, a letter or digit where the marker is, a marker read as three symbols -- stays in the
OCR text and is scored against the reference without markers. The one ambiguity left: where a
real symbol sits next to a marker (`↵ +`) and the OCR gives only one `+`, the alignment cannot
tell a dropped marker from a dropped `+`, and the minimal alignment credits the `+`.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, fields

MARK = "\ue000"  # a private-use code point: stands for one newline marker in a reference text
MARKER_MAX_CHARS = 2  # OCR symbols one marker may be read as (observed: '#', '+', '«', '|', '#+')
DIGITS = frozenset("0123456789")
# What math reasoning needs besides digits (after folding, every minus and dash shape is "-").
OPERATORS = frozenset("+-=×÷*/^<>≤≥≠±·√()[]{}|\\_")

_FOLD = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
    "\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
})
_WS = re.compile(r"\s+")  # Python's whitespace, which includes no-break and other Unicode spaces


def normalise(text: str) -> str:
    """Fold glyph variants and collapse whitespace to single spaces (both sides get this)."""
    return _WS.sub(" ", text.translate(_FOLD)).strip()


def marked_reference(lines: list[str], marker: str | None) -> str:
    """The reference of one page from its drawn lines: each occurrence of the inline newline
    `marker` (None for real line breaks) becomes MARK, lines are joined by spaces."""
    text = " ".join(lines)
    if marker:
        text = text.replace(marker, MARK)
    return normalise(text)


@dataclass(frozen=True)
class PageScore:
    """Error counts of one page (or, summed with +, of many). Accuracies are 1 - errors / count,
    never below 0; a page's character and word errors are capped at its counts, so a page read as
    garbage scores 0 however long the garbage. Digit and operator errors are not capped per page
    (a digit invented on a page without digits still counts)."""

    chars: int = 0
    char_errors: int = 0
    words: int = 0
    word_errors: int = 0
    digits: int = 0
    digit_errors: int = 0
    operators: int = 0
    operator_errors: int = 0
    markers: int = 0
    markers_read: int = 0  # the marker came out as symbols, which were set aside
    markers_unread: int = 0  # nothing at all where the marker was
    marker_chars: int = 0  # OCR characters set aside as marker readings
    pages: int = 0
    unreadable_pages: int = 0  # the OCR returned no text at all

    def __add__(self, other: PageScore) -> PageScore:
        return PageScore(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @staticmethod
    def _rate(errors: int, count: int) -> float | None:
        return None if count == 0 else max(0.0, 1.0 - errors / count)

    @property
    def char_accuracy(self) -> float | None:
        return self._rate(self.char_errors, self.chars)

    @property
    def word_accuracy(self) -> float | None:
        return self._rate(self.word_errors, self.words)

    @property
    def digit_accuracy(self) -> float | None:
        return self._rate(self.digit_errors, self.digits)

    @property
    def operator_accuracy(self) -> float | None:
        return self._rate(self.operator_errors, self.operators)


def _levenshtein():
    """rapidfuzz's Levenshtein module (imported on first use, so `vtcr --help` never needs it)."""
    try:
        from rapidfuzz.distance import Levenshtein
    except ImportError:
        raise ImportError("OCR accuracy needs the PyPI package rapidfuzz: pip install 'vtcr[ocr]'") from None
    return Levenshtein


def _alignment_owners(src: str, dest: str) -> list[tuple[str, int]]:
    """For each dest character, what it is aligned to in a minimal edit script: ("eq", i) or
    ("sub", i) for source character i, ("ins", b) for an insertion just before source character b."""
    owners: list[tuple[str, int]] = []
    i = j = 0
    for op in _levenshtein().editops(src, dest):
        while i < op.src_pos and j < op.dest_pos:  # the stretch before an edit matches
            owners.append(("eq", i))
            i, j = i + 1, j + 1
        if op.tag == "replace":
            owners.append(("sub", i))
            i, j = i + 1, j + 1
        elif op.tag == "delete":
            i += 1
        else:
            owners.append(("ins", i))
            j += 1
    owners.extend(("eq", i + k) for k in range(len(dest) - j))
    return owners


def set_aside_markers(reference: str, ocr: str, max_chars: int = MARKER_MAX_CHARS) -> tuple[str, tuple[int, int, int]]:
    """The OCR text with the markers' readings replaced by word separators, and counts
    (markers read as symbols, markers with nothing where they were, characters set aside).
    `reference` and `ocr` are normalised; `reference` marks each marker with MARK."""
    marks = [i for i, ch in enumerate(reference) if ch == MARK]
    if not marks:
        return ocr, (0, 0, 0)
    owners = _alignment_owners(reference, ocr)
    by_source: dict[int, list[int]] = {}  # source index -> dest indices substituted/matched to it
    by_boundary: dict[int, list[int]] = {}  # boundary b -> dest indices inserted before source b
    for j, (kind, pos) in enumerate(owners):
        (by_boundary if kind == "ins" else by_source).setdefault(pos, []).append(j)
    positions = [pos for _, pos in owners]  # non-decreasing along the OCR text
    drop: set[int] = set()
    breaks: list[int] = []  # dest positions where a separator goes (before dest index p)
    read = unread = 0
    for m in marks:
        lo = m - 1 if m > 0 and reference[m - 1] == " " else m
        hi = m + 1 if m + 1 < len(reference) and reference[m + 1] == " " else m
        slot = [j for i in range(lo, hi + 1) for j in by_source.get(i, ())]
        slot += by_boundary.get(m, []) + by_boundary.get(m + 1, [])
        visible = sorted(j for j in set(slot) if not ocr[j].isspace() and j not in drop)
        taken = [j for j in visible if not ocr[j].isalnum()][:max_chars]
        drop.update(taken)
        read += bool(taken)
        unread += not visible
        # the separator goes after everything aligned up to and including the marker
        breaks.append(bisect_right(positions, m))
    chars = [" " if j in drop else ch for j, ch in enumerate(ocr)]
    for p in sorted(set(breaks), reverse=True):
        chars.insert(p, " ")
    return normalise("".join(chars)), (read, unread, len(drop))


def _class_errors(ref: str, hyp: str, members: frozenset[str]) -> tuple[int, int]:
    """(count, errors) of one character class: source members not matched exactly, plus OCR
    members that were inserted or stand where the source has a non-member."""
    owners = _alignment_owners(ref, hyp)
    matched = {pos for kind, pos in owners if kind == "eq"}
    count = sum(ch in members for ch in ref)
    missed = sum(1 for i, ch in enumerate(ref) if ch in members and i not in matched)
    spurious = sum(1 for j, (kind, pos) in enumerate(owners)
                   if hyp[j] in members and (kind == "ins" or (kind == "sub" and ref[pos] not in members)))
    return count, missed + spurious


def score_page(reference: str, ocr_text: str, max_marker_chars: int = MARKER_MAX_CHARS) -> PageScore:
    """Score one page: `reference` from `marked_reference`, `ocr_text` as the engine returned it."""
    hyp = normalise(ocr_text)
    markers = reference.count(MARK)
    hyp, (read, unread, set_aside) = set_aside_markers(reference, hyp, max_marker_chars)
    ref = normalise(reference.replace(MARK, " "))
    chars = len(ref)
    lev = _levenshtein()
    char_errors = min(lev.distance(ref, hyp), chars)
    ref_words, hyp_words = ref.split(), hyp.split()
    word_errors = min(lev.distance(ref_words, hyp_words), len(ref_words))
    digits, digit_errors = _class_errors(ref, hyp, DIGITS)
    operators, operator_errors = _class_errors(ref, hyp, OPERATORS)
    return PageScore(
        chars=chars, char_errors=char_errors, words=len(ref_words), word_errors=word_errors,
        digits=digits, digit_errors=digit_errors, operators=operators, operator_errors=operator_errors,
        markers=markers, markers_read=read,
        markers_unread=unread, marker_chars=set_aside, pages=1, unreadable_pages=int(not normalise(ocr_text)),
    )
