"""The reference pipeline's PDF half: reportlab Paragraphs -> PDF bytes, then PDF -> images.

`build_pdf` reproduces the reference story exactly (same escaping, &nbsp; runs, 30-line Paragraphs,
SimpleDocTemplate margins, page background), so the `reportlab` and `reference` backends lay out text
the way the paper's code does. Rasterising is in-process with pypdfium2 (`reportlab` backend) or with
poppler's `pdftoppm` in a subprocess (`reference` backend: the paper's own tool, for parity checks and
benchmarks; needs poppler-utils).
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator
from xml.sax.saxutils import escape

from PIL import Image

from .config import RenderConfig
from .fonts import load_font
from .layout import LINES_PER_PARAGRAPH, is_blank, prepare_text
from .paragraph import paragraph_style


def _markup_lines(text: str) -> list[str]:
    escaped = escape(prepare_text(text))
    escaped = re.sub(r" {2,}", lambda m: "&nbsp;" * len(m.group()), escaped)
    return escaped.split("\n")


def build_pdf(text: str, cfg: RenderConfig) -> bytes:
    """The reference renderer's PDF for `text` (an empty text gives an empty byte string)."""
    from reportlab.lib import colors
    from reportlab.platypus import Paragraph, SimpleDocTemplate

    if is_blank(text):
        return b""
    font = load_font(cfg.resolved_font_path())
    cjk = bool(re.search(r"[\u4E00-\u9FFF]", text))
    style = paragraph_style(cfg, font.name, cjk)
    parts = _markup_lines(text)
    story = [Paragraph(cfg.newline_markup.join(parts[i:i + LINES_PER_PARAGRAPH]), style)
             for i in range(0, len(parts), LINES_PER_PARAGRAPH)]
    w, h = cfg.page_size
    bg = colors.HexColor(cfg.page_bg_color)

    def paint_background(canvas, _doc):
        canvas.saveState()
        canvas.setFillColor(bg)
        canvas.rect(0, 0, w, h, stroke=0, fill=1)
        canvas.restoreState()

    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=(w, h), leftMargin=cfg.margin_x, rightMargin=cfg.margin_x,
                            topMargin=cfg.margin_y, bottomMargin=cfg.margin_y,
                            # fixed metadata so the same text gives the same bytes
                            invariant=1, title="", author="", creator="vtcr")
    doc.build(story, onFirstPage=paint_background, onLaterPages=paint_background)
    return buf.getvalue()


def rasterize_pdfium(pdf: bytes, dpi: int) -> Iterator[Image.Image]:
    """PDF pages -> RGB images in-process, one page at a time."""
    import pypdfium2 as pdfium

    if not pdf:
        return
    doc = pdfium.PdfDocument(pdf)
    try:
        for i in range(len(doc)):
            page = doc[i]
            bitmap = page.render(scale=dpi / 72.0)
            yield bitmap.to_pil().convert("RGB")
            page.close()
    finally:
        doc.close()


def have_pdftoppm() -> bool:
    return shutil.which("pdftoppm") is not None


def rasterize_pdftoppm(pdf: bytes, dpi: int) -> Iterator[Image.Image]:
    """PDF pages -> RGB images with poppler's pdftoppm, as the reference pipeline does (pdf2image)."""
    if not pdf:
        return
    exe = shutil.which("pdftoppm")
    if exe is None:
        raise FileNotFoundError("pdftoppm not found: install poppler-utils (apt-get install poppler-utils) "
                                "or use backend='reportlab'")
    with tempfile.TemporaryDirectory(prefix="vtcr-pdftoppm-") as tmp:
        src = Path(tmp) / "in.pdf"
        src.write_bytes(pdf)
        # PPM output, as pdf2image (the reference's wrapper) asks pdftoppm for by default
        subprocess.run([exe, "-r", str(dpi), str(src), str(Path(tmp) / "p")], check=True, capture_output=True)
        for path in sorted(Path(tmp).glob("p-*.ppm"), key=lambda p: int(p.stem.split("-")[-1])):
            with Image.open(path) as img:
                yield img.convert("RGB")
