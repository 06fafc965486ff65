"""How evaluation figures are written for people: one rounding rule for report.md, the viewer and the CLI.

Rule: round half up (away from zero) on the number's shortest decimal form, `repr(value)` -- what
a person reading 138.5 or 2.675 expects (139, 2.68) -- and never Python's round-half-even on the
binary value, nor JavaScript's toFixed. Every figure a human sees of an eval folder is formatted
here, in Python; the viewer receives strings, so the browser never rounds anything itself.

Kinds: "int" (thousands separators, no decimals), "num" (2 decimals), "pct" (a fraction shown as a
percentage with 1 decimal, no % sign), "x" (2 decimals and "x"), "s" (seconds: 3 significant digits
below 10, else 1 decimal). None shows as "–".
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

MISSING = "–"
KINDS = ("int", "num", "pct", "x", "s", "str")

# The summary-group columns both report.md and the viewer show: header, summary key, kind.
GROUP_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("mode", "mode", "str"),
    ("problems", "problems", "int"),
    ("K", "samples", "int"),
    ("avg@K %", "avg_at_k", "pct"),
    ("pass@K %", "pass_at_k", "pct"),
    ("gen. tokens", "generated_tokens", "int"),
    ("vision tokens", "vision_tokens", "int"),
    ("peak context", "peak_context_tokens", "int"),
    ("rounds", "rounds", "num"),
    ("finished %", "finished_rate", "pct"),
    ("exact %", "exact_rate", "pct"),
    ("lines right %", "trace_right_rate", "pct"),
    ("latency/problem s", "latency_s", "s"),
    ("amortised s", "amortised_latency_s", "s"),
    ("speed-up", "speedup", "x"),
    ("speed-up (amortised)", "speedup_amortised", "x"),
    ("errors", "errors", "int"),
)


def round_half_up(value: float | int, places: int) -> Decimal:
    """`value` rounded half up to `places` decimals (negative places: tens, hundreds, ...)."""
    return Decimal(repr(value)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def _significant(value: float, digits: int) -> Decimal:
    d = Decimal(repr(value))
    if d.is_zero():
        return d.quantize(Decimal(1).scaleb(-(digits - 1)))
    places = digits - 1 - d.adjusted()
    rounded = round_half_up(value, places)
    if rounded.adjusted() != d.adjusted():  # 9.995 -> 10.0: one digit more on the left, one fewer on the right
        rounded = round_half_up(value, places - 1)
    return rounded


def format_figure(value: Any, kind: str = "num") -> str:
    """`value` as report.md, the viewer and the CLI show it (the rule is in the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"unknown figure kind {kind!r}; one of {', '.join(KINDS)}")
    if value is None:
        return MISSING
    if kind == "str" or isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        value = int(value)
    if kind == "int":
        return f"{round_half_up(value, 0):,f}"
    if kind == "pct":
        return f"{_pct(value):f}"
    if kind == "x":
        return f"{round_half_up(value, 2):f}x"
    if kind == "s":
        return f"{_significant(value, 3):f}" if abs(value) < 10 else f"{round_half_up(value, 1):f}"
    return f"{round_half_up(value, 2):f}"


def _pct(value: float) -> Decimal:
    # scale the decimal form, not the binary value (100 * 0.1435 is 14.349999999999998 in binary)
    return (Decimal(repr(value)) * 100).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def format_group(group: dict[str, Any]) -> dict[str, str]:
    """Every GROUP_COLUMNS figure of one summary group, as shown."""
    return {key: format_figure(group.get(key), kind) for _, key, kind in GROUP_COLUMNS}


__all__ = ["GROUP_COLUMNS", "KINDS", "MISSING", "format_figure", "format_group", "round_half_up"]
