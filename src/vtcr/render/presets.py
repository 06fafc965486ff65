"""Named render configurations, the one default, and the one resolver every stage uses.

vtcr1  The paper's settings exactly (its evaluation/config_en.json): A4 595x842 pt at 72 dpi, margins 10,
       DejaVu Sans 9 pt on 10 pt leading, LEFT, real line breaks (`<br/>`), auto-crop width and last page.
       On reasoning traces most of each page is short and blank lines: about 2x compression (Qwen3-VL).
dense  The default. Same glyph size, leading, page and dpi (so the same legibility), but source line
       breaks are drawn inline as a "↵" marker and the text flows on: no blank or half-empty lines.
       About 3x denser pages than vtcr1 on the shared traces (see perf/render_bench.py). The
       marker is a glyph that reasoning text does not otherwise use, so it needs no colour of its own
       (a colour, e.g. '<font color="#FF0000"> ↵ </font>', works too but costs rendering time).

Which config renders optical memory (`resolve_render_config`): the one the user gives (a preset name,
a Glyph/VTC-R1 JSON file or a RenderConfig), else the one the model was trained with (its
`vtcr.json`, or what `vtcr serve` reports), else `PAPER_PRESET` with a warning: a checkpoint vtcr did
not train (no vtcr.json, e.g. VTC-R1-Glyph) learned from the paper's pages. `DEFAULT_PRESET` is what
vtcr itself renders and builds training data with when nothing says otherwise.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Union

from .config import RenderConfig

logger = logging.getLogger(__name__)

DEFAULT_PRESET = "dense"
PAPER_PRESET = "vtcr1"

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


def preset_name(config: RenderConfig) -> str | None:
    """The name of the preset `config` equals (whatever its own name), or None for a custom config."""
    return next((name for name, cfg in PRESETS.items() if cfg == config), None)


RenderSpec = Union[RenderConfig, str, os.PathLike, dict, None]


def render_config(spec: RenderSpec) -> RenderConfig | None:
    """A RenderConfig from what a user or a file gives: a RenderConfig, a preset name, a path to a
    Glyph/VTC-R1 JSON file, or that JSON as a dict (None stays None). A config that equals a
    preset carries the preset's name."""
    if spec is None or isinstance(spec, RenderConfig):
        config = spec
    elif isinstance(spec, dict):
        config = RenderConfig.from_dict(spec)
    else:
        text = os.fspath(spec)
        path = Path(text).expanduser()
        if text in PRESETS:
            return PRESETS[text]
        if text.endswith(".json") or path.is_file():
            if not path.is_file():
                raise FileNotFoundError(f"render config file not found: {text}")
            config = RenderConfig.from_json(path)
        else:
            preset(text)  # ValueError naming the known presets
    name = preset_name(config) if config is not None else None
    return config.replace(name=name) if name is not None and config.name != name else config


def resolve_render_config(given: RenderSpec = None, model: RenderSpec = None, *, model_name: str = "the model") -> RenderConfig:
    """The render config of a run: `given` (the user's), else `model` (what the model was trained
    with), else the paper's preset with a warning that says so."""
    chosen = render_config(given)
    if chosen is None:
        chosen = render_config(model)
    if chosen is None:
        logger.warning(
            "no render config is known for %s (no vtcr.json, or a server that does not report one): using the "
            "paper's layout %r, which checkpoints vtcr did not train (e.g. VTC-R1-Glyph) learned from; pass "
            "--render-preset NAME or --render-config FILE to choose", model_name, PAPER_PRESET,
        )  # fmt: skip
        chosen = PRESETS[PAPER_PRESET]
    return chosen
