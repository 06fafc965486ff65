"""Model families and sizes: what differs between Qwen3-VL, Qwen2.5-VL and GLM-4.1V.

One `Family` record per architecture (token strings, image-processor settings, published vocabulary)
and one `Dims` record per (architecture, size). `build_config` turns them into the real transformers
config class, so every model vtcr builds is the published architecture, only smaller or not.

Sizes (same names for every family, so benchmarks can loop over families):

- ``tiny``: text hidden 128, 2 layers, 4 heads (2 KV), vision tower of depth 2 / hidden 64. Tied
  embeddings. A forward pass over a full page image takes ~0.1-0.2 s on one CPU core. With a
  real 151k vocabulary ~19.4M of its ~20M parameters are the token embedding; decoder layers
  and vision tower together are 0.6-0.9M.
- ``small``: text hidden 256, 4 layers, vision depth 4 / hidden 128. Tied embeddings. 43-45M
  parameters (~39M of them the embedding); for CPU training experiments.
- ``2b``: the published dimensions of the family's small checkpoint: Qwen3-VL-2B, Qwen2.5-VL-3B.
  GLM-4.1V has no such checkpoint, so ``glm-4.1v``/``2b`` is refused.
- ``8b``: the published dimensions of Qwen3-VL-8B, Qwen2.5-VL-7B, GLM-4.1V-9B.
  ``3b``/``7b``/``9b`` are accepted as the published names of the same configurations.

``2b``/``8b`` exist for GPU efficiency measurements with random weights: the cost of a forward
pass depends on the shapes, not on the values.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

ARCHS = ("qwen3-vl", "qwen2.5-vl", "glm-4.1v")
SIZES = ("tiny", "small", "2b", "8b")

# Published checkpoint names that are aliases of a size, per family.
_SIZE_ALIASES = MappingProxyType(
    {
        ("qwen2.5-vl", "3b"): "2b",
        ("qwen2.5-vl", "7b"): "8b",
        ("glm-4.1v", "9b"): "8b",
    }
)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Family:
    """Everything about an architecture family that is not a layer dimension."""

    arch: str
    model_type: str  # config.json model_type
    processor_class: str  # transformers processor class name (written to processor_config.json)
    image_processor_type: str
    video_processor_type: str
    published_vocab_size: int
    # Image processor (published preprocessor_config.json of the family).
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    # The processor's min/max pixel budgets are per this many frames of the image (GLM: 2).
    budget_frames: int
    # Token strings. Image placeholder and its delimiters, turn markers, stop tokens.
    image_token: str
    video_token: str
    image_start_token: str
    image_end_token: str
    video_start_token: str
    video_end_token: str
    eos_token: str  # tokenizer.eos_token: ends an assistant turn
    pad_token: str
    stop_tokens: tuple[str, ...]  # generation_config.eos_token_id, in this order
    special_tokens: tuple[str, ...]  # every control token the chat format needs (added if missing)
    plain_tokens: tuple[str, ...] = ("<think>", "</think>")  # added as non-special: kept by decode()


def _image_numbers(arch: str) -> dict[str, int]:
    """Patch, merge and pixel budgets of the family's image processor, from `vtcr.tokens` (the one
    place they are written down and tested against the real processors)."""
    from vtcr.tokens import vision_spec

    spec = vision_spec(arch)
    return dict(patch_size=spec.patch_size, merge_size=spec.merge_size, temporal_patch_size=spec.temporal_patch_size,
                min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)


QWEN_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2.5-VL and Qwen3-VL use the same chat and vision tokens.
QWEN_TOKENS = MappingProxyType(
    dict(
        image_token="<|image_pad|>",
        video_token="<|video_pad|>",
        image_start_token="<|vision_start|>",
        image_end_token="<|vision_end|>",
        video_start_token="<|vision_start|>",
        video_end_token="<|vision_end|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        stop_tokens=("<|im_end|>", "<|endoftext|>"),
        special_tokens=QWEN_SPECIAL,
    )
)

FAMILIES = MappingProxyType(
    {
        "qwen3-vl": Family(
            arch="qwen3-vl",
            **_image_numbers("qwen3-vl"),
            model_type="qwen3_vl",
            processor_class="Qwen3VLProcessor",
            image_processor_type="Qwen2VLImageProcessor",
            video_processor_type="Qwen3VLVideoProcessor",
            published_vocab_size=151936,
            image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5),
            budget_frames=1,
            **QWEN_TOKENS,
        ),
        "qwen2.5-vl": Family(
            arch="qwen2.5-vl",
            **_image_numbers("qwen2.5-vl"),
            model_type="qwen2_5_vl",
            processor_class="Qwen2_5_VLProcessor",
            image_processor_type="Qwen2VLImageProcessor",
            video_processor_type="Qwen2VLVideoProcessor",
            published_vocab_size=151936,  # 3B; the 7B pads to 152064 (set in its Dims)
            image_mean=OPENAI_CLIP_MEAN,
            image_std=OPENAI_CLIP_STD,
            budget_frames=1,
            **QWEN_TOKENS,
        ),
        "glm-4.1v": Family(
            arch="glm-4.1v",
            **_image_numbers("glm-4.1v"),
            model_type="glm4v",
            processor_class="Glm4vProcessor",
            image_processor_type="Glm4vImageProcessor",
            video_processor_type="Glm4vVideoProcessor",
            published_vocab_size=151552,
            image_mean=OPENAI_CLIP_MEAN,
            image_std=OPENAI_CLIP_STD,
            budget_frames=2,
            image_token="<|image|>",
            video_token="<|video|>",
            image_start_token="<|begin_of_image|>",
            image_end_token="<|end_of_image|>",
            video_start_token="<|begin_of_video|>",
            video_end_token="<|end_of_video|>",
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
            # GLM ends a turn by starting the next one: the model emits <|user|> or <|observation|>.
            stop_tokens=("<|endoftext|>", "<|user|>", "<|observation|>"),
            special_tokens=(
                "<|endoftext|>",
                "[gMASK]",
                "<sop>",
                "<|system|>",
                "<|user|>",
                "<|assistant|>",
                "<|observation|>",
                "<|begin_of_image|>",
                "<|end_of_image|>",
                "<|begin_of_video|>",
                "<|end_of_video|>",
                "<|image|>",
                "<|video|>",
            ),
            # The model boxes its final answer; plain tokens, so a decoded round keeps the box.
            plain_tokens=("<think>", "</think>", "<|begin_of_box|>", "<|end_of_box|>"),
        ),
    }
)

# model_type (config.json) -> arch, including close relatives that share processor and template.
MODEL_TYPE_TO_ARCH = MappingProxyType(
    {
        "qwen3_vl": "qwen3-vl",
        "qwen3_vl_moe": "qwen3-vl",
        "qwen2_5_vl": "qwen2.5-vl",
        "glm4v": "glm-4.1v",
        "glm4v_moe": "glm-4.1v",
    }
)


@dataclass(frozen=True)
class Dims:
    """Layer dimensions of one (family, size)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tie_embeddings: bool
    vision_depth: int
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    # Qwen3-VL: deepstack layer indexes; Qwen2.5-VL: full-attention block indexes; GLM: unused.
    vision_marks: tuple[int, ...] = ()
    vocab_size: int | None = None  # None: the family's published vocabulary
    published: str = ""  # the checkpoint whose dimensions these are


