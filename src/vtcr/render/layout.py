"""Text -> positioned lines on pages, exactly as the reference renderer lays them out.

The reference (Glyph / VTC-R1 `text_to_images`) builds reportlab Paragraphs: it removes soft hyphens and
zero-width spaces, XML-escapes the text, turns runs of 2+ spaces into non-breaking spaces, splits on
"\\n", joins every 30 lines with the `newline-markup` into one Paragraph, and flows the Paragraphs
through a SimpleDocTemplate frame (6 pt padding on each side). reportlab breaks lines greedily: a word
joins the line while `width + space + word <= max_width + 5% of the line's spaces` (spaceShrinkage),
and a Paragraph that would leave a single line at the bottom of a page moves to the next page
(allowOrphans=0). This module re-implements that common path in plain Python, which is ~10x faster
than reportlab, and hands the rare hard cases (a word wider than the line; CJK text, which the
reference wraps per character) to reportlab's own line breaker so the result is identical.
The tests compare both on the shared traces and on fuzzed text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

from .config import RenderConfig
from .fonts import load_font

LINES_PER_PARAGRAPH = 30  # the reference joins this many source lines into one Paragraph
FRAME_PADDING = 6.0  # reportlab Frame default padding, points, each side
SPACE_SHRINKAGE = 0.05  # reportlab ParagraphStyle default
_FUZZ = 1e-8

# reportlab's whitespace set (paragraph._wsc): Python's whitespace less the no-break space.
_WS = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u200b\u2028\u2029\u202f\u205f\u3000"
_WS_SPLIT = re.compile(f"[{re.escape(_WS)}]+")
_NON_WS = re.compile(f"[^{re.escape(_WS)}]+")
_MULTI_SPACE = re.compile(r" {2,}")
_CJK = re.compile(r"[\u4E00-\u9FFF]")  # the reference switches to per-character wrapping on these
# C0/C1 control characters (but tab, newline, carriage return) are invalid in reportlab's XML markup
# and would crash the reference; show them as U+FFFD instead.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")
_FONT_MARKUP = re.compile(r'^(\s*)<font\s+color\s*=\s*["\'](#[0-9A-Fa-f]{6})["\']\s*>([^<>]*)</font>(\s*)$')
_BR_MARKUP = re.compile(r"^\s*<br\s*/?>\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Line:
    """One laid-out line. Glyph i sits at `x` plus the advances of glyphs 0..i-1, where every space
    and no-break space advances `space_adjust` more than its width (PDF word spacing)."""

    text: str  # as reportlab holds it: words joined by single spaces
    x: float  # points from the page's left edge
    baseline: float  # points from the page's top edge
    space_adjust: float = 0.0
    colors: tuple[tuple[int, int, str], ...] = ()  # (start, end, "#RRGGBB") spans not in the font colour


@dataclass(frozen=True, slots=True)
class PageLayout:
    index: int  # 0-based
    lines: tuple[Line, ...]

    def text_lines(self) -> list[str]:
        return [line.text for line in self.lines]


# ---- text preparation ------------------------------------------------------------------------

def prepare_text(text: str) -> str:
    """The reference's character clean-up (plus control characters made visible instead of crashing)."""
    text = text.replace("\xad", "").replace("\u200b", "")
    return _CONTROL.sub("\ufffd", text)


def source_lines(text: str) -> list[str]:
    """Cleaned text split on newlines, with 2+ space runs as no-break spaces (the reference's &nbsp;)."""
    text = _MULTI_SPACE.sub(lambda m: "\xa0" * len(m.group()), prepare_text(text))
    return text.split("\n")


def is_blank(text: str) -> bool:
    """True when the text has nothing to draw (such text renders to no pages)."""
    return not prepare_text(text).strip()


@dataclass(frozen=True)
class NewlineMarkup:
    """The parsed `newline-markup`: a hard line break, or an inline marker drawn in the text flow."""

    is_break: bool
    marker: str = ""
    color: str | None = None
    space_before: bool = True
    space_after: bool = True


