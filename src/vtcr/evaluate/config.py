"""The evaluation's settings: one frozen `EvalConfig`, saved as DIR/config.json.

It holds an `EngineConfig` (`engine`): rounds, tokens, sampling, render config, ... exactly as the
engine defines them, so defaults live in one place. Each run replaces the engine config's `mode`
(by each of `modes`), `answer_type` (the benchmark's) and `save_images`; its `seed` is the base
seed from which each problem x sample's seed is derived (`vtcr.evaluate.run.unit_seed`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import Any

from vtcr.engine.modes import MODES, EngineConfig
from vtcr.data.synthetic import HELDOUT_SEED, SUPPORTED_LENGTHS, parse_length_range
from vtcr.evaluate.benchmarks import get_benchmark

DEFAULT_MODES = ("vtc", "standard")
# config.json of runs made before `engine` existed held these flat; they are read into `engine`.
_LEGACY_ENGINE_KEYS = ("max_rounds", "round_tokens", "temperature", "top_p", "seed", "render_preset")


@dataclass(frozen=True)
class EvalConfig:
    """Everything that decides the numbers of an evaluation.

    samples: samples per problem; None uses each benchmark's default (16 for aime25/amc23, else 1).
    limit: only the first `limit` problems of each benchmark (file order; a generated benchmark such
    as `builtin` makes `limit` problems, default 100). task_seed / task_length: the seed and the
    lengths in steps ((min, max) or "MIN:MAX") of the generated `builtin` problems.
    model: a checkpoint folder or hub id (in-process transformers), or with `server` the served
    model name is `served_model`.
    batch_size: problem x sample pairs handed to the engine at once (bounds memory; the unit of the
    batch-amortised latency). save_images: keep each vtc round's page images for the viewer.
    Runtime-only choices (device, dtype, concurrency, render workers, grading time limit) are
    arguments of `run_eval`, not part of the config.
    """

    benchmarks: tuple[str, ...]
    modes: tuple[str, ...] = DEFAULT_MODES
    samples: int | None = None
    limit: int | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    model: str | None = None
    server: str | None = None
    served_model: str | None = None
    batch_size: int = 64
    save_images: bool = True
    task_seed: int = HELDOUT_SEED
    task_length: tuple[int, int] = SUPPORTED_LENGTHS

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so the config stays hashable and compares equal.
        for name in ("benchmarks", "modes"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(v.strip() for v in value.split(",") if v.strip())
            object.__setattr__(self, name, tuple(value))
        if isinstance(self.engine, dict):
            object.__setattr__(self, "engine", EngineConfig.from_dict(self.engine))
        if not isinstance(self.engine, EngineConfig):
            raise ValueError(f"engine must be an EngineConfig, got {type(self.engine).__name__}")
        if not self.benchmarks:
            raise ValueError("no benchmarks given")
        for name in self.benchmarks:
            get_benchmark(name)  # raises naming the known ones
        if not self.modes:
            raise ValueError("no modes given")
        for mode in self.modes:
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        for name in ("benchmarks", "modes"):
            value = getattr(self, name)
            if len(set(value)) != len(value):
                raise ValueError(f"{name} lists an entry twice: {', '.join(value)}")
        for name in ("samples", "limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if isinstance(self.task_seed, bool) or not isinstance(self.task_seed, int):
            raise ValueError(f"task_seed must be an int, got {self.task_seed!r}")
        object.__setattr__(self, "task_length", parse_length_range(self.task_length))  # refuses unsupported lengths
        if self.server is not None and not self.served_model:
            raise ValueError("a server needs the served model name (served_model / --served-model)")
        if self.server is not None and self.model is not None:
            raise ValueError("give either a model (in-process) or a server, not both")

    # -- JSON ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["benchmarks"], d["modes"] = list(self.benchmarks), list(self.modes)
        d["engine"] = self.engine.to_dict()
        d["task_length"] = list(self.task_length)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalConfig:
        data = dict(data)
        legacy = {k: data.pop(k) for k in _LEGACY_ENGINE_KEYS if k in data}
        if legacy:
            data["engine"] = {**data.get("engine", {}), **legacy}
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown EvalConfig keys: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> EvalConfig:
        return cls.from_dict(json.loads(text))

    # -- derived ---------------------------------------------------------------------------------

    def samples_for(self, benchmark: str) -> int:
        return self.samples if self.samples is not None else get_benchmark(benchmark).default_samples

    def engine_config(self, mode: str, answer_type: str = "math", save_images: bool = False) -> EngineConfig:
        """The engine config of one run: `engine` with this mode, answer type and image saving."""
        return replace(self.engine, mode=mode, answer_type=answer_type, save_images=save_images)

    def differences(self, other: EvalConfig) -> list[str]:
        """`key: this -> other` for every setting that differs (engine settings as `engine.KEY`)."""

        def flat(config: EvalConfig) -> dict[str, Any]:
            d = config.to_dict()
            engine = d.pop("engine")
            return {**d, **{f"engine.{k}": v for k, v in engine.items()}}

        a, b = flat(self), flat(other)
        return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
