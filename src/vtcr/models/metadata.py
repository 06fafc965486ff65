"""A real checkpoint's metadata folder, read: the files that ship next to the weights.

    meta = read_metadata("../shared/models/Qwen__Qwen3-VL-8B-Instruct")
    meta.arch, meta.chat_template, meta.vision_spec(), meta.stop_ids(), meta.config_at("tiny")

Files read (each optional; what a folder lacks comes from vtcr's family table):
- ``config.json``: the family (``model_type``, else ``architectures``) and the architecture, shrunk
  to a vtcr size by `shrink_config` (widths and depths of `vtcr.models.architectures.dims`; token
  ids, vocabulary, rope and norms kept);
- the chat template: ``chat_template.jinja``, else ``chat_template.json["chat_template"]``, else
  ``tokenizer_config.json["chat_template"]`` (the first one found);
- ``generation_config.json``: the stop ids (``eos_token_id``);
- ``preprocessor_config.json``: the image budget (patch, merge, min/max pixels), as a
  `vtcr.tokens.VisionSpec`; a config without a pixel budget is refused, since vtcr could not price
  a page the way the checkpoint's processor will;
- ``tokenizer_config.json``: eos / pad tokens and the ids of added tokens.

A folder without config.json (GLM-4.1V and Qwen2.5-VL here) takes its family from
``preprocessor_config.json``'s ``processor_class`` and its architecture from vtcr's family table.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .architectures import ARCHS, FAMILIES, MODEL_TYPE_TO_ARCH, _scaled_mrope, dims, family

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_FILE = "processor_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", TOKENIZER_CONFIG_FILE)

# config.json "architectures" class names -> arch (when model_type is missing).
_ARCHITECTURE_CLASSES = {
    "Qwen3VLForConditionalGeneration": "qwen3-vl",
    "Qwen3VLMoeForConditionalGeneration": "qwen3-vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2.5-vl",
    "Glm4vForConditionalGeneration": "glm-4.1v",
    "Glm4vMoeForConditionalGeneration": "glm-4.1v",
}


def known_families() -> str:
    """The families vtcr knows, as an error message lists them."""
    return f"{', '.join(ARCHS)} (config.json model_type {', '.join(MODEL_TYPE_TO_ARCH)})"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _template_in(path: Path) -> str | None:
    """The chat template a file holds (None: this file holds none)."""
    if path.suffix == ".jinja":
        return path.read_text(encoding="utf-8")
    data = _read_json(path)
    template = data.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def read_chat_template(path: str | os.PathLike) -> tuple[str, Path]:
    """(template, the file it came from) of a template file (.jinja, a JSON with "chat_template")
    or of a folder (`TEMPLATE_FILES`, first found). FileNotFoundError / ValueError naming the path."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in TEMPLATE_FILES:
            if (path / name).is_file():
                template = _template_in(path / name)
                if template is not None:
                    return template, path / name
        raise FileNotFoundError(f"{path} holds no chat template ({', '.join(TEMPLATE_FILES)}): pass --chat-template FILE")
    if not path.is_file():
        raise FileNotFoundError(f"chat template {path} does not exist")
    template = _template_in(path)
    if template is None:
        raise ValueError(f"{path} holds no chat template (a .jinja file, or JSON with a \"chat_template\" string)")
    return template, path


def _arch_of_template(path: Path) -> str | None:
    """The family a template-only folder (Qwen3-VL-8B-Thinking here) is for: GLM's image placeholder
    -> glm-4.1v; Qwen's -> qwen2.5-vl when it writes Qwen2.5-VL's default system prompt, else qwen3-vl."""
    try:
        template, _ = read_chat_template(path)
    except (FileNotFoundError, ValueError):
        return None
    if "<|begin_of_image|>" in template:
        return "glm-4.1v"
    if "<|image_pad|>" in template:
        return "qwen2.5-vl" if "You are a helpful assistant." in template else "qwen3-vl"
    return None