def _toy(arch: str, hidden: int, layers: int, vision_depth: int, vision_hidden: int) -> Dims:
    """tiny/small: the family's layout at toy widths (head_dim 32/64, GQA 2:1, tied embeddings)."""
    heads = 4
    head_dim = hidden // heads
    marks: tuple[int, ...] = ()
    if arch == "qwen3-vl":  # deepstack: inject early vision layers into the first text layers
        marks = tuple(range(min(3, vision_depth - 1, layers))) or (0,)
    elif arch == "qwen2.5-vl":  # window attention everywhere but the last block
        marks = (vision_depth - 1,)
    return Dims(
        hidden=hidden,
        intermediate=3 * hidden,
        layers=layers,
        heads=heads,
        kv_heads=heads // 2,
        head_dim=head_dim,
        tie_embeddings=True,
        vision_depth=vision_depth,
        vision_hidden=vision_hidden,
        vision_intermediate=2 * vision_hidden,
        vision_heads=max(1, vision_hidden // 32),
        vision_marks=marks,
    )


_DIMS = MappingProxyType(
    {
        **{(a, "tiny"): _toy(a, hidden=128, layers=2, vision_depth=2, vision_hidden=64) for a in ARCHS},
        **{(a, "small"): _toy(a, hidden=256, layers=4, vision_depth=4, vision_hidden=128) for a in ARCHS},
        ("qwen3-vl", "2b"): Dims(
            hidden=2048, intermediate=6144, layers=28, heads=16, kv_heads=8, head_dim=128, tie_embeddings=True,
            vision_depth=24, vision_hidden=1024, vision_intermediate=4096, vision_heads=16,
            vision_marks=(5, 11, 17), published="Qwen/Qwen3-VL-2B-Instruct",
        ),
        ("qwen3-vl", "8b"): Dims(
            hidden=4096, intermediate=12288, layers=36, heads=32, kv_heads=8, head_dim=128, tie_embeddings=False,
            vision_depth=27, vision_hidden=1152, vision_intermediate=4304, vision_heads=16,
            vision_marks=(8, 16, 24), published="Qwen/Qwen3-VL-8B-Instruct",
        ),
        ("qwen2.5-vl", "2b"): Dims(
            hidden=2048, intermediate=11008, layers=36, heads=16, kv_heads=2, head_dim=128, tie_embeddings=True,
            vision_depth=32, vision_hidden=1280, vision_intermediate=3420, vision_heads=16,
            vision_marks=(7, 15, 23, 31), published="Qwen/Qwen2.5-VL-3B-Instruct",
        ),
        ("qwen2.5-vl", "8b"): Dims(
            hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, head_dim=128, tie_embeddings=False,
            vision_depth=32, vision_hidden=1280, vision_intermediate=3420, vision_heads=16,
            vision_marks=(7, 15, 23, 31), vocab_size=152064, published="Qwen/Qwen2.5-VL-7B-Instruct",
        ),
        ("glm-4.1v", "8b"): Dims(
            hidden=4096, intermediate=13696, layers=40, heads=32, kv_heads=2, head_dim=128, tie_embeddings=False,
            # GLM's vision MLP width is out_hidden_size; vision_intermediate is the merger's width.
            vision_depth=24, vision_hidden=1536, vision_intermediate=13696, vision_heads=12,
            published="zai-org/GLM-4.1V-9B-Thinking",
        ),
    }
)  # fmt: skip


@dataclass(frozen=True)
class TokenIds:
    """Ids of the family's control tokens in one tokenizer; written into config and generation_config."""

    vocab_size: int
    image: int
    video: int
    image_start: int
    image_end: int
    video_start: int
    video_end: int
    pad: int
    bos: int | None
    stop: tuple[int, ...]


def family(arch: str) -> Family:
    if arch not in FAMILIES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return FAMILIES[arch]


def resolve_size(arch: str, size: str) -> str:
    """Canonical size name (``3b`` -> ``2b`` for Qwen2.5-VL, ...); ValueError for unknown pairs."""
    family(arch)
    size = _SIZE_ALIASES.get((arch, size.lower()), size.lower())
    if (arch, size) not in _DIMS:
        valid = [s for (a, s) in _DIMS if a == arch] + [alias for (a, alias) in _SIZE_ALIASES if a == arch]
        raise ValueError(f"size {size!r} does not exist for {arch}; choose one of {', '.join(valid)}")
    return size


def dims(arch: str, size: str) -> Dims:
    return _DIMS[(arch, resolve_size(arch, size))]


def default_token_ids(arch: str, size: str) -> TokenIds:
    """The published token ids of the family (for configs built without a tokenizer, e.g. on `meta`)."""
    vocab = dims(arch, size).vocab_size or family(arch).published_vocab_size
    if arch == "glm-4.1v":
        return TokenIds(vocab, 151343, 151344, 151339, 151340, 151341, 151342, 151329, None, (151329, 151336, 151338))
    return TokenIds(vocab, 151655, 151656, 151652, 151653, 151652, 151653, 151643, 151643, (151645, 151643))


def arch_of(path: str | os.PathLike) -> str:
    """The vtcr arch of a checkpoint folder, from config.json (model_type) or processor_config.json."""
    path = Path(path)
    config = path / "config.json"
    if config.is_file():
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type", "")
        if model_type in MODEL_TYPE_TO_ARCH:
            return MODEL_TYPE_TO_ARCH[model_type]
        raise ValueError(
            f"{config}: model_type {model_type!r} is not a supported VLM ({', '.join(MODEL_TYPE_TO_ARCH)})"
        )
    processor_config = path / "processor_config.json"
    if processor_config.is_file():
        name = json.loads(processor_config.read_text(encoding="utf-8")).get("processor_class", "")
        for arch, fam in FAMILIES.items():
            if fam.processor_class == name:
                return arch
        raise ValueError(f"{processor_config}: processor_class {name!r} is not a supported VLM processor")
    raise FileNotFoundError(f"{path}: neither config.json nor processor_config.json, cannot tell the architecture")


def _scaled_mrope(published: tuple[int, ...], n_freq: int) -> list[int]:
    """Scale a published M-RoPE (t, h, w) split to `n_freq` rotary frequencies, keeping its proportions."""
    total = sum(published)
    section = [max(1, math.floor(s * n_freq / total)) for s in published]
    section[0] += n_freq - sum(section)
    return section


def build_config(arch: str, size: str, token_ids: TokenIds | None = None) -> PreTrainedConfig:
    """The transformers config of `arch` at `size`, with the control-token ids of `token_ids`."""
    size = resolve_size(arch, size)
    d = _DIMS[(arch, size)]
    ids = token_ids or default_token_ids(arch, size)
    builder = {"qwen3-vl": _qwen3_vl_config, "qwen2.5-vl": _qwen2_5_vl_config, "glm-4.1v": _glm4v_config}[arch]
    return builder(d, ids)


def _qwen3_vl_config(d: Dims, ids: TokenIds) -> PreTrainedConfig:
    from transformers import Qwen3VLConfig

    text = dict(
        vocab_size=ids.vocab_size,
        hidden_size=d.hidden,
        intermediate_size=d.intermediate,
        num_hidden_layers=d.layers,
        num_attention_heads=d.heads,
        num_key_value_heads=d.kv_heads,
        head_dim=d.head_dim,
        hidden_act="silu",
        max_position_embeddings=262144,
        rms_norm_eps=1e-6,
        attention_bias=False,
        pad_token_id=ids.pad,
        bos_token_id=ids.bos,
        eos_token_id=ids.stop[0],
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_interleaved": True,
            "mrope_section": _scaled_mrope((24, 20, 20), d.head_dim // 2),
        },
    )
    vision = dict(
        depth=d.vision_depth,
        hidden_size=d.vision_hidden,
        intermediate_size=d.vision_intermediate,
        num_heads=d.vision_heads,
        hidden_act="gelu_pytorch_tanh",
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=d.hidden,
        num_position_embeddings=2304,
        deepstack_visual_indexes=list(d.vision_marks),
    )
    return Qwen3VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids.image, video_token_id=ids.video,
        vision_start_token_id=ids.image_start, vision_end_token_id=ids.image_end,
        tie_word_embeddings=d.tie_embeddings,
    )  # fmt: skip


