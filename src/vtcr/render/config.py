"""Render configuration: one frozen dataclass that reads and writes the Glyph / VTC-R1 JSON keys.

The JSON keys are the reference renderer's (`page-size`, `font-size`, `newline-markup`, ...), so a config
file written for the paper's code loads here unchanged, and `to_dict()` writes one it can read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtcr._io import write_text_atomic

FONTS_DIR = Path(__file__).resolve().parent / "fonts"
BUNDLED_FONTS = {"DejaVuSans": FONTS_DIR / "DejaVuSans.ttf",
                 # the same family's condensed face (Debian fonts-dejavu-extra 2.37): `vtcr bench fidelity --search`
                 "DejaVuSansCondensed": FONTS_DIR / "DejaVuSansCondensed.ttf"}
DEFAULT_FONT = "DejaVuSans"

ALIGNMENTS = ("LEFT", "CENTER", "RIGHT", "JUSTIFY")
_HEX_COLOR = re.compile(r"^#[0-9A-Fa-f]{6}$")

# Glyph JSON key -> dataclass field. Order is the order of `to_dict()`.
_KEYS = {
    "page-size": "page_size",
    "dpi": "dpi",
    "margin-x": "margin_x",
    "margin-y": "margin_y",
    "font-path": "font_path",
    "font-size": "font_size",
    "line-height": "line_height",
    "font-color": "font_color",
    "page-bg-color": "page_bg_color",
    "para-bg-color": "para_bg_color",
    "para-border-color": "para_border_color",
    "alignment": "alignment",
    "horizontal-scale": "horizontal_scale",
    "first-line-indent": "first_line_indent",
    "left-indent": "left_indent",
    "right-indent": "right_indent",
    "space-before": "space_before",
    "space-after": "space_after",
    "border-width": "border_width",
    "border-padding": "border_padding",
    "auto-crop-width": "auto_crop_width",
    "auto-crop-last-page": "auto_crop_last_page",
    "newline-markup": "newline_markup",
}
_FIELDS_TO_KEYS = {v: k for k, v in _KEYS.items()}


@dataclass(frozen=True)
class RenderConfig:
    """How text becomes page images. Units are PDF points (1/72 inch) except `dpi`.

    Defaults are the reference renderer's own fallbacks where it has one, so a partial Glyph JSON
    means the same thing here as there. `font_path=None` (or "DejaVuSans") is the bundled font.
    """

    page_size: tuple[float, float] = (595.0, 842.0)
    dpi: int = 72
    margin_x: float = 20.0
    margin_y: float = 20.0
    font_path: str | None = None
    font_size: float = 9.0
    line_height: float | None = None  # None -> font_size + 1, as the reference does
    font_color: str = "#000000"
    page_bg_color: str = "#FFFFFF"
    para_bg_color: str = "#FFFFFF"
    para_border_color: str = "#FFFFFF"
    alignment: str = "JUSTIFY"
    horizontal_scale: float = 1.0
    first_line_indent: float = 0.0
    left_indent: float = 0.0
    right_indent: float = 0.0
    space_before: float = 0.0
    space_after: float = 0.0
    border_width: float = 0.0
    border_padding: float = 0.0
    auto_crop_width: bool = False
    auto_crop_last_page: bool = False
    newline_markup: str = "<br/>"
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        _validate(self)

    # ---- derived values -------------------------------------------------------------------
    @property
    def leading(self) -> float:
        return float(self.line_height) if self.line_height else self.font_size + 1

    def resolved_font_path(self) -> Path:
        """The font file to use. A missing OS path whose file name is a bundled font (the reference
        config names /usr/share/fonts/.../DejaVuSans.ttf) resolves to the bundled copy."""
        if self.font_path is None or self.font_path in BUNDLED_FONTS:
            return BUNDLED_FONTS[self.font_path or DEFAULT_FONT]
        path = Path(self.font_path).expanduser()
        if path.is_file():
            return path
        bundled = BUNDLED_FONTS.get(path.stem)
        if bundled is not None and path.name == bundled.name:
            return bundled
        raise FileNotFoundError(f"font-path {self.font_path!r}: no such font file")

    # ---- JSON round trip -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The Glyph/VTC-R1 JSON form (what the reference renderer reads)."""
        out: dict[str, Any] = {}
        for key, attr in _KEYS.items():
            value = getattr(self, attr)
            if attr == "page_size":
                value = f"{_num(value[0])},{_num(value[1])}"
            elif attr == "font_path" and value is None:
                value = DEFAULT_FONT
            out[key] = value
        return out

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        if path is not None:
            write_text_atomic(path, text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, name: str = "custom", base: RenderConfig | None = None) -> RenderConfig:
        """Build from Glyph JSON keys. Unknown keys and bad values raise ValueError naming them.
        Keys absent from `data` keep `base`'s values (default: the reference fallbacks)."""
        if not isinstance(data, dict):
            raise ValueError(f"render config must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise ValueError(f"unknown render config key(s) {unknown}; known keys: {list(_KEYS)}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            kwargs[_KEYS[key]] = _coerce(key, value)
        if kwargs.get("font_path") == DEFAULT_FONT:
            kwargs["font_path"] = None
        return dataclasses.replace(base or cls(), name=name, **kwargs)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> RenderConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"render config {path}: not valid JSON ({exc})") from None
        try:
            return cls.from_dict(data, name=path.stem)
        except ValueError as exc:
            raise ValueError(f"render config {path}: {exc}") from None

    def replace(self, **changes: Any) -> RenderConfig:
        return dataclasses.replace(self, **changes)