def folder_arch(folder: str | os.PathLike) -> tuple[str, str]:
    """(arch, how it was told) of a checkpoint or metadata folder; ValueError listing the known
    families for any other, FileNotFoundError when no file says."""
    path = Path(folder)
    config = path / CONFIG_FILE
    if config.is_file():
        data = _read_json(config)
        model_type = data.get("model_type")
        if model_type in MODEL_TYPE_TO_ARCH:
            return MODEL_TYPE_TO_ARCH[model_type], f"{CONFIG_FILE} model_type {model_type!r}"
        for name in data.get("architectures") or []:
            if name in _ARCHITECTURE_CLASSES:
                return _ARCHITECTURE_CLASSES[name], f"{CONFIG_FILE} architectures {name!r}"
        raise ValueError(
            f"{config}: model_type {model_type!r} (architectures {data.get('architectures')}) is not a family vtcr "
            f"knows; known: {known_families()}"
        )
    for name in (PREPROCESSOR_FILE, PROCESSOR_FILE, TOKENIZER_CONFIG_FILE):
        file = path / name
        if file.is_file():
            processor_class = _read_json(file).get("processor_class")
            if processor_class is None:
                continue
            for arch, fam in FAMILIES.items():
                if fam.processor_class == processor_class:
                    return arch, f"{name} processor_class {processor_class!r}"
            raise ValueError(f"{file}: processor_class {processor_class!r} is not a family vtcr knows; known: {known_families()}")
    arch = _arch_of_template(path)
    if arch is not None:
        return arch, "its chat template's image placeholder (no config.json or preprocessor_config.json)"
    raise FileNotFoundError(
        f"{path}: no {CONFIG_FILE} and no processor_class in {PREPROCESSOR_FILE}, cannot tell the model family"
    )