def parse_newline_markup(markup: str) -> NewlineMarkup:
    if _BR_MARKUP.match(markup):
        return NewlineMarkup(is_break=True)
    m = _FONT_MARKUP.match(markup)
    if m:
        lead, color, marker, trail = m.groups()
    elif "<" not in markup and ">" not in markup:
        lead = markup[: len(markup) - len(markup.lstrip())]
        trail = markup[len(markup.rstrip()):]
        marker, color = markup.strip(), None
    else:
        raise ValueError(
            f"newline-markup {markup!r}: the layout engine understands '<br/>', plain text, or "
            "'<font color=\"#RRGGBB\">TEXT</font>' with optional spaces around it"
        )
    if _WS_SPLIT.search(marker.strip()) or not marker.strip():
        raise ValueError(f"newline-markup {markup!r}: the inline marker must be one visible word")
    return NewlineMarkup(False, marker.strip(), color.upper() if color else None, bool(lead), bool(trail))


# ---- line breaking ---------------------------------------------------------------------------

class Word(str):
    """A word drawn partly in another colour (an inline newline marker in colour, or text glued to
    it): the string is the whole word, `runs` its (text, colour) pieces. Plain words are plain str."""

    runs: tuple[tuple[str, str | None], ...]

    def __new__(cls, runs: tuple[tuple[str, str | None], ...]):
        word = super().__new__(cls, "".join(t for t, _ in runs))
        word.runs = runs
        return word


def _split_words(text: str) -> list[str]:
    return [w for w in _WS_SPLIT.split(text) if w]


def paragraph_words(parts: list[str], nl: NewlineMarkup) -> list[list[str]]:
    """Words of one reference Paragraph, grouped into forced lines (one group when the newline
    marker is inline). A trailing empty source line makes no line, as in reportlab."""
    if nl.is_break:
        groups = [_split_words(p) for p in parts]
        if len(groups) > 1 and not groups[-1]:
            groups.pop()
        if len(groups) == 1 and not groups[0]:
            return []
        return groups
    if nl.space_before and nl.space_after and nl.color is None:  # the usual marker: a word of its own
        words = _split_words(parts[0])
        for part in parts[1:]:
            words.append(nl.marker)
            words += _split_words(part)
        return [words] if words else []
    return _glued_words(parts, nl)


def _glued_words(parts: list[str], nl: NewlineMarkup) -> list[list[str]]:
    """General inline marker: coloured, or glued to the neighbouring text when it has no spaces."""
    pieces: list[tuple[str, str | None]] = []
    for i, part in enumerate(parts):
        if i:
            pieces += [(" " if nl.space_before else "", None), (nl.marker, nl.color),
                       (" " if nl.space_after else "", None)]
        pieces.append((part, None))
    runs: list[list[tuple[str, str | None]]] = []
    glued = False  # did the flow so far end in a visible character (so the next one continues that word)?
    for text, color in pieces:
        if not text:
            continue
        for m in _NON_WS.finditer(text):
            if glued and m.start() == 0 and runs:
                runs[-1].append((m.group(), color))
            else:
                runs.append([(m.group(), color)])
        glued = text[-1] not in _WS
    words = [Word(tuple(r)) if any(c for _, c in r) else "".join(t for t, _ in r) for r in runs]
    return [words] if words else []


@dataclass(frozen=True, slots=True)
class BrokenLine:
    """A line after breaking. `starts_group`: a forced break (`<br/>`) precedes it inside its Paragraph;
    `ends_group`: a forced break or the Paragraph's end follows it (such lines are never justified)."""

    words: list[str]
    starts_group: bool
    ends_group: bool
    width: float = 0.0  # natural width in points (single spaces between words)


_EMPTY_LEAD = BrokenLine([], False, True)