def _qwen2_5_vl_config(d: Dims, ids: TokenIds) -> PreTrainedConfig:
    from transformers import Qwen2_5_VLConfig

    text = dict(
        vocab_size=ids.vocab_size,
        hidden_size=d.hidden,
        intermediate_size=d.intermediate,
        num_hidden_layers=d.layers,
        num_attention_heads=d.heads,
        num_key_value_heads=d.kv_heads,
        hidden_act="silu",
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        use_sliding_window=False,
        sliding_window=32768,
        max_window_layers=d.layers,
        pad_token_id=ids.pad,
        bos_token_id=ids.bos,
        eos_token_id=ids.stop[0],
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": _scaled_mrope((16, 24, 24), (d.hidden // d.heads) // 2),
        },
    )
    vision = dict(
        depth=d.vision_depth,
        hidden_size=d.vision_hidden,
        intermediate_size=d.vision_intermediate,
        num_heads=d.vision_heads,
        hidden_act="silu",
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        tokens_per_second=2,
        window_size=112,
        out_hidden_size=d.hidden,
        fullatt_block_indexes=list(d.vision_marks),
    )
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids.image, video_token_id=ids.video,
        vision_start_token_id=ids.image_start, vision_end_token_id=ids.image_end,
        tie_word_embeddings=d.tie_embeddings,
    )  # fmt: skip


