"""The reference's reportlab Paragraph: its style from a RenderConfig, and one Paragraph for a group of
source lines. Shared by the PDF path (`pdf.build_pdf`) and the fast layout engine, which hands the
rare lines it cannot break itself (words wider than a line, CJK) to reportlab's own breaker.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from .config import RenderConfig

_ALIGN = {"LEFT": 0, "CENTER": 1, "RIGHT": 2, "JUSTIFY": 4}  # reportlab.lib.enums TA_* values


def paragraph_style(cfg: RenderConfig, font_name: str, cjk: bool):
    from reportlab.lib import colors
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet

    return ParagraphStyle(
        name="vtcr",
        parent=getSampleStyleSheet()["Normal"],
        fontName=font_name,
        fontSize=cfg.font_size,
        leading=cfg.leading,
        textColor=colors.HexColor(cfg.font_color),
        backColor=colors.HexColor(cfg.para_bg_color),
        borderColor=colors.HexColor(cfg.para_border_color),
        borderWidth=cfg.border_width,
        borderPadding=cfg.border_padding,
        firstLineIndent=cfg.first_line_indent,
        wordWrap="CJK" if cjk else None,
        leftIndent=cfg.left_indent,
        rightIndent=cfg.right_indent,
        alignment=_ALIGN[cfg.alignment],
        spaceBefore=cfg.space_before,
        spaceAfter=cfg.space_after,
        shaping=0,  # never depend on whether uharfbuzz happens to be installed
    )


def paragraph_for_lines(parts: list[str], cfg: RenderConfig, font_name: str, cjk: bool):
    """One reference Paragraph for already-split source lines (no-break spaces already substituted)."""
    from reportlab.platypus import Paragraph

    markup = [escape(p).replace("\xa0", "&nbsp;") for p in parts]
    return Paragraph(cfg.newline_markup.join(markup), paragraph_style(cfg, font_name, cjk))
