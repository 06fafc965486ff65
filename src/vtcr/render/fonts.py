"""Font access shared by the layout engine and the rasterisers.

Widths come from reportlab's own TrueType reader, so the fast layout measures text exactly as the
reference renderer does (same advance widths, same rounding). reportlab keeps registered fonts in a
process-wide table; we register each font file under a name derived from its contents, which makes
registration idempotent and safe to repeat from any worker process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class FontMetrics:
    """A registered reportlab font: `name` for reportlab styles, widths in points via `width()`."""

    name: str
    path: Path

    def width(self, text: str, size: float) -> float:
        from reportlab.pdfbase.pdfmetrics import stringWidth

        return stringWidth(text, self.name, size)

    def width_function(self, size: float):
        """A fast `text -> width in points` at `size`, equal to reportlab's stringWidth to the last bit.

        reportlab's pure-Python width is `0.001*size*sum(widths)`, reached through four calls per
        string; this is the same arithmetic in the same order, inlined. If this reportlab computes
        widths differently (e.g. a C accelerator), the check below falls back to its own function.
        """
        from itertools import repeat

        from reportlab.pdfbase.pdfmetrics import getFont, stringWidth

        face = getFont(self.name).face
        get, default, scale = face.charWidths.get, face.defaultWidth, 0.001 * size

        def fast(text: str) -> float:
            return scale * sum(map(get, map(ord, text), repeat(default, len(text))))

        probes = ("", " ", "Wait, so x^2 + 3x = 10?", "\\frac{a}{b} \u2264 \u03b1\u00a0\u21b5", "\U0001f600\u4e2d")
        if all(fast(t) == stringWidth(t, self.name, size) for t in probes):
            return fast
        return lambda text: stringWidth(text, self.name, size)

    def has_glyph(self, char: str) -> bool:
        from reportlab.pdfbase.pdfmetrics import getFont

        return ord(char) in getFont(self.name).face.charToGlyph


@lru_cache(maxsize=16)
def load_font(path: Path) -> FontMetrics:
    """Register `path` with reportlab (once per process) and return its metrics handle.

    An unreadable or non-TrueType file raises ValueError naming the file.
    """
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont, TTFError

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"font file {path}: cannot be read ({exc.strerror or exc})") from None
    name = "vtcr-" + hashlib.sha256(data).hexdigest()[:16]
    if name not in pdfmetrics.getRegisteredFontNames():
        try:
            pdfmetrics.registerFont(TTFont(name, str(path)))
        except (TTFError, Exception) as exc:  # reportlab raises several types for bad files
            raise ValueError(f"font file {path}: not a usable TrueType/OpenType font ({exc})") from None
    return FontMetrics(name=name, path=path)