def vision_spec_from_config(config: dict[str, Any], arch: str, where: str = PREPROCESSOR_FILE):
    """The `vtcr.tokens.VisionSpec` an image-processor config sets. ValueError naming `where` when it
    has no pixel budget (``size.shortest_edge/longest_edge`` or ``min_pixels/max_pixels``)."""
    from vtcr.tokens import VisionSpec, canonical_family

    size = config.get("size") if isinstance(config.get("size"), dict) else {}
    low = size.get("shortest_edge", config.get("min_pixels"))
    high = size.get("longest_edge", config.get("max_pixels"))
    if low is None or high is None:
        raise ValueError(
            f"{where} has no pixel budget: it needs size.shortest_edge and size.longest_edge (or min_pixels and "
            f"max_pixels), the area bounds every image is resized into; vtcr will not guess how many vision tokens "
            "a page costs. Copy them from the checkpoint's published preprocessor_config.json"
        )
    fam = family(arch)
    try:
        return VisionSpec(
            family=canonical_family(arch),
            patch_size=int(config.get("patch_size", fam.patch_size)),
            merge_size=int(config.get("merge_size", fam.merge_size)),
            temporal_patch_size=int(config.get("temporal_patch_size", fam.temporal_patch_size)),
            min_pixels=int(low),
            max_pixels=int(high),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def shrink_config(config: dict[str, Any], arch: str, size: str) -> Any:
    """A real config.json dict as its transformers config with the widths and depths of vtcr's
    `size` (`vtcr.models.architectures.dims`); everything else (token ids, vocabulary, rope type
    and theta, activations, norms) stays the checkpoint's. The M-RoPE split keeps its proportions."""
    from transformers import CONFIG_MAPPING

    cfg = CONFIG_MAPPING[config["model_type"]].from_dict(dict(config))
    d = dims(arch, size)
    text, vision = cfg.text_config, cfg.vision_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = d.hidden, d.intermediate, d.layers
    text.num_attention_heads, text.num_key_value_heads = d.heads, d.kv_heads
    head_dim = d.head_dim if arch == "qwen3-vl" else d.hidden // d.heads
    if hasattr(text, "head_dim"):
        text.head_dim = head_dim
    if getattr(text, "max_window_layers", None) is not None:
        text.max_window_layers = d.layers
    if getattr(text, "layer_types", None) is not None:
        text.layer_types = [text.layer_types[0]] * d.layers
    rope = dict(getattr(text, "rope_parameters", None) or {})
    if "mrope_section" in rope:
        rotary = head_dim // 4 if arch == "glm-4.1v" else head_dim // 2  # GLM rotates half of each head
        rope["mrope_section"] = _scaled_mrope(tuple(rope["mrope_section"]), rotary)
        text.rope_parameters = rope
    vision.depth, vision.hidden_size = d.vision_depth, d.vision_hidden
    vision.intermediate_size, vision.num_heads, vision.out_hidden_size = d.vision_intermediate, d.vision_heads, d.hidden
    if arch == "qwen3-vl":
        vision.deepstack_visual_indexes = list(d.vision_marks)
    elif arch == "qwen2.5-vl":
        vision.fullatt_block_indexes = list(d.vision_marks)
    cfg.tie_word_embeddings = d.tie_embeddings
    return cfg


@dataclass(frozen=True)
class CheckpointMetadata:
    """The metadata files of one folder (see the module docstring); None where a file is absent."""

    folder: Path
    arch: str
    arch_source: str
    chat_template: str | None = None
    template_file: Path | None = None
    config: dict[str, Any] | None = None
    generation_config: dict[str, Any] | None = None
    preprocessor_config: dict[str, Any] | None = None
    preprocessor_file: str = PREPROCESSOR_FILE
    tokenizer_config: dict[str, Any] | None = None
    files: tuple[str, ...] = field(default_factory=tuple)

    def vision_spec(self):
        """The image budget of the folder's preprocessor_config.json, else the family's published one."""
        from vtcr.tokens import vision_spec

        if self.preprocessor_config is None:
            return vision_spec(self.arch)
        return vision_spec_from_config(self.preprocessor_config, self.arch, str(self.folder / self.preprocessor_file))

    def stop_ids(self) -> tuple[int, ...] | None:
        """generation_config.json's eos_token_id (in its order), or None when the folder has none."""
        if self.generation_config is None:
            return None
        eos = self.generation_config.get("eos_token_id")
        if eos is None:
            return None
        return tuple(int(i) for i in ([eos] if isinstance(eos, int) else eos))

    def config_at(self, size: str, token_ids: Any = None) -> Any:
        """The transformers config at vtcr `size`: config.json shrunk, else vtcr's family table
        with `token_ids` (a `TokenIds`)."""
        from .architectures import build_config

        if self.config is not None:
            return shrink_config(self.config, self.arch, size)
        return build_config(self.arch, size, token_ids)

    def added_token_ids(self) -> dict[str, int]:
        """token -> id of tokenizer_config.json's added tokens (empty without the file)."""
        decoder = (self.tokenizer_config or {}).get("added_tokens_decoder") or {}
        return {entry["content"]: int(i) for i, entry in decoder.items() if isinstance(entry, dict) and "content" in entry}


def read_metadata(folder: str | os.PathLike, chat_template: str | os.PathLike | None = None) -> CheckpointMetadata:
    """The metadata of a checkpoint folder; `chat_template` (a file) replaces the folder's template."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    arch, arch_source = folder_arch(path)

    def optional(name: str) -> dict[str, Any] | None:
        return _read_json(path / name) if (path / name).is_file() else None

    if chat_template is not None:
        template, template_file = read_chat_template(chat_template)
    else:
        try:
            template, template_file = read_chat_template(path)
        except FileNotFoundError:
            template, template_file = None, None
    # A folder saved by transformers 5 nests the image processor in processor_config.json.
    preprocessor, preprocessor_file = optional(PREPROCESSOR_FILE), PREPROCESSOR_FILE
    if preprocessor is None and isinstance((optional(PROCESSOR_FILE) or {}).get("image_processor"), dict):
        preprocessor, preprocessor_file = optional(PROCESSOR_FILE)["image_processor"], f"{PROCESSOR_FILE} image_processor"
    return CheckpointMetadata(
        folder=path, arch=arch, arch_source=arch_source, chat_template=template, template_file=template_file,
        config=optional(CONFIG_FILE), generation_config=optional(GENERATION_CONFIG_FILE),
        preprocessor_config=preprocessor, preprocessor_file=preprocessor_file,
        tokenizer_config=optional(TOKENIZER_CONFIG_FILE),
        files=tuple(sorted(p.name for p in path.iterdir() if p.is_file())),
    )  # fmt: skip
