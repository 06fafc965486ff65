"""Named render configurations.

vtcr1  The paper's settings exactly (its evaluation/config_en.json): A4 595x842 pt at 72 dpi, margins 10,
       DejaVu Sans 9 pt on 10 pt leading, LEFT, real line breaks (`<br/>`), auto-crop width and last page.
       On reasoning traces most of each page is short and blank lines: about 2x compression (Qwen3-VL).
dense  The default. Same glyph size, leading, page and dpi (so the same legibility), but source line
       breaks are drawn inline as a "↵" marker and the text flows on: no blank or half-empty lines.
       About 3x denser pages than vtcr1 on the shared traces (see benchmarks/render_bench.py). The
       marker is a glyph that reasoning text does not otherwise use, so it needs no colour of its own
       (a colour, e.g. '<font color="#FF0000"> ↵ </font>', works too but costs rendering time).
"""

from __future__ import annotations

from .config import RenderConfig

_VTCR1 = RenderConfig(
    page_size=(595.0, 842.0),
    dpi=72,
    margin_x=10.0,
    margin_y=10.0,
    font_path=None,  # bundled DejaVuSans.ttf (2.37, as Debian's fonts-dejavu-core ships it)
    font_size=9.0,
    line_height=10.0,
    font_color="#000000",
    page_bg_color="#FFFFFF",
    para_bg_color="#FFFFFF",
    para_border_color="#FFFFFF",
    alignment="LEFT",
    horizontal_scale=1.0,
    auto_crop_width=True,
    auto_crop_last_page=True,
    newline_markup="<br/>",
    name="vtcr1",
)

NEWLINE_MARKER = "\u21b5"  # ↵

PRESETS: dict[str, RenderConfig] = {
    "vtcr1": _VTCR1,
    "dense": _VTCR1.replace(newline_markup=f" {NEWLINE_MARKER} ", name="dense"),
}


def preset(name: str) -> RenderConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown render preset {name!r}; known presets: {sorted(PRESETS)}") from None
