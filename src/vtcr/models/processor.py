"""Processors: image processor + tokenizer + chat template, with or without torchvision.

transformers' VL processors require a video processor, and every video processor needs torchvision.
Where torchvision imports we use plain ``AutoProcessor``. Where it does not, we load an image-only
subclass of the family's real processor class: same tokenizer, same image processor (the PIL
backend), same placeholder expansion; only video input is unavailable. Folders saved by either
load with either: ``processor_config.json`` always names the real class and carries a video entry.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vtcr._io import write_json_atomic

from transformers import Glm4vProcessor, Qwen2_5_VLProcessor, Qwen3VLProcessor

from .architectures import FAMILIES, Family, arch_of, family

# Files that make a folder loadable as a processor (any one of each group suffices).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
_IMAGE_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def torchvision_available() -> bool:
    """True when torchvision imports (installed but broken, e.g. built for another torch, counts as absent)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


class _ImageOnly:
    """Mixin: the real processor without its video processor (which would need torchvision)."""

    arch: str  # set by each subclass

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # ProcessorMixin derives the sub-processors from this signature: image_processor, tokenizer.
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    @property
    def family(self) -> Family:
        return family(self.arch)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["processor_class"] = self.family.processor_class
        out["video_processor"] = video_processor_dict(self.family, self.image_processor)
        return out

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        files = super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        # ProcessorMixin stamps this subclass's name into tokenizer_config.json; name the real class,
        # so that AutoProcessor on a machine with torchvision loads the folder as usual.
        path = Path(save_directory) / "tokenizer_config.json"
        if path.is_file():
            config = json.loads(path.read_text(encoding="utf-8"))
            config["processor_class"] = self.family.processor_class
            write_json_atomic(path, config)
        return files


class Qwen3VLImageOnlyProcessor(_ImageOnly, Qwen3VLProcessor):
    arch = "qwen3-vl"


class Qwen2_5_VLImageOnlyProcessor(_ImageOnly, Qwen2_5_VLProcessor):
    arch = "qwen2.5-vl"


class Glm4vImageOnlyProcessor(_ImageOnly, Glm4vProcessor):
    arch = "glm-4.1v"


_IMAGE_ONLY = {
    "qwen3-vl": Qwen3VLImageOnlyProcessor,
    "qwen2.5-vl": Qwen2_5_VLImageOnlyProcessor,
    "glm-4.1v": Glm4vImageOnlyProcessor,
}


def video_processor_dict(fam: Family, image_processor: Any) -> dict[str, Any]:
    """The video entry of processor_config.json: the family's video class with the image geometry.

    Written by hand because constructing the video processor needs torchvision; the class fills
    every other setting (fps, frame limits) with its published defaults when it is loaded.
    """
    return {
        "video_processor_type": fam.video_processor_type,
        "patch_size": image_processor.patch_size,
        "temporal_patch_size": image_processor.temporal_patch_size,
        "merge_size": image_processor.merge_size,
        "image_mean": list(image_processor.image_mean),
        "image_std": list(image_processor.image_std),
    }


