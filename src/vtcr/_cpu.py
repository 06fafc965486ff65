"""The CPU cores this process may really use, for sizing torch threads (training, generation,
benchmarks): a busy neighbour on a shared machine then slows a step, not oversubscribes it."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)
