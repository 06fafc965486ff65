"""Search the render parameters for the densest config whose pages an OCR engine still reads as well
as `vtcr1`'s (within a margin): a bounded, deterministic local search on a discrete grid.

The caller supplies two measurements of a `RenderConfig`: `compression(config)` (render and count
vision tokens: cheap, so `vtcr.bench.fidelity` measures it on all texts) and `accuracy(config)` (OCR
the pages: seconds per config, so on a small sample of texts). The search never looks at a config
that compresses less than the current one.

1. Free moves first (margins, page size, newline marker): each takes the densest value whose
   accuracy stays above the threshold (values tried from the densest down; the first that passes wins).
2. Then a greedy climb on the moves that trade legibility for density (font size, leading, dpi,
   horizontal scale, font): each step tries one notch denser on every parameter still alive and
   takes the feasible move with the most compression gained per accuracy point lost. A parameter whose
   move fails is retired: every later move only makes pages denser still, so it would fail again.
3. The climb stops when no move passes or after `max_trials` OCR evaluations, whichever comes first.

The accepted configs form a path from the start (the densest preset that passes) to the result;
`vtcr.bench.fidelity` confirms the result on the full text set and steps back along this path if
it falls outside the margin there. Same inputs -> same trials in the same order -> same result.

Every searched value stays within what the default `fast` backend renders (no space-before/after,
no paragraph border; newline markup is `<br/>` or a plain inline marker), so the result loads with
`RenderConfig.from_json` and renders with `vtcr render --config`, `vtcr build-data --config FILE` and the
engine (`vtcr reason --render-config FILE`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vtcr.render import RenderConfig

# Fonts tried: the bundled ones (DejaVu Sans, DejaVu Sans Condensed), then these families where
# matplotlib's font manager finds them on this machine (regular weight and style). A config with a
# font from outside the package needs the same font file wherever it is used.
DEFAULT_FONT_FAMILIES = ("Liberation Sans Narrow", "Liberation Sans", "DejaVu Serif")
NEWLINE_MARKER = "\u21b5"


@dataclass(frozen=True)
class SearchSpace:
    """The grid. `leading_gap` is line-height minus font-size (points); `margin` sets margin-x and margin-y."""

    font_size: tuple[float, ...] = (5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0, 8.5, 9.0, 9.5, 10.0)
    leading_gap: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
    margin: tuple[float, ...] = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0)
    dpi: tuple[int, ...] = (48, 54, 60, 66, 72, 80, 88, 96)
    horizontal_scale: tuple[float, ...] = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
    newline_markup: tuple[str, ...] = (f" {NEWLINE_MARKER} ", NEWLINE_MARKER, "<br/>")
    page_size: tuple[tuple[float, float], ...] = ((595.0, 842.0), (612.0, 792.0), (842.0, 1191.0))
    fonts: tuple[str | None, ...] = (None,)  # None: the bundled DejaVu Sans; else bundled names or font files

    FREE = ("margin", "page_size", "newline_markup")
    LOSSY = ("font_size", "leading_gap", "dpi", "horizontal_scale", "fonts")
    ORDINAL = ("font_size", "leading_gap", "dpi", "horizontal_scale")


SEARCH_PARAMS = SearchSpace.FREE + SearchSpace.LOSSY


def check_params(params: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [p for p in params if p not in SEARCH_PARAMS]
    if unknown or not params:
        raise ValueError(f"unknown search parameter(s) {unknown}; choose from {list(SEARCH_PARAMS)}")
    return tuple(params)


def available_fonts(families: tuple[str, ...] = DEFAULT_FONT_FAMILIES) -> tuple[str | None, ...]:
    """The bundled fonts (None: the default DejaVu Sans; then the others by their bundled name), plus
    the regular face of each family matplotlib's font manager knows on this machine, in the given
    order (absent families are skipped)."""
    from matplotlib import font_manager

    from vtcr.render.config import BUNDLED_FONTS, DEFAULT_FONT

    found: list[str | None] = [None] + [name for name in BUNDLED_FONTS if name != DEFAULT_FONT]
    bundled_files = {path.name for path in BUNDLED_FONTS.values()}
    entries = sorted(font_manager.fontManager.ttflist, key=lambda f: f.fname)
    for family in families:
        for entry in entries:
            if (entry.name == family and entry.style == "normal" and entry.weight in (400, "normal")
                    and Path(entry.fname).suffix.lower() in (".ttf", ".otf") and entry.fname not in found
                    and Path(entry.fname).name not in bundled_files):
                found.append(entry.fname)
                break
    return tuple(found)


# ---- moves: a parameter's value read from / written into a RenderConfig -------------------------

def _get(cfg: RenderConfig, param: str) -> Any:
    if param == "leading_gap":
        return round(cfg.leading - cfg.font_size, 4)
    if param == "margin":
        return cfg.margin_x if cfg.margin_x == cfg.margin_y else None
    if param == "fonts":
        return cfg.font_path
    return getattr(cfg, param)


def _set(cfg: RenderConfig, param: str, value: Any) -> RenderConfig:
    if param == "font_size":
        gap = cfg.leading - cfg.font_size
        return cfg.replace(font_size=float(value), line_height=round(float(value) + gap, 4))
    if param == "leading_gap":
        return cfg.replace(line_height=round(cfg.font_size + float(value), 4))
    if param == "margin":
        return cfg.replace(margin_x=float(value), margin_y=float(value))
    if param == "fonts":
        return cfg.replace(font_path=value)
    return cfg.replace(**{param: value})


def _candidates(space: SearchSpace, cfg: RenderConfig, param: str) -> list[RenderConfig]:
    """Configs that change `param` alone, to every other value of its grid (nearest first for an
    ordinal parameter, where a smaller value is the denser one)."""
    values = list(getattr(space, param))
    current = _get(cfg, param)
    if param in space.ORDINAL and current is not None:
        values = sorted((v for v in values if v < current), reverse=True)  # one notch down, then the next
    out = []
    for value in values:
        if value == current:
            continue
        try:
            out.append(_set(cfg, param, value).replace(name="search"))
        except ValueError:  # off the page (margins too wide for a small page, ...): not a candidate
            continue
    return out


# ---- the search ----------------------------------------------------------------------------------

@dataclass
class Trial:
    """One OCR evaluation of a candidate on the sample texts."""

    index: int
    phase: str  # "start", "free" or "climb"
    param: str
    config: dict[str, Any]  # Glyph/VTC-R1 JSON keys
    compression: float
    accuracy: float | None
    feasible: bool
    accepted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "phase": self.phase, "param": self.param, "compression": self.compression,
                "accuracy": self.accuracy, "feasible": self.feasible, "accepted": self.accepted,
                "config": self.config}


@dataclass
class SearchResult:
    best: RenderConfig
    path: list[RenderConfig]  # accepted configs, start first, best last
    trials: list[Trial] = field(default_factory=list)
    threshold: float = 0.0
    stopped: str = ""  # why the search ended


def search_render_config(
    start: RenderConfig,
    threshold: float,
    compression: Callable[[RenderConfig], float],
    accuracy: Callable[[RenderConfig], float | None],
    space: SearchSpace | None = None,
    max_trials: int = 40,
    on_trial: Callable[[Trial], None] | None = None,
    params: tuple[str, ...] | None = None,
) -> SearchResult:
    """The densest config reachable from `start` whose `accuracy` is >= `threshold` (see the module
    docstring). `start` must itself pass; `on_trial` sees each trial as it is measured; `params`
    limits the search to some of `SEARCH_PARAMS` (default: all)."""
    space = space or SearchSpace()
    if max_trials < 1:
        raise ValueError(f"max_trials must be >= 1, got {max_trials}")
    params = check_params(params or SEARCH_PARAMS)
    trials: list[Trial] = []
    seen: dict[str, Trial] = {}
    comp_cache: dict[str, float] = {}

    def comp(cfg: RenderConfig) -> float:
        key = cfg.to_json()
        if key not in comp_cache:
            value = compression(cfg)
            comp_cache[key] = value if value == value else 0.0  # NaN (nothing drawn) never wins
        return comp_cache[key]

    def measure(cfg: RenderConfig, phase: str, param: str) -> Trial:
        key = cfg.to_json()
        if key in seen:
            return seen[key]
        acc = accuracy(cfg)
        trial = Trial(len(trials), phase, param, cfg.to_dict(), comp(cfg), acc, acc is not None and acc >= threshold)
        trials.append(trial)
        seen[key] = trial
        if on_trial:
            on_trial(trial)
        return trial

    first = measure(start, "start", "")
    if not first.feasible:
        raise ValueError(f"the search's start config {start.name!r} reads {first.accuracy} on the sample, "
                         f"below the threshold {threshold:.4f}: start from a config that passes (e.g. vtcr1)")
    first.accepted = True
    current, current_trial = start.replace(name="search"), first
    path = [start]
    budget_left = lambda: len(trials) < max_trials  # noqa: E731

    # 1. free moves: densest passing value per parameter
    for param in (p for p in space.FREE if p in params):
        denser = sorted((c for c in _candidates(space, current, param) if comp(c) > comp(current)),
                        key=lambda c: -comp(c))
        for cand in denser:
            if not budget_left():
                break
            trial = measure(cand, "free", param)
            if trial.feasible:
                trial.accepted = True
                current, current_trial = cand, trial
                path.append(cand)
                break

    # 2. greedy climb on the lossy parameters
    alive = [p for p in space.LOSSY if p in params]
    stopped = "no denser move keeps the accuracy above the threshold"
    while alive:
        moves: list[tuple[float, int, RenderConfig, Trial]] = []
        for rank, param in enumerate(list(alive)):
            if param in space.ORDINAL:  # the nearest grid value that compresses more: one step at a time
                denser = next(([c] for c in _candidates(space, current, param)
                               if comp(c) > comp(current) * (1 + 1e-9)), [])
            else:
                denser = sorted((c for c in _candidates(space, current, param) if comp(c) > comp(current) * (1 + 1e-9)),
                                key=lambda c: -comp(c))
            if not denser:
                alive.remove(param)
                continue
            passed = None
            for cand in denser:
                if not budget_left():
                    break
                trial = measure(cand, "climb", param)
                if trial.feasible:
                    passed = (cand, trial)
                    break
            if passed is None:
                if budget_left():
                    alive.remove(param)  # it failed (not merely unmeasured): retired
                continue
            cand, trial = passed
            gain = math.log(trial.compression / current_trial.compression)
            loss = max((current_trial.accuracy or 0.0) - (trial.accuracy or 0.0), 1e-3)
            moves.append((gain / loss, -rank, cand, trial))
        if not moves:
            if not budget_left():
                stopped = f"the trial budget ({max_trials} OCR evaluations) ran out"
            break
        _, _, current, current_trial = max(moves, key=lambda m: (m[0], m[1]))
        current_trial.accepted = True
        path.append(current)
        if not budget_left():
            stopped = f"the trial budget ({max_trials} OCR evaluations) ran out"
            break
    return SearchResult(best=current, path=path, trials=trials, threshold=threshold, stopped=stopped)
