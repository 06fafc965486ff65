"""Real-architecture VLMs, built and loaded offline.

    init_model(arch, size, tokenizer, out_dir, seed=0, render="dense") -> Path   # render: the pages it reads
    init_model_like(folder, size, tokenizer, out_dir, chat_template=None)   # a real checkpoint's metadata
    read_metadata(folder), chat_conventions(template, arch), inspect_model(path_or_id)
    load_model(path, device=None, dtype=None) -> (model, processor, meta)
    load_processor(path) -> processor
    build_inputs(processor, messages, images) -> BatchFeature for model(**inputs) / generate

Families: "qwen3-vl", "qwen2.5-vl", "glm-4.1v"; sizes "tiny", "small", "2b", "8b"
(see `vtcr.models.architectures` for what each size is). Names are imported lazily so that
`import vtcr.models` does not load torch/transformers until something is used.
"""

from __future__ import annotations

from vtcr._lazy import lazy_exports


_EXPORTS = {
    "ARCHS": "architectures",
    "SIZES": "architectures",
    "Dims": "architectures",
    "Family": "architectures",
    "TokenIds": "architectures",
    "build_config": "architectures",
    "count_parameters": "architectures",
    "dims": "architectures",
    "family": "architectures",
    "resolve_size": "architectures",
    "chat_template": "chat_template",
    "prepare_tokenizer": "tokenizer",
    "arch_of": "architectures",
    "build_inputs": "processor",
    "image_token_counts": "processor",
    "load_processor": "processor",
    "make_image_processor": "processor",
    "make_processor": "processor",
    "torchvision_available": "processor",
    "META_FILE": "checkpoint",
    "ModelMeta": "checkpoint",
    "init_model": "checkpoint",
    "init_model_like": "checkpoint",
    "ChatConventions": "conventions",
    "chat_conventions": "conventions",
    "render_prompt": "conventions",
    "training_target": "conventions",
    "CheckpointMetadata": "metadata",
    "read_metadata": "metadata",
    "read_chat_template": "metadata",
    "inspect_model": "inspection",
    "load_family_tokenizer": "tokenizer",
    "load_model": "checkpoint",
    "read_meta": "checkpoint",
    "write_meta": "checkpoint",
    "resolve_model_path": "checkpoint",
    "save_checkpoint": "checkpoint",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
