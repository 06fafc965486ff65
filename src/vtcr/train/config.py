"""`TrainConfig`: everything one `vtcr train` run needs, as a frozen dataclass that round-trips JSON.

Defaults are the VTC-R1 recipe (LLaMA-Factory, Glyph): language model only (vision tower and
projector frozen), lr 1e-5, cosine schedule, 10% warm-up, one epoch, cutoff 32768, batch 1 x 8
accumulation steps; bf16 on CUDA, fp32 on CPU. One difference on purpose: images are NOT shrunk
to 262,144 pixels for training; the cap (`max_image_pixels`) is the one inference uses.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from vtcr._cpu import usable_cores

MODES = ("vtc", "standard")
DTYPES = ("auto", "fp32", "bf16", "fp16")
CONFIG_FILE = "train_config.json"

# Fields a resumed run may change: they do not change what is trained or in which order.
RESUME_FREE = frozenset({"save_steps", "save_total_limit", "logging_steps", "workers", "threads", "progress"})


@dataclass(frozen=True)
class TrainConfig:
    """One SFT run. `data`: a `vtcr build-data` folder; `model`: checkpoint folder or hub id.

    max_image_pixels: cap on each image's resized area during training, written into the saved
    processor and vtcr.json so inference uses the same (None: the starting checkpoint's vtcr.json
    cap, else the processor's own maximum -- full pages). cutoff_len: most tokens per sample (see
    `vtcr.train.data` for the truncation rule). max_steps: optimizer steps (overrides epochs).
    render_preset / render_config: the pages recorded in the checkpoint's vtcr.json, a preset name or
    a Glyph/VTC-R1 JSON file (neither: the data build's render config).
    dtype: weights during training; "auto" is fp32 weights (bf16 autocast on CUDA) for full
    fine-tuning, and a bf16 frozen base on CUDA with LoRA.
    """

    data: str
    model: str
    out: str
    mode: str = "vtc"
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float = 1e-5
    batch_size: int = 1
    grad_accum: int = 8
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    freeze_vision: bool = True
    # Learning-rate multiplier of the vision tower and its projector (full fine-tuning only): a
    # vision tower trained from random weights learns to read pages faster with a larger step.
    vision_lr_scale: float = 1.0
    max_image_pixels: int | None = None
    cutoff_len: int = 32768
    # Batches of samples of similar length (fewer padding tokens a step; each epoch's order still
    # seeded by `seed` and the epoch, so a resumed run sees the batches an uninterrupted one would).
    group_by_length: bool = False
    seed: int = 0
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    deepspeed: str | None = None
    render_preset: str | None = None
    render_config: str | None = None
    save_steps: int = 500
    save_total_limit: int | None = 2
    logging_steps: int = 1
    workers: int | None = None
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        for name in ("batch_size", "grad_accum", "cutoff_len", "save_steps", "logging_steps", "lora_r"):
            _check_int(name, getattr(self, name), minimum=1)
        if self.workers is not None:
            _check_int("workers", self.workers, minimum=0)
        if self.threads is not None:
            _check_int("threads", self.threads, minimum=1)
        _check_int("seed", self.seed, minimum=None)
        for name in ("max_steps", "max_image_pixels", "save_total_limit"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        if not (isinstance(self.epochs, (int, float)) and self.epochs > 0):
            raise ValueError(f"epochs must be a positive number, got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.vision_lr_scale, (int, float)) and self.vision_lr_scale > 0):
            raise ValueError(f"vision_lr_scale must be a positive number, got {self.vision_lr_scale!r}")
        if self.vision_lr_scale != 1 and (self.freeze_vision or self.lora):
            raise ValueError("vision_lr_scale needs a trained vision tower: freeze_vision=False and no LoRA")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.render_preset is not None and self.render_config is not None:
            raise ValueError("give render_preset or render_config, not both")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resources(self) -> tuple[int, int]:
        """(torch threads, data-loader workers) of this run: the given values, else sized from the
        cores this process may really use (`usable_cores`), never more busy threads than cores."""
        return resolve_resources(self.threads, self.workers)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {unknown}")
        return cls(**data)

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> TrainConfig:
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text))

    def resume_diffs(self, other: TrainConfig) -> list[str]:
        """Settings that differ from `other` and would change the run (RESUME_FREE aside)."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} (folder) vs {b[k]!r} (now)" for k in a if k not in RESUME_FREE and a[k] != b[k]]


def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be an int{bound}, got {value!r}")


def resolve_resources(threads: int | None, workers: int | None, cores: int | None = None) -> tuple[int, int]:
    """(threads, workers): on <= 2 cores no data-loader process (it would take a core from the
    compute threads: a step then waits on both); on more, a worker per 8 cores (at most 4) and the
    rest for torch. A given value is kept; the other fills what is left (at least 1 thread)."""
    cores = cores or usable_cores()
    if workers is None:
        workers = 0 if cores <= 2 else min(4, max(1, cores // 8))
        if threads is not None:
            workers = min(workers, max(0, cores - threads))
    if threads is None:
        threads = max(1, cores - workers)
    return threads, workers

