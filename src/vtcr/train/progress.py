"""What a training run shows and logs while it runs: one progress bar and a per-step log file.

transformers' own ProgressCallback writes every log dict (`{'loss': ..., 'grad_norm': ...}`) under
its bar, and PrinterCallback prints them when bars are off. `TrainProgress` replaces both: the bar
("train", optimizer steps) carries the latest loss and learning rate, and every log dict goes to
OUT/train_log.jsonl instead of the terminal, one JSON line per logging step, flushed as it is written.

A resumed run first drops the lines logged after the checkpoint it resumes from (that work is
redone and logged again), so the file never holds a step twice.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from vtcr._io import write_text_atomic

STEP_LOG_FILE = "train_log.jsonl"


def trim_step_log(path: Path, last_step: int) -> None:
    """Keep only the lines of `path` logged at or before optimizer step `last_step` (and whole lines)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a torn last line of a killed run
            continue
        if int(entry.get("step", 0)) <= last_step:
            kept.append(line)
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # nan/inf stay readable JSON
    return value


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def make_progress_callback(log_path: Path, show: bool):
    """A TrainerCallback (built on demand: transformers is imported here) that shows the bar when
    `show` and appends every log dict to `log_path` (main process only)."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class TrainProgress(TrainerCallback):
        """One bar per run with loss and lr on it; the raw log dicts go to the step log."""

        def __init__(self) -> None:
            self.bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            trim_step_log(log_path, state.global_step)
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                            disable=not show, dynamic_ncols=True)  # fmt: skip

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            entry = {"step": state.global_step, **{k: _json_value(v) for k, v in logs.items() if k != "total_flos"}}
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            if self.bar is not None:
                shown = {k: _short(logs[k]) for k in ("loss", "learning_rate") if k in logs}
                if "train_loss" in logs:  # the run's summary line: its mean loss
                    shown = {"mean loss": _short(logs["train_loss"])}
                if shown:
                    self.bar.set_postfix({("lr" if k == "learning_rate" else k): v for k, v in shown.items()})

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TrainProgress()


__all__ = ["STEP_LOG_FILE", "make_progress_callback", "trim_step_log"]