def make_image_processor(arch: str, config: dict[str, Any] | None = None, *, where: str = "preprocessor_config.json"):
    """The family's image processor (PIL backend: runs anywhere) with its published settings, or with
    those of a real `config` (a preprocessor_config.json dict; ValueError naming `where` when it has
    no pixel budget)."""
    fam = family(arch)
    if arch == "glm-4.1v":
        from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil as cls
    else:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as cls
    if config is None:
        return cls(
            size={"shortest_edge": fam.min_pixels, "longest_edge": fam.max_pixels},
            patch_size=fam.patch_size,
            temporal_patch_size=fam.temporal_patch_size,
            merge_size=fam.merge_size,
            image_mean=list(fam.image_mean),
            image_std=list(fam.image_std),
        )
    from .metadata import vision_spec_from_config

    spec = vision_spec_from_config(config, arch, where)
    kept = ("do_resize", "do_rescale", "rescale_factor", "do_normalize", "do_convert_rgb", "resample")
    return cls(
        size={"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels},
        patch_size=spec.patch_size,
        temporal_patch_size=spec.temporal_patch_size,
        merge_size=spec.merge_size,
        image_mean=list(config.get("image_mean", fam.image_mean)),
        image_std=list(config.get("image_std", fam.image_std)),
        **{k: config[k] for k in kept if k in config},
    )


def make_processor(arch: str, tokenizer: Any, template: str | None = None, image_processor: Any = None):
    """An image-only processor of `arch` built in memory (what init_model saves)."""
    from .chat_template import chat_template

    template = template or chat_template(arch)
    return _IMAGE_ONLY[arch](image_processor or make_image_processor(arch), tokenizer, chat_template=template)


def check_processor_files(path: str | os.PathLike) -> Path:
    """Raise FileNotFoundError naming the folder and the missing processor files."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    missing = []
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        missing.append(f"a tokenizer ({' or '.join(_TOKENIZER_FILES)})")
    if not any((path / name).is_file() for name in _IMAGE_PROCESSOR_FILES):
        missing.append(f"an image processor config ({' or '.join(_IMAGE_PROCESSOR_FILES)})")
    if missing:
        raise FileNotFoundError(
            f"{path} has no processor files: missing {' and '.join(missing)}. "
            "Save the processor next to the model (processor.save_pretrained) "
            "or create the folder with `vtcr init-model`."
        )
    return path


def load_processor(path: str | os.PathLike, *, use_auto: bool | None = None):
    """Load the processor of a checkpoint folder.

    `use_auto` None: AutoProcessor when torchvision imports, else the image-only subclass of the
    family's processor class. The PIL image backend is used without torchvision.
    """
    path = check_processor_files(path)
    if use_auto is None:
        use_auto = torchvision_available()
    if use_auto:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(str(path))
    return _IMAGE_ONLY[arch_of(path)].from_pretrained(str(path))


def _image_items(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    items = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            items.extend(i for i in content if i.get("type") in ("image", "image_url") or "image" in i)
    return items


def build_inputs(
    processor: Any,
    messages: Sequence[dict[str, Any]],
    images: Sequence[Any] | None = None,
    *,
    add_generation_prompt: bool = True,
    max_image_pixels: int | None = None,
    return_tensors: str = "pt",
    **template_kwargs: Any,
):
    """Chat-template `messages` and run the processor on them with their images.

    `images` are PIL images in the order of the image items in `messages`; when None they are taken
    from the items' ``"image"`` field. `max_image_pixels` caps each image's resized area (the family's
    own cap otherwise). Returns the processor's BatchFeature (input_ids, attention_mask, pixel_values,
    image_grid_thw, mm_token_type_ids), ready for ``model(**inputs)`` / ``model.generate(**inputs)``.
    """
    items = _image_items(messages)
    if images is None:
        images = [item["image"] for item in items if "image" in item and not isinstance(item["image"], str)]
        if len(images) != len(items):
            raise ValueError(
                f"messages hold {len(items)} image items but only {len(images)} carry a PIL image; pass images="
            )
    images = list(images)
    if len(images) != len(items):
        raise ValueError(f"messages hold {len(items)} image items but {len(images)} images were given")
    from .conventions import template_messages

    text = processor.apply_chat_template(  # string system contents: GLM's template prints a list as Python
        template_messages(messages), tokenize=False, add_generation_prompt=add_generation_prompt, **template_kwargs
    )
    kwargs: dict[str, Any] = {"return_tensors": return_tensors}
    if max_image_pixels is not None:
        kwargs["size"] = image_size_budget(processor, max_image_pixels)
    return processor(text=[text], images=images or None, **kwargs)


def image_size_budget(processor: Any, max_image_pixels: int) -> dict[str, int]:
    """The image processor `size` that caps each image's resized area at `max_image_pixels`."""
    if max_image_pixels <= 0:
        raise ValueError(f"max_image_pixels must be positive, got {max_image_pixels}")
    frames = family(arch_of_processor(processor)).budget_frames
    shortest = int(dict(processor.image_processor.size)["shortest_edge"])
    longest = max_image_pixels * frames
    return {"shortest_edge": min(shortest, longest), "longest_edge": longest}


def arch_of_processor(processor: Any) -> str:
    """The vtcr arch of a loaded processor (image-only subclass or a transformers class)."""
    arch = getattr(processor, "arch", None)
    if arch:
        return arch
    for name, fam in FAMILIES.items():
        if type(processor).__name__ == fam.processor_class:
            return name
    raise ValueError(f"{type(processor).__name__} is not a processor of a supported family")


def image_token_counts(inputs: Any, merge_size: int) -> list[int]:
    """Vision tokens per image implied by a BatchFeature's image_grid_thw: t*h*w / merge^2."""
    grid = inputs.get("image_grid_thw")
    if grid is None:
        return []
    return [int(t * h * w) // (merge_size * merge_size) for t, h, w in grid.tolist()]
