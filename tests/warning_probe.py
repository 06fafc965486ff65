"""Run one `vtcr` command and record every deprecation notice it causes, with the call stack.

    python tests/warning_probe.py OUT.json VERB [ARGS...]

Records Python warnings (all categories, every occurrence: the filter is "always") and log records
of the `transformers` logger, each with the stack at the moment it was raised, into OUT.json.
`vtcr_caused(notice)` says whether vtcr's own code is to blame: the notice points at a vtcr file,
or the innermost vtcr call on its stack passes (as a keyword argument) or reads (as an attribute) a
name that the message calls deprecated (e.g. vtcr calls `model(..., past_key_values=...)` and
transformers warns "`past_key_values` is deprecated").
A fresh process per command, so transformers' warn-once caches start empty.
"""

from __future__ import annotations

import json
import linecache
import logging
import re
import sys
import warnings
from pathlib import Path

DEPRECATION_CATEGORIES = ("DeprecationWarning", "PendingDeprecationWarning", "FutureWarning")


def _stack() -> list[dict]:
    """The calling frames, outermost first, each with the source of the whole expression it is
    executing (a call spread over several lines included: its keyword arguments are what count)."""
    frames = []
    frame = sys._getframe(2)  # skip this helper and the hook calling it
    while frame is not None:
        code = frame.f_code
        start = end = frame.f_lineno
        positions = list(code.co_positions())
        if 0 <= frame.f_lasti // 2 < len(positions):
            first, last = positions[frame.f_lasti // 2][:2]
            start, end = first or start, last or end
        source = "".join(linecache.getline(code.co_filename, n) for n in range(start or 0, (end or 0) + 1))
        frames.append({"file": code.co_filename, "line": frame.f_lineno, "source": source})
        frame = frame.f_back
    return frames[::-1]


def record_notices(notices: list[dict]) -> logging.Handler:
    """Install the warning hook and the transformers log handler (returned); they append to `notices`."""
    warnings.simplefilter("always")

    def showwarning(message, category, filename, lineno, file=None, line=None):
        notices.append({"kind": "warning", "category": category.__name__, "message": str(message),
                        "file": filename, "line": lineno, "stack": _stack()})  # fmt: skip

    warnings.showwarning = showwarning

    class Handler(logging.Handler):
        def emit(self, record):
            notices.append({"kind": "log", "category": record.levelname, "message": record.getMessage(),
                            "file": record.pathname, "line": record.lineno, "stack": _stack()})  # fmt: skip

    handler = Handler(level=logging.WARNING)
    logging.getLogger("transformers").addHandler(handler)
    return handler


def is_deprecation(notice: dict) -> bool:
    return notice["category"] in DEPRECATION_CATEGORIES or "deprecat" in notice["message"].lower()


def vtcr_caused(notice: dict, own_root: str) -> bool:
    """Whether the deprecation `notice` comes from code under `own_root` (vtcr's source folder)."""
    if not is_deprecation(notice):
        return False
    if notice["file"].startswith(own_root):
        return True
    own = [f for f in notice["stack"] if f["file"].startswith(own_root)]
    if not own:
        return False
    # the deprecated names come before "deprecated"; the replacement ("Use `cache` instead") after it
    message = notice["message"]
    cut = message.lower().find("deprecat")
    head = message[:cut] if cut > 0 else message
    names = set(re.findall(r"[`'\"]([A-Za-z_][A-Za-z0-9_]*)[`'\"/]", head))
    names |= set(re.findall(r"/`?([A-Za-z_][A-Za-z0-9_]*)`", head))
    call = own[-1]["source"]
    # the call passes the name as a keyword argument, or reads it as an attribute
    return any(re.search(rf"(\b{re.escape(n)}\s*=(?!=)|\.{re.escape(n)}\b)", call) for n in names)


def main(argv: list[str]) -> int:
    out, command = Path(argv[0]), argv[1:]
    notices: list[dict] = []
    record_notices(notices)
    from vtcr.cli import main as vtcr_main

    try:
        rc = vtcr_main(command)
    finally:
        out.write_text(json.dumps({"notices": notices}, indent=1), encoding="utf-8")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
