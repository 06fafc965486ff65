"""The reasoning engine: the VTC-R1 loop, its modes, run records and generation backends.

    from vtcr.engine import EngineConfig, TransformersBackend, reason, reason_many
    backend = TransformersBackend.from_pretrained("path/to/checkpoint")
    record = reason("What is 2+3?", backend, EngineConfig(mode="vtc"))
    for index, record in iter_reason(questions, backend, EngineConfig(max_rounds=4)):
        ...                                   # each problem as soon as it finishes
    records = reason_many(questions, backend)  # all of them, in input order

Modes and the stop rule: `vtcr.engine.modes`; the loop and scheduling: `vtcr.engine.loop`; the run
record: `vtcr.engine.record`; the backend interface: `vtcr.engine.backend`. Names are imported
lazily, so `import vtcr.engine` loads no torch until a backend is used.
"""

from __future__ import annotations

from vtcr._lazy import lazy_exports


_EXPORTS = {
    "Backend": "backend",
    "GenerationRequest": "backend",
    "GenerationResult": "backend",
    "open_backend": "backends",
    "EngineConfig": "modes",
    "MODES": "modes",
    "is_final": "modes",
    "round_messages": "modes",
    "RoundRecord": "record",
    "RunRecord": "record",
    "STOP_REASONS": "record",
    "write_run": "record",
    "iter_reason": "loop",
    "reason": "loop",
    "reason_many": "loop",
    "round_seed": "loop",
    "run_render_config": "loop",
    "TransformersBackend": "transformers_backend",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
