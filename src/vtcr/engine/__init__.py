"""The reasoning engine: the VTC-R1 loop, its modes, run records and generation backends.

    from vtcr.engine import EngineConfig, TransformersBackend, reason, reason_many
    backend = TransformersBackend.from_pretrained("path/to/checkpoint")
    record = reason("What is 2+3?", backend, EngineConfig(mode="vtc"))
    records = reason_many(questions, backend, EngineConfig(max_rounds=4), render_workers=2)

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
    "EngineConfig": "modes",
    "MODES": "modes",
    "is_final": "modes",
    "round_messages": "modes",
    "RoundRecord": "record",
    "RunRecord": "record",
    "STOP_REASONS": "record",
    "write_run": "record",
    "reason": "loop",
    "reason_many": "loop",
    "round_seed": "loop",
    "TransformersBackend": "transformers_backend",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