def break_lines(groups: list[list[str]], max_width: float, first_width: float, width_of,
                cache: dict[str, float]) -> list[BrokenLine] | None:
    """Greedy reportlab line breaking; `width_of(text)` in points, `cache` keeps word widths.
    Returns None when a word is wider than a line (the caller then asks reportlab, which splits
    such words character by character)."""
    space = width_of(" ")
    shrink = SPACE_SHRINKAGE * space
    lines: list[BrokenLine] = []
    for gi, group in enumerate(groups):
        line: list[str] = []
        starts = gi > 0
        current = 0.0
        limit = first_width if not lines else max_width
        for word in group:
            ww = cache.get(word)
            if ww is None:
                ww = cache[word] = width_of(word)
            if ww > limit + _FUZZ and ww > max_width:
                return None
            if not line:
                line, current = [word], ww
                continue
            new = current + space + ww
            if new <= limit + shrink * len(line):
                line.append(word)
                current = new
            else:
                lines.append(BrokenLine(line, starts, False, current))
                limit, starts = max_width, False
                line, current = [word], ww
        lines.append(BrokenLine(line, starts, True, current))
    return lines


# ---- pagination ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Geometry:
    page_width: float
    page_height: float
    text_left: float  # x of a line's start, points
    text_width: float  # available line width
    first_baseline: float  # baseline of the first line on a page, points from the top
    frame_height: float
    leading: float

    @classmethod
    def of(cls, cfg: RenderConfig) -> Geometry:
        w, h = cfg.page_size
        frame_height = h - 2 * cfg.margin_y - 2 * FRAME_PADDING
        return cls(
            page_width=w,
            page_height=h,
            text_left=cfg.margin_x + FRAME_PADDING + cfg.left_indent,
            text_width=w - 2 * cfg.margin_x - 2 * FRAME_PADDING - cfg.left_indent - cfg.right_indent,
            # reportlab draws a Paragraph's first baseline one font size below its top
            first_baseline=cfg.margin_y + FRAME_PADDING + cfg.font_size,
            frame_height=frame_height,
            leading=cfg.leading,
        )


