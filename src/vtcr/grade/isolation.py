"""Time limits for math-verify: an interval timer in the main thread, a worker process elsewhere.

math-verify guards itself with `signal.alarm`, which only works in the main thread. vtcr turns that
off and enforces its own limit: in the main thread an interval timer (cheap); in any other thread, or
when isolation is asked for, the call runs in a worker process that is killed when it overruns.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from .equivalence import _quiet_math_verify, _warm_math_verify, math_verify_equal

class _Timeout(BaseException):
    # BaseException, so that math-verify's and sympy's `except Exception` cannot swallow it.
    pass


def _raise_timeout(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Timeout()


def _can_use_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _call_with_alarm(timeout_s: float, fn, *args) -> Any:
    """Run fn(*args) in the main thread under an interval timer; raise _Timeout when it overruns.

    A timer the caller had set is re-armed afterwards with the time it had left.
    """
    previous_handler = signal.signal(signal.SIGALRM, _raise_timeout)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, timeout_s)
    start = time.monotonic()
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay > 0:
            left = previous_delay - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), previous_interval)


def _worker_main(fd: int) -> None:
    """Body of a grading worker process: answer (pred, gold, rel_tol) requests until None."""
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    _quiet_math_verify()
    _warm_math_verify()
    conn.send(("ready", None))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        try:
            conn.send(("ok", math_verify_equal(*request)))
        except Exception as exc:  # a crash in sympy is a "not equal", not a dead worker
            conn.send(("error", repr(exc)))


_WORKER_START_S = 120.0


class _Worker:
    """One grading process and the socket to it.

    A plain subprocess, not multiprocessing: spawn re-imports the caller's __main__ (breaking
    scripts without a main guard) and fork is unsafe in a process that runs other threads.
    """

    def __init__(self) -> None:
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        parent, child = socket.socketpair()
        package_parent = str(Path(__file__).resolve().parents[2])  # so the child imports this vtcr
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        code = "import sys; from vtcr.grade.isolation import _worker_main; _worker_main(int(sys.argv[1]))"
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, str(child.fileno())],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env,
            )  # fmt: skip
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        # Startup (importing sympy) must not eat into the first comparison's time limit.
        if not self.conn.poll(_WORKER_START_S) or self._recv_ready() is None:
            self.stop(kill=True)
            raise RuntimeError(f"grading worker did not start within {_WORKER_START_S:.0f} s")

    def _recv_ready(self):
        try:
            return self.conn.recv()
        except EOFError:
            return None

    def call(self, request: tuple, timeout_s: float) -> tuple[str, Any]:
        self.conn.send(request)
        if not self.conn.poll(timeout_s):
            raise _Timeout()
        return self.conn.recv()

    def stop(self, kill: bool = False) -> None:
        if not kill:
            try:
                self.conn.send(None)
                self.process.wait(timeout=5)
            except (OSError, ValueError, EOFError):
                pass
            except Exception:  # subprocess.TimeoutExpired
                kill = True
        if kill or self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.conn.close()
