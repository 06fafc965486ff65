"""Render text into optical memory: page images, in memory, deterministic.

    from vtcr.render import preset, Renderer
    pages = Renderer(preset("dense")).render(text)      # list[PIL.Image.Image]

Backends (one interface, the same layout for `vtcr1`):
  fast       our layout engine + glyph-cache rasteriser (default; no system packages)
  reportlab  reportlab PDF rasterised in-process by pypdfium2
  reference  reportlab PDF rasterised by poppler's pdftoppm: the paper's pipeline (needs poppler-utils)
"""

from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from vtcr._io import page_file_name, write_bytes_atomic

from .config import RenderConfig
from .layout import LayoutEngine, is_blank
from .presets import DEFAULT_PRESET, PAPER_PRESET, PRESETS, preset, preset_name, render_config, resolve_render_config

BACKENDS = ("fast", "reportlab", "reference")
# Unicode blocks common in mathematical reasoning text, pre-drawn by Renderer.warm_up().
_WARM_UP_RANGES = ((0x21, 0x7F), (0xA1, 0x180), (0x370, 0x400), (0x2010, 0x2060), (0x2070, 0x20A0),
                   (0x2100, 0x2150), (0x2190, 0x2200), (0x2200, 0x2300), (0x25A0, 0x2600))
DEFAULT_BACKEND = "fast"

__all__ = [
    "BACKENDS", "DEFAULT_BACKEND", "DEFAULT_PRESET", "PAPER_PRESET", "PRESETS", "RenderConfig", "Renderer",
    "get_renderer", "iter_pages", "png_bytes", "preset", "preset_name", "render_config", "render_text",
    "resolve_render_config", "save_pages", "save_png",
]


class Renderer:
    """Renders text with one config and backend. Reuse it: it caches word widths and glyph bitmaps."""

    def __init__(self, config: RenderConfig | None = None, backend: str = DEFAULT_BACKEND):
        if backend not in BACKENDS:
            raise ValueError(f"unknown render backend {backend!r}; choose one of {list(BACKENDS)}")
        self.config = config or preset(DEFAULT_PRESET)
        self.backend = backend
        self.config.resolved_font_path()  # fail early on a missing font
        if backend == "fast":
            from .raster_fast import FastRasterizer

            self._layout = LayoutEngine(self.config)
            self._raster = FastRasterizer(self.config, self._layout.font.width)

    def warm_up(self) -> Renderer:
        """Draw the glyphs reasoning text uses most (Latin, Greek, punctuation, arrows, maths) now, as
        start-up work, instead of the first time each appears (~0.1 s once per Renderer)."""
        if self.backend == "fast":
            font = self._layout.font
            chars = [chr(c) for lo, hi in _WARM_UP_RANGES for c in range(lo, hi) if font.has_glyph(chr(c))]
            self._raster.atlas.slots(np.array([ord(c) for c in chars], np.int64))
        return self

    def iter_pages(self, text: str) -> Iterator[Image.Image]:
        """Pages one at a time (memory stays bounded for any text length). Blank text yields nothing."""
        if not isinstance(text, str):
            raise ValueError(f"text to render must be a str, got {type(text).__name__}")
        if is_blank(text):
            return iter(())
        return self._pages(text)

    def render(self, text: str) -> list[Image.Image]:
        return list(self.iter_pages(text))

    def _pages(self, text: str) -> Iterator[Image.Image]:
        cfg = self.config
        if self.backend == "fast":
            if cfg.horizontal_scale != 1.0:  # rare: scale the full page first, as the reference does
                raw = (p.image() for p in map(self._raster.render, self._layout.pages(text)))
                yield from _with_last(raw, lambda img, last: postprocess_page(img, cfg, is_last=last))
                return
            # crop on the page's channels before they become an RGB image (cheaper, same pixels)
            pages = map(self._raster.render, self._layout.pages(text))
            yield from _with_last(pages, lambda p, last: p.image(crop_box(p.size, p.ink_bbox, cfg, last)))
            return
        from .pdf import build_pdf, rasterize_pdfium, rasterize_pdftoppm

        raster = rasterize_pdfium if self.backend == "reportlab" else rasterize_pdftoppm
        raw = raster(build_pdf(text, cfg), cfg.dpi)
        yield from _with_last(raw, lambda img, last: postprocess_page(img, cfg, is_last=last))