def _glm4v_config(d: Dims, ids: TokenIds) -> PreTrainedConfig:
    from transformers import Glm4vConfig

    head_dim = d.hidden // d.heads
    text = dict(
        vocab_size=ids.vocab_size,
        hidden_size=d.hidden,
        intermediate_size=d.intermediate,
        num_hidden_layers=d.layers,
        num_attention_heads=d.heads,
        num_key_value_heads=d.kv_heads,
        hidden_act="silu",
        max_position_embeddings=65536,
        rms_norm_eps=1e-5,
        pad_token_id=ids.pad,
        # GLM rotates half of each head: M-RoPE over head_dim/4 frequencies.
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "mrope_section": _scaled_mrope((8, 12, 12), head_dim // 4),
        },
    )
    vision = dict(
        depth=d.vision_depth,
        hidden_size=d.vision_hidden,
        intermediate_size=d.vision_intermediate,
        num_heads=d.vision_heads,
        hidden_act="silu",
        attention_bias=False,
        image_size=336,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=d.hidden,
        rms_norm_eps=1e-5,
    )
    return Glm4vConfig(
        text_config=text, vision_config=vision, image_token_id=ids.image, video_token_id=ids.video,
        image_start_token_id=ids.image_start, image_end_token_id=ids.image_end,
        video_start_token_id=ids.video_start, video_end_token_id=ids.video_end,
        tie_word_embeddings=d.tie_embeddings,
    )  # fmt: skip


def count_parameters(arch: str, size: str, vocab_size: int | None = None) -> dict[str, int]:
    """Parameter counts of (arch, size), built on the `meta` device (no memory is allocated).

    `vocab_size` defaults to the published vocabulary. Returns {"total", "vision", "language",
    "embedding"}; tied embeddings count once.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    ids = default_token_ids(arch, size)
    if vocab_size is not None:
        ids = replace(ids, vocab_size=vocab_size)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(build_config(arch, size, ids))
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.visual.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return {"total": total, "vision": vision, "language": total - vision, "embedding": embedding}