# ---- validation ---------------------------------------------------------------------------

_NUMBER_KEYS = {
    "margin-x", "margin-y", "font-size", "line-height", "horizontal-scale", "first-line-indent",
    "left-indent", "right-indent", "space-before", "space-after", "border-width", "border-padding",
}


def _coerce(key: str, value: Any) -> Any:
    """JSON value -> field value, with an error that names the key and the value."""
    def bad(expected: str) -> ValueError:
        return ValueError(f"render config key {key!r}: expected {expected}, got {value!r}")

    if key == "page-size":
        if isinstance(value, str):
            parts = value.split(",")
        elif isinstance(value, (list, tuple)):
            parts = list(value)
        else:
            raise bad('"width,height" in points')
        try:
            w, h = (float(p) for p in parts)
        except (TypeError, ValueError):
            raise bad('"width,height" in points') from None
        return (w, h)
    if key == "dpi":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise bad("an integer")
        return int(value)
    if key in _NUMBER_KEYS:
        if key == "line-height" and value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if key in ("auto-crop-width", "auto-crop-last-page"):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if key == "font-path":
        if value is not None and not isinstance(value, str):
            raise bad("a font file path")
        return value
    if key == "alignment":
        if not isinstance(value, str):
            raise bad(f"one of {ALIGNMENTS}")
        return value.upper()
    # colours and newline-markup: strings, checked in _validate
    if not isinstance(value, str):
        raise bad("a string")
    return value


def _validate(cfg: RenderConfig) -> None:
    def bad(attr: str, expected: str) -> ValueError:
        return ValueError(f"render config key {_FIELDS_TO_KEYS[attr]!r}: expected {expected}, got {getattr(cfg, attr)!r}")

    w, h = cfg.page_size
    if not (w > 0 and h > 0):
        raise bad("page_size", "positive width,height")
    if not 1 <= cfg.dpi <= 1200:
        raise bad("dpi", "an integer in 1..1200")
    if cfg.font_size <= 0:
        raise bad("font_size", "a positive number")
    if cfg.line_height is not None and cfg.line_height <= 0:
        raise bad("line_height", "a positive number")
    if cfg.margin_x < 0 or cfg.margin_y < 0:
        raise bad("margin_x" if cfg.margin_x < 0 else "margin_y", "a non-negative number")
    if 2 * cfg.margin_x + 12 + cfg.left_indent + cfg.right_indent >= w:
        raise bad("margin_x", f"margins and indents narrower than the page width {w}")
    if 2 * cfg.margin_y + 12 + cfg.leading > h:
        raise bad("margin_y", f"margins leaving room for one line on a page of height {h}")
    if not cfg.horizontal_scale > 0:
        raise bad("horizontal_scale", "a positive number")
    if cfg.alignment not in ALIGNMENTS:
        raise bad("alignment", f"one of {ALIGNMENTS}")
    for attr in ("font_color", "page_bg_color", "para_bg_color", "para_border_color"):
        if not _HEX_COLOR.match(getattr(cfg, attr)):
            raise bad(attr, 'a colour like "#RRGGBB"')
    if cfg.font_path is not None and not isinstance(cfg.font_path, str):
        raise bad("font_path", "a font file path")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))