@lru_cache(maxsize=8)
def get_renderer(config: RenderConfig | None = None, backend: str = DEFAULT_BACKEND) -> Renderer:
    """A shared Renderer per (config, backend): its caches only speed things up, never change output."""
    return Renderer(config, backend)


def render_text(text: str, config: RenderConfig | None = None, backend: str = DEFAULT_BACKEND) -> list[Image.Image]:
    return get_renderer(config or preset(DEFAULT_PRESET), backend).render(text)


def iter_pages(text: str, config: RenderConfig | None = None, backend: str = DEFAULT_BACKEND) -> Iterator[Image.Image]:
    return get_renderer(config or preset(DEFAULT_PRESET), backend).iter_pages(text)


# ---- the reference's post-processing: horizontal scale and auto-crop -----------------------------

def _with_last(items: Iterable, finish) -> Iterator:
    """`finish(item, is_last)` for each item; the last one is known by looking one item ahead."""
    it = iter(items)
    current = next(it, None)
    while current is not None:
        following = next(it, None)
        yield finish(current, following is None)
        current = following


def postprocess_page(img: Image.Image, cfg: RenderConfig, *, is_last: bool) -> Image.Image:
    """The reference's post-processing of a rasterised page: scale its width, then auto-crop."""
    if cfg.horizontal_scale != 1.0:
        img = img.resize((int(img.width * cfg.horizontal_scale), img.height))
    if not (cfg.auto_crop_width or (cfg.auto_crop_last_page and is_last)):
        return img
    gray = img.convert("L")
    background = float(np.median(np.asarray(gray.crop((0, 0, 2, 2)))))
    # ink = |gray - background| > 5, by a PIL lookup table (fast) instead of numpy
    bbox = gray.point([255 if abs(v - background) > 5 else 0 for v in range(256)]).getbbox()
    box = crop_box(img.size, bbox, cfg, is_last)
    return img if box is None else img.crop(box)


def crop_box(size: tuple[int, int], ink_bbox: tuple[int, int, int, int] | None, cfg: RenderConfig,
             is_last: bool) -> tuple[int, int, int, int] | None:
    """The reference's auto-crop rule: the right edge goes to the last ink column + margin-x (every
    page, with auto-crop-width); the last page's bottom to the last ink row + margin-y. None: no crop."""
    width, height = size
    if ink_bbox is not None:
        if cfg.auto_crop_width:
            width = min(size[0], ink_bbox[2] + int(round(cfg.margin_x)))
        if cfg.auto_crop_last_page and is_last:
            height = min(size[1], ink_bbox[3] - 1 + int(round(cfg.margin_y)))
    return None if (width, height) == tuple(size) else (0, 0, width, height)


# ---- deterministic PNG output ------------------------------------------------------------------

def png_bytes(img: Image.Image) -> bytes:
    """PNG encoding with no metadata: the same image always gives the same bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def save_png(img: Image.Image, path: str | os.PathLike) -> Path:
    """Write a PNG atomically (a killed process never leaves a half-written file)."""
    return write_bytes_atomic(path, png_bytes(img))


def save_pages(pages: Iterable[Image.Image], out_dir: str | os.PathLike, round_index: int | None = None) -> list[Path]:
    """`out_dir/page_001.png`, ... (the reference's names); with `round_index`, the pages of one
    reasoning round: `round_01_page_001.png`, ... (`vtcr._io.page_file_name`)."""
    out = Path(out_dir)
    return [save_png(img, out / page_file_name(i, round_index)) for i, img in enumerate(pages, start=1)]
