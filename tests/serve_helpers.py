"""Starting a real `vtcr serve` subprocess on 127.0.0.1 for the server tests."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest


def _pump(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


def start_serve(args: list[str], log: Path, *, env: dict[str, str | None] | None = None,
                timeout_s: float = 120) -> tuple[subprocess.Popen, int, queue.Queue]:  # fmt: skip
    """`vtcr serve ARGS --port 0` in a fresh process, offline; (process, its port, its stdout lines,
    None at the end). Its stderr goes to `log`; the test fails with that log if no port is
    announced within `timeout_s`. `env` adds to this process's environment (None removes a name)."""
    merged = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    env = {k: v for k, v in merged.items() if v is not None}
    cmd = [sys.executable, "-m", "vtcr.cli", "serve", *args, "--port", "0"]
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    deadline, port = time.monotonic() + timeout_s, None
    while port is None and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)/v1", line)
        port = int(match.group(1)) if match else None
    if port is None:
        proc.kill()
        proc.wait(10)
        pytest.fail(f"vtcr serve did not start in {timeout_s} s:\n{log.read_text()[-3000:]}")
    return proc, port, lines
