"""Supervised fine-tuning on vtcr builds and the LLaMA-Factory export.

    from vtcr.train import TrainConfig, train
    result = train(TrainConfig(data="build/", model="ckpt/", out="trained/", lr=1e-5))

Modules: `config` (TrainConfig), `data` (samples from a build folder, the truncation rule, the
encoder shared with inference, the collator), `trainer` (the Trainer run, resume, LoRA, the final
checkpoint), `llamafactory` (`export_llamafactory`). The built-in model lives in `vtcr.builtin`. Names are imported lazily: `import vtcr.train` loads no torch.
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
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
