"""The fast rasteriser: a page of laid-out lines -> pixels, in a handful of numpy operations.

Why not PIL's `ImageDraw.text`: it costs ~0.4 ms per line, and its hinted advances drift ~8% from the
PDF's advance widths, so lines would not end where the reference's do. Instead each glyph is drawn
once per quarter-pixel phase (at 4x and box-averaged: area coverage, like PDF rasterisers) and kept
as a sparse list of its ink pixels. A page is then: glyph positions from a cumulative sum of the PDF
advance widths, one CSR-style expansion of all their ink pixels, and one `np.maximum.at` scatter.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .config import RenderConfig
from .layout import PageLayout

PHASES = 4  # sub-pixel x positions per pixel
SUPERSAMPLE = 4


class GlyphAtlas:
    """Ink pixels of every (character, phase) drawn so far, as flat arrays indexed CSR-style."""

    def __init__(self, font_path: str, size_px: float):
        # BASIC layout: one glyph per call, no shaping or kerning (reportlab applies neither)
        self._font = ImageFont.truetype(font_path, size=max(1, round(size_px * SUPERSAMPLE)),
                                        layout_engine=ImageFont.Layout.BASIC)
        pad = int(size_px) + 4
        self._cell = (int(size_px * 3) + 2 * pad, int(size_px * 3) + 2 * pad)
        self._origin = (pad, int(size_px * 2) + pad)
        self._slot: dict[int, int] = {}  # code point -> slot; glyph id = slot * PHASES + phase
        self._pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._dirty = True
        self.offsets = self.counts = self.dy = self.dx = self.value = np.zeros(0, np.int32)

    def slots(self, codes: np.ndarray) -> np.ndarray:
        """Slot per code point, drawing glyphs seen for the first time."""
        unique, inverse = np.unique(codes, return_inverse=True)
        table = np.empty(len(unique), np.int64)
        for i, code in enumerate(unique.tolist()):
            slot = self._slot.get(code)
            if slot is None:
                slot = self._slot[code] = len(self._slot)
                self._pieces.extend(self._draw(chr(code)))
                self._dirty = True
            table[i] = slot
        if self._dirty:
            self._pack()
        return table[inverse]

    def _draw(self, char: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The glyph's ink pixels at each phase: drawn once at SUPERSAMPLE x, then shifted right by
        whole supersampled columns and box-averaged (phase p = a shift of p/PHASES pixel)."""
        ss = SUPERSAMPLE
        big = Image.new("L", (self._cell[0] * ss, self._cell[1] * ss), 0)
        ox, oy = self._origin
        ImageDraw.Draw(big).text((ox * ss, oy * ss), char, fill=255, font=self._font, anchor="ls")
        bbox = big.getbbox()
        if bbox is None:  # nothing to draw (a space-like glyph)
            empty = (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.uint8))
            return [empty] * PHASES
        # work on the ink's box, aligned to whole output pixels, with room to shift right
        x0, y0 = bbox[0] // ss * ss, bbox[1] // ss * ss
        x1, y1 = -(-bbox[2] // ss) * ss + ss, -(-bbox[3] // ss) * ss
        ink = big.crop((x0, y0, x1, y1))
        pieces = []
        for phase in range(PHASES):
            shifted = Image.new("L", ink.size, 0)
            shifted.paste(ink, (phase * ss // PHASES, 0))
            arr = np.asarray(shifted.reduce(ss))
            ys, xs = np.nonzero(arr)
            pieces.append(((ys + y0 // ss - oy).astype(np.int32), (xs + x0 // ss - ox).astype(np.int32),
                           arr[ys, xs].astype(np.uint8)))
        return pieces

    def _pack(self) -> None:
        self.counts = np.array([len(p[0]) for p in self._pieces], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.dy = np.concatenate([p[0] for p in self._pieces])
        self.dx = np.concatenate([p[1] for p in self._pieces])
        self.value = np.concatenate([p[2] for p in self._pieces])
        self._dirty = False


def _rgb(hex_color: str) -> tuple[int, int, int]:  # "#RRGGBB" -> (r, g, b)
    return tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def page_pixel_size(cfg: RenderConfig) -> tuple[int, int]:
    """Page size in pixels: what pdftoppm and pdfium produce (both round up at this scale)."""
    scale = cfg.dpi / 72.0
    w, h = cfg.page_size
    return math.ceil(w * scale - 1e-6), math.ceil(h * scale - 1e-6)


class FastPage:
    """A rasterised page before cropping: its channels (one when grey on grey) and its ink box."""

    def __init__(self, channels: list[Image.Image], ink_bbox: tuple[int, int, int, int] | None):
        self.channels = channels
        self.ink_bbox = ink_bbox
        self.size = channels[0].size

    def image(self, box: tuple[int, int, int, int] | None = None) -> Image.Image:
        channels = self.channels if box is None else [c.crop(box) for c in self.channels]
        if len(channels) == 1:
            channels = channels * 3  # merging is ~2x faster than convert("RGB") here
        return Image.merge("RGB", channels)


def _luma_ink_bbox(luma: Image.Image, background: int) -> tuple[int, int, int, int] | None:
    """Box of pixels whose grey level differs from the background by more than 5 (the reference's
    auto-crop test), right/bottom exclusive."""
    return luma.point(_ink_table(background)).getbbox()


@lru_cache(maxsize=16)
def _ink_table(background: int) -> list[int]:
    return [255 if abs(v - background) > 5 else 0 for v in range(256)]


class FastRasterizer:
    """Rasterises PageLayouts for one RenderConfig; keeps its glyph atlas and width table while alive."""

    def __init__(self, cfg: RenderConfig, width_of):
        if cfg.para_bg_color.upper() != cfg.page_bg_color.upper() or cfg.border_width:
            raise ValueError("the fast backend draws no paragraph background or border; "
                             "use backend='reportlab' for such configs")
        self.cfg = cfg
        self.scale = cfg.dpi / 72.0
        self.size = page_pixel_size(cfg)
        self.atlas = GlyphAtlas(str(cfg.resolved_font_path()), cfg.font_size * self.scale)
        self._width_of = width_of  # (text, size) -> points: the layout's own (reportlab's) metrics
        self._bmp_widths = np.array([width_of(chr(c), cfg.font_size) if not 0xD800 <= c < 0xE000 else 0.0
                                     for c in range(0x10000)])
        # coverage -> colour lookup tables: font colour over page background
        bg, fg = _rgb(cfg.page_bg_color), _rgb(cfg.font_color)
        self._bg_luma = (bg[0] * 19595 + bg[1] * 38470 + bg[2] * 7471 + 0x8000) >> 16
        self._tables = [[(b * (255 - a) + f * a + 127) // 255 for a in range(256)] for b, f in zip(bg, fg)]
        self._gray = len(set(bg)) == 1 and len(set(fg)) == 1  # grey on grey: one channel is enough
        # smallest coverage whose grey differs from the background by more than 5 (None: never);
        # the grey is monotonic in coverage, so "ink" is exactly coverage >= this
        ink = [a for a in range(256) if abs(self._tables[0][a] - self._bg_luma) > 5] if self._gray else []
        self._ink_from = ink[0] if ink else None

    def _advances(self, codes: np.ndarray) -> np.ndarray:
        adv = self._bmp_widths[np.minimum(codes, 0xFFFF)]
        astral = np.flatnonzero(codes > 0xFFFF)  # rare: emoji and other non-BMP characters
        for i in astral.tolist():
            adv[i] = self._width_of(chr(int(codes[i])), self.cfg.font_size)
        return adv

    def render(self, page: PageLayout) -> FastPage:
        width, height = self.size
        canvas = np.zeros(height * width, np.uint8)
        lines = [line for line in page.lines if line.text]
        extra: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # colour -> (coverage, touched pixels)
        if lines:
            codes, xpx, ypx, color_of = self._glyph_positions(lines)
            ink = (codes != 32) & (codes != 0xA0)
            codes, xpx, ypx = codes[ink], xpx[ink], ypx[ink]
            ix = np.floor(xpx).astype(np.int64)
            phase = np.rint((xpx - ix) * PHASES).astype(np.int64)
            carry = phase == PHASES
            ix += carry
            phase[carry] = 0
            glyph = self.atlas.slots(codes) * PHASES + phase
            if color_of is None:
                flat, values = self._scatter(canvas, glyph, ix, ypx)
                if self._gray:  # the common case, done without any full-page pass
                    return self._grey_page(canvas.reshape(height, width), flat, values)
            else:
                color_of = color_of[ink]
                for color in sorted(set(color_of.tolist())):
                    sel = color_of == color
                    if color == "":
                        self._scatter(canvas, glyph[sel], ix[sel], ypx[sel])
                    else:
                        cover = np.zeros_like(canvas)
                        touched, _ = self._scatter(cover, glyph[sel], ix[sel], ypx[sel])
                        extra[color] = (cover, np.unique(touched))
        return self._finish(canvas.reshape(height, width), extra)

    def _grey_page(self, canvas: np.ndarray, flat: np.ndarray, values: np.ndarray) -> FastPage:
        """Grey text on a grey page: one channel, and the ink box straight from the drawn pixels
        (a pixel is ink when its coverage reaches `_ink_from`, the reference's |grey - bg| > 5)."""
        height, width = canvas.shape
        bbox = None
        if self._ink_from is not None:
            inked = flat[values >= self._ink_from]
            if inked.size:
                ys, xs = np.divmod(inked, width)
                bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        if self._tables[0][0] == 255 and self._tables[0][255] == 0:  # black on white: 255 - coverage
            shade = Image.fromarray(255 - canvas, "L")
        else:
            shade = Image.fromarray(canvas, "L").point(self._tables[0])
        return FastPage([shade], bbox)

    def _finish(self, canvas: np.ndarray, extra: dict) -> FastPage:
        # Blend per channel with PIL lookup tables (much faster here than numpy gathers); colours
        # other than the font's touch few pixels and are blended at those pixels only.
        height, width = canvas.shape
        coverage = Image.fromarray(canvas, "L")
        if self._gray and not extra:
            channel = coverage.point(self._tables[0])
            return FastPage([channel], _luma_ink_bbox(channel, self._bg_luma))
        channels, values_of = [], []
        for c, table in enumerate(self._tables):
            channel = coverage.point(table)
            if extra:
                values = np.array(channel).reshape(-1)
                for color, (cover, nz) in extra.items():
                    a = cover[nz].astype(np.uint16)
                    values[nz] = ((values[nz] * (255 - a) + _rgb(color)[c] * a + 127) // 255).astype(np.uint8)
                channel = Image.fromarray(values.reshape(height, width), "L")
                values_of.append(values)
            channels.append(channel)
        if not self._gray:  # general colours: measure ink on the real luma image, as the reference does
            return FastPage(channels, _luma_ink_bbox(Image.merge("RGB", channels).convert("L"), self._bg_luma))
        # grey text plus a few coloured pixels: grey ink from one channel, coloured ink at its pixels
        bbox = _luma_ink_bbox(coverage.point(self._tables[0]), self._bg_luma)
        touched = np.unique(np.concatenate([nz for _, nz in extra.values()]))
        r, g, b = (v[touched].astype(np.int64) for v in values_of)
        luma = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16  # PIL's RGB -> L
        hits = touched[np.abs(luma - self._bg_luma) > 5]
        if hits.size:
            ys, xs = hits // width, hits % width
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            bbox = box if bbox is None else (min(bbox[0], box[0]), min(bbox[1], box[1]),
                                             max(bbox[2], box[2]), max(bbox[3], box[3]))
        return FastPage(channels, bbox)

    def _glyph_positions(self, lines):
        """Code point, x (pixels, fractional) and baseline row of every character on the page."""
        scale = self.scale
        text = "".join(line.text for line in lines)
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.int64)
        lengths = np.array([len(line.text) for line in lines])
        line_of = np.repeat(np.arange(len(lines)), lengths)
        adv = self._advances(codes)
        adjust = np.array([line.space_adjust for line in lines])
        if adjust.any():
            adv = adv + ((codes == 32) | (codes == 0xA0)) * adjust[line_of]
        before = np.cumsum(adv) - adv  # advance of everything earlier on the page
        starts = np.cumsum(lengths) - lengths
        x = np.array([line.x for line in lines])[line_of] + before - before[starts][line_of]
        y = np.rint(np.array([line.baseline for line in lines]) * scale).astype(np.int64)[line_of]
        color_of = None
        if any(line.colors for line in lines):
            color_of = np.full(len(codes), "", dtype=object)
            for start, line in zip(starts.tolist(), lines):
                for a, b, color in line.colors:
                    color_of[start + a:start + b] = color
        return codes, x * scale, y, color_of

    def _scatter(self, canvas: np.ndarray, glyph: np.ndarray, ix: np.ndarray,
                 iy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Max-blend the ink pixels of all the given glyph instances into the flat canvas; returns
        the flat indices written and the coverage values written there."""
        atlas = self.atlas
        counts = atlas.counts[glyph]
        total = int(counts.sum())
        if not total:
            return np.zeros(0, np.int64), np.zeros(0, np.uint8)
        instance = np.repeat(np.arange(len(glyph)), counts)
        first = np.cumsum(counts) - counts
        pixel = atlas.offsets[glyph][instance] + (np.arange(total) - first[instance])
        px = ix[instance] + atlas.dx[pixel]
        py = iy[instance] + atlas.dy[pixel]
        width, height = self.size
        inside = (px >= 0) & (px < width) & (py >= 0) & (py < height)
        if not inside.all():
            px, py, pixel = px[inside], py[inside], pixel[inside]
        flat = py * width + px
        values = atlas.value[pixel]
        np.maximum.at(canvas, flat, values)
        return flat, values
