"""Answer equivalence: fast exact and numeric checks, then math-verify for everything symbolic.

The functions here carry no time limit of their own; `vtcr.grade.isolation` and the `Grader` add it.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from fractions import Fraction

from .extract import _braced, _strip_math

_SPACING = re.compile(r"\\[,;:! ]|\\q?quad|~")


def _canon(s: str) -> str:
    """A spelling-insensitive form of a LaTeX answer, for the exact-match shortcut only."""
    s = _strip_math(s)
    s = re.sub(r"\\(?:left|right|displaystyle)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = _SPACING.sub("", s)
    s = re.sub(r"([_^])\{(\w)\}", r"\1\2", s)  # E_{1} -> E_1, x^{2} -> x^2
    s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s)  # degrees
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\s+", "", s)
    return s


_REMARK = re.compile(r",?\s*(?:\\q?quad|\\text\s*\{\s*(?:for|if|when|where|with)\b).*$", re.DOTALL)


def _drop_remark(s: str) -> str:
    """`x = 2, \\quad \\text{for } y > 0` -> `x = 2`: a side condition is not part of the answer."""
    head = _REMARK.sub("", s).strip()
    return head if head else s


def _number(s: str) -> tuple[Fraction, bool] | None:
    """A plain number written in `s` (commas, %, $, degrees, `\\frac{1}{2}`, `1.2\\times10^{5}`).

    Returns (value, had_percent) or None when `s` is not just a number.
    """
    t = _strip_math(s)
    # Trailing unit words and ordinals: "12^{\\text{th}}\\text{ grade}", "5\\ \\mathrm{cm}"
    t = re.sub(r"(?:\s*\\(?:text|mbox|mathrm)\s*\{[~\s]*[A-Za-z][^{}]*\}(?:\^\{?-?\d+\}?)?)+\s*$", "", t)
    t = re.sub(r"\^\s*\{?\s*(?:\\text\s*\{)?\s*(?:st|nd|rd|th)\s*\}?\}?\s*$", "", t)
    t = re.sub(r"\\text\s*\{\s*\}|\\[,;:! ]|\s+", "", t)
    t = re.sub(r"^\\\$|^\$", "", t)
    t = re.sub(r"\^\{?\\circ\}?$|°$", "", t)
    percent = bool(re.search(r"\\?%$", t))
    t = re.sub(r"\\?%$", "", t)
    m = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", t) or re.fullmatch(r"(-?)(\d+)/(\d+)", t)
    if m:
        if int(m.group(3)) == 0:
            return None
        value = Fraction(int(m.group(2)), int(m.group(3)))
        return (-value if m.group(1) else value), percent
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?)\\times10\^\{?(-?\d+)\}?", t)
    if m:
        return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2)), percent
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", t):
        t = t.replace(",", "")
    if re.fullmatch(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", t):
        return Fraction(t), percent
    return None


def _close(a: Fraction, b: Fraction, rel_tol: float) -> bool:
    if a == b:
        return True
    return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=0.0)


def _numeric_verdict(pred: str, gold: str, answer_type: str, rel_tol: float) -> bool | None:
    """True/False when both sides are plain numbers, None when math-verify has to decide."""
    p, g = _number(pred), _number(gold)
    if p is None or g is None:
        return None
    (pv, p_pct), (gv, g_pct) = p, g
    if answer_type == "integer":
        return pv == gv
    candidates = [pv]
    if p_pct != g_pct:  # "50\%" against 0.5, or 0.5 against "50\%"
        candidates.append(pv / 100 if p_pct else pv * 100)
    return any(_close(c, gv, rel_tol) for c in candidates)


class _DisabledTimeoutNotice(logging.Filter):
    """Drops math-verify's "Timeout is disabled" warning: vtcr enforces the limit itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


def _quiet_math_verify() -> None:
    for name in ("math_verify.parser", "math_verify.grader"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DisabledTimeoutNotice) for f in lg.filters):
            lg.addFilter(_DisabledTimeoutNotice())


# Spellings latex2sympy cannot read, rewritten the same way on both sides of a comparison:
# the astronomers' sun subscript, numpy function names and `1.`-style floats (minerva_math golds).
_MV_REWRITES = (
    (re.compile(r"_\{?\\odot\}?"), "_{odot}"),
    (re.compile(r"\bnp\.(arcsin|arccos|arctan|sin|cos|tan|exp|log|sqrt|pi)\b"), r"\\\1"),
    (re.compile(r"(\d)\.(?=[/*)\s]|$)"), r"\1"),
)


def _mv_parse(text: str) -> list:
    from math_verify import parse

    _quiet_math_verify()
    for pattern, repl in _MV_REWRITES:
        text = pattern.sub(repl, text)
    # Extracted answers are box contents, so box them again: math-verify then applies its
    # boxed-answer normalisation. An unbalanced fragment cannot be boxed; give it `$...$`.
    wrapped = f"\\boxed{{{text}}}" if _braced("{" + text + "}", 0) == (text, len(text) + 2) else f"${text}$"
    return parse(wrapped, parsing_timeout=None)


# A few answer shapes (sums, powers, roots, intervals, sets, tuples, equations) to compare once.
_WARMUP = (
    ("x^2+2x+1", "(x+1)^2"),
    ("\\frac{\\sqrt{3}}{2}", "0.866"),
    ("(1, 2]", "(1,2]"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
    ("y = 2x", "2x"),
)


@functools.lru_cache(maxsize=None)
def _warm_math_verify() -> None:
    """Import sympy and let the LaTeX parser and simplifier build their tables, once per process.

    The first comparisons take seconds; they must not run under a time limit, where they would
    count an answer wrong (and an interrupted import would leave the parser half-built).
    """
    for pred, gold in _WARMUP:
        math_verify_equal(pred, gold)


def math_verify_equal(pred: str, gold: str, rel_tol: float = 1e-4) -> bool:
    """math-verify's verdict, with its own signal timeouts off (the caller limits time).

    Two parsed numbers are also compared with `rel_tol`, which math-verify's fixed 6-digit
    rounding does not do (4.031882 vs 4.03188).
    """
    from math_verify import verify

    _quiet_math_verify()
    gold_parsed, pred_parsed = _mv_parse(gold), _mv_parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    if verify(gold_parsed, pred_parsed, timeout_seconds=None):
        return True
    g, p = gold_parsed[0], pred_parsed[0]
    if getattr(g, "is_number", False) and getattr(p, "is_number", False):
        try:
            gv, pv = complex(g.evalf()), complex(p.evalf())
        except (TypeError, ValueError):
            return False
        if gv.imag == 0 and pv.imag == 0:
            return math.isclose(gv.real, pv.real, rel_tol=rel_tol, abs_tol=0.0)
    return False
