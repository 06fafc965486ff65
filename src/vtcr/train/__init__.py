"""Supervised fine-tuning on vtcr builds, the LLaMA-Factory export, and vtcr's built-in model.

    from vtcr.train import TrainConfig, train
    result = train(TrainConfig(data="build/", model="ckpt/", out="trained/", lr=1e-5))

Modules: `config` (TrainConfig), `data` (samples from a build folder, the truncation rule, the
encoder shared with inference, the collator), `trainer` (the Trainer run, resume, LoRA, the final
checkpoint), `llamafactory` (`export_llamafactory`), `builtin` (the synthetic optical-memory
task and `ensure_builtin_model`). Names are imported lazily: `import vtcr.train` loads no torch.
"""

from __future__ import annotations

from vtcr._lazy import lazy_exports


_EXPORTS = {
    "TrainConfig": "config",
    "BuildInfo": "data",
    "Collator": "data",
    "DataPlan": "data",
    "Sample": "data",
    "SampleEncoder": "data",
    "load_samples": "data",
    "read_build": "data",
    "TrainResult": "trainer",
    "last_checkpoint": "trainer",
    "train": "trainer",
    "inspect_training": "trainer",
    "export_llamafactory": "llamafactory",
    "LlamaFactoryExport": "llamafactory",
    "BuiltinRecipe": "builtin",
    "builtin_engine_config": "builtin",
    "builtin_model_dir": "builtin",
    "ensure_builtin_model": "builtin",
    "evaluate_builtin": "builtin",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