class LayoutEngine:
    """Lays out text for one RenderConfig. Cheap to build; keeps a word-width cache while alive."""

    def __init__(self, cfg: RenderConfig):
        if cfg.space_before or cfg.space_after or cfg.border_width or cfg.border_padding:
            raise ValueError("the fast layout supports space-before/after = 0 and no paragraph border; "
                             "use backend='reportlab' for such configs")
        self.cfg = cfg
        self.font = load_font(cfg.resolved_font_path())
        self.width_of = self.font.width_function(cfg.font_size)
        self.geometry = Geometry.of(cfg)
        self.newline = parse_newline_markup(cfg.newline_markup)
        # only a coloured or glued inline marker makes Word objects (runs in other colours)
        nl = self.newline
        self._coloured = not nl.is_break and not (nl.space_before and nl.space_after and nl.color is None)
        self._widths: dict = {}
        g = self.geometry
        if int((g.frame_height + _FUZZ) / g.leading) < 2:
            raise ValueError(f"page height {g.page_height}: fewer than two lines fit between the margins")

    # paragraphs -> lines -------------------------------------------------------------------
    def paragraphs(self, text: str) -> Iterator[list[BrokenLine]]:
        """Each reference Paragraph as its broken lines."""
        lines = source_lines(text)
        cjk = bool(_CJK.search(text))
        g, cfg = self.geometry, self.cfg
        first_width = g.text_width - cfg.first_line_indent
        for start in range(0, len(lines), LINES_PER_PARAGRAPH):
            parts = lines[start:start + LINES_PER_PARAGRAPH]
            broken = None
            if not cjk:
                groups = paragraph_words(parts, self.newline)
                broken = break_lines(groups, g.text_width, first_width, self.width_of, self._widths)
            if broken is None:
                broken = self._reportlab_lines(parts, cjk)
            if len(self._widths) > 200_000:  # bound memory on huge inputs
                self._widths.clear()
            yield broken

    def _reportlab_lines(self, parts: list[str], cjk: bool) -> list[BrokenLine]:
        from .paragraph import paragraph_for_lines  # reportlab's breaker is only needed on this rare path

        cfg = self.cfg
        para = paragraph_for_lines(parts, cfg, self.font.name, cjk)
        para.wrap(self.geometry.text_width + cfg.left_indent + cfg.right_indent, 1e9)
        return blpara_words(para, self.width_of)

    # lines -> pages ------------------------------------------------------------------------
    def pages(self, text: str) -> Iterator[PageLayout]:
        """Positioned lines, one page at a time (memory stays bounded for any text length)."""
        if is_blank(text):
            return
        g = self.geometry
        page: list[Line] = []
        index = 0
        avail = g.frame_height
        for para in self.paragraphs(text):
            first_line_of_para = True
            while para:
                if len(para) * g.leading <= avail + _FUZZ:
                    head, para = para, []
                else:
                    take = int(avail / g.leading)
                    if take <= 1:  # allowOrphans=0: never leave one line of a paragraph at the bottom
                        yield PageLayout(index, tuple(page))
                        index, page, avail = index + 1, [], g.frame_height
                        continue
                    head, para = split_paragraph(para, take)
                for line in head:
                    page.append(self._position(line, len(page), first_line_of_para))
                    first_line_of_para = False
                avail -= len(head) * g.leading
        if page:
            yield PageLayout(index, tuple(page))

    def _position(self, line: BrokenLine, row: int, first: bool) -> Line:
        g, cfg = self.geometry, self.cfg
        words = line.words
        indent = cfg.first_line_indent if first else 0.0
        slack = g.text_width - indent - line.width
        x = g.text_left + indent
        # reportlab squeezes an overflowing line (spaceShrinkage) and stretches a justified one by PDF
        # word spacing, which moves every space and no-break space by the same amount.
        adjust = 0.0
        stretch = cfg.alignment == "JUSTIFY" and not line.ends_group and slack > 1e-8
        if slack < -1e-8 or stretch:
            n_spaces = len(words) - 1 + sum(w.count("\xa0") for w in words)
            if n_spaces > 0:
                adjust = slack / n_spaces
        if not adjust and slack > 0:
            if cfg.alignment == "CENTER":
                x += slack / 2
            elif cfg.alignment == "RIGHT":
                x += slack
        colors: list[tuple[int, int, str]] = []
        text = " ".join(words)
        if self._coloured and any(type(w) is Word for w in words):
            pos = 0
            for word in words:
                for piece, color in getattr(word, "runs", ((word, None),)):
                    if color is not None:
                        colors.append((pos, pos + len(piece), color))
                    pos += len(piece)
                pos += 1
        return Line(text, x, g.first_baseline + row * g.leading, adjust, tuple(colors))


def split_paragraph(lines: list[BrokenLine], take: int) -> tuple[list[BrokenLine], list[BrokenLine]]:
    """Split a Paragraph after `take` lines, as reportlab does. Its halves are re-broken from their
    fragments, and the `<br/>` before a forced line travels with that line: so the second half
    starts with an extra empty line when the cut falls on a forced break, and the first half loses a
    last line that is empty after a `<br/>` (its break is then trailing, which makes no line)."""
    head, tail = lines[:take], lines[take:]
    last = head[-1]
    if last.starts_group and not last.words:
        head = head[:-1]
    if tail and tail[0].starts_group:
        tail = [_EMPTY_LEAD, BrokenLine(tail[0].words, True, tail[0].ends_group, tail[0].width)] + tail[1:]
    return head, tail


def blpara_words(para, width_of) -> list[BrokenLine]:
    """Lines of a wrapped reportlab Paragraph as BrokenLines (`width_of(text)` in points)."""
    bl = para.blPara
    out: list[BrokenLine] = []
    after_break = False
    for line in bl.lines:
        if bl.kind == 0:
            words, ends = line[1], False
        else:
            words = _split_words("".join(getattr(f, "text", "") for f in line.words))
            ends = bool(getattr(line, "lineBreak", False))
        out.append(BrokenLine(list(words), after_break, ends, width_of(" ".join(words))))
        after_break = ends
    if out:
        out[-1] = BrokenLine(out[-1].words, out[-1].starts_group, True, out[-1].width)
    return out
