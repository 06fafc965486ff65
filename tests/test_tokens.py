"""vtcr.tokens against the real transformers image processors and the real Qwen3 tokenizer.

The image processors are the PIL-backend classes transformers ships (the torchvision "fast"
ones cannot be imported here), built offline with each checkpoint's published settings, and
run on blank images: our arithmetic must give the very grid they produce, or fail where they fail.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil

import pytest

from vtcr.tokens import (
    FAMILIES,
    IMAGE_TOKENS,
    VisionSpec,
    compression_ratio,
    count_text_tokens,
    image_prompt_tokens,
    load_tokenizer,
    resized_size,
    vision_spec,
    vision_tokens,
)

PAGE = (595, 842)  # the reference renderer's page, in pixels at 72 dpi


def _sizes() -> list[tuple[int, int]]:
    """A few hundred deterministic (w, h): tiny, ordinary, pages, extreme aspect ratios."""
    rng = random.Random(20260131)
    sizes = [PAGE, PAGE[::-1], (1190, 1684), (1, 1), (2, 3), (3, 3), (27, 28), (28, 28), (31, 33)]
    sizes += [(rng.randint(1, 48), rng.randint(1, 48)) for _ in range(70)]  # below one patch group
    sizes += [(rng.randint(40, 1200), rng.randint(40, 1200)) for _ in range(100)]
    for _ in range(70):  # thin strips around the 200:1 limit, both orientations
        short = rng.randint(1, 40)
        long = min(int(short * rng.uniform(120, 230)), 6000)
        sizes.append((short, long) if rng.random() < 0.5 else (long, short))
    # Exactly 200:1 is allowed, above is not; GLM upscales sides below 28 with int() truncation.
    sizes += [(1, 200), (200, 1), (3, 600), (600, 3), (7, 1400), (6, 1200), (2, 401), (30, 6000)]
    return list(dict.fromkeys(sizes))


SIZES = _sizes()
# Just above the published cap (GLM's counts 2 frames, so 4.8 Mpx of image). Only two, as they
# are slow; Qwen2/2.5-VL share Qwen3-VL's code path, and all families meet the downscale branch
# at a lower cap in the max_pixels test.
HUGE = {"qwen3-vl": (4200, 4100), "glm-4.1v": (2300, 2200)}

# Published preprocessor settings, written independently of vtcr.tokens (see its comments).
PUBLISHED = {
    "qwen2-vl": dict(patch_size=14, merge_size=2, temporal_patch_size=2, size=(3136, 12845056)),
    "qwen2.5-vl": dict(patch_size=14, merge_size=2, temporal_patch_size=2, size=(3136, 12845056)),
    "qwen3-vl": dict(patch_size=16, merge_size=2, temporal_patch_size=2, size=(65536, 16777216)),
    "glm-4.1v": dict(patch_size=14, merge_size=2, temporal_patch_size=2, size=(12544, 9633792)),
}


def _processor(family: str, max_pixels: int | None = None):
    """The transformers image processor the released checkpoint loads (PIL backend)."""
    pytest.importorskip("transformers")
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    pub = PUBLISHED[family]
    size = {"shortest_edge": pub["size"][0], "longest_edge": max_pixels or pub["size"][1]}
    kwargs = dict(
        size=size,
        patch_size=pub["patch_size"],
        merge_size=pub["merge_size"],
        temporal_patch_size=pub["temporal_patch_size"],
    )
    # Qwen2/2.5/3-VL all load Qwen2VLImageProcessor (image_processing_auto.py); GLM its own.
    cls = Glm4vImageProcessorPil if family == "glm-4.1v" else Qwen2VLImageProcessorPil
    return cls(**kwargs)


def _run(processor, size: tuple[int, int]) -> tuple[int, int, int] | ValueError:
    """(grid_t, grid_h, grid_w) from running the processor on a blank image, or its error."""
    from PIL import Image

    try:
        # Rescale/normalize never change the grid; skipping them halves the cost of big images.
        out = processor(
            images=Image.new("RGB", size, "white"), do_rescale=False, do_normalize=False, return_tensors="np"
        )
    except ValueError as exc:
        return exc
    (grid,) = out["image_grid_thw"].tolist()
    return tuple(grid)


def _check_against(processor, family: str, size: tuple[int, int], max_pixels: int | None = None) -> None:
    spec = vision_spec(family)
    if max_pixels is not None:
        spec = dataclasses.replace(spec, max_pixels=max_pixels)
    expected = _run(processor, size)
    if isinstance(expected, ValueError):
        with pytest.raises(ValueError, match=f"{size[0]}x{size[1]}"):
            vision_tokens(size, family, max_pixels=max_pixels)
        return
    t, gh, gw = expected
    assert t == 1
    assert resized_size(*size, spec) == (gw * spec.patch_size, gh * spec.patch_size), (family, size)
    expected_tokens = t * gh * gw // spec.merge_size**2
    assert vision_tokens(size, family, max_pixels=max_pixels) == expected_tokens, (family, size)


# --- vision specs ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_matches_published_settings(family):
    spec = vision_spec(family)
    pub = PUBLISHED[family]
    assert (spec.patch_size, spec.merge_size, spec.temporal_patch_size) == (
        pub["patch_size"],
        pub["merge_size"],
        pub["temporal_patch_size"],
    )
    assert (spec.min_pixels, spec.max_pixels) == pub["size"]
    assert spec.family == family
    assert VisionSpec(**json.loads(json.dumps(dataclasses.asdict(spec)))) == spec


@pytest.mark.parametrize(
    "family, expected",
    # Design doc: a 595x842 page is 494 tokens for Qwen3-VL, 630 for Qwen2.5-VL and GLM-4.1V/Glyph.
    [("qwen3-vl", 494), ("qwen2.5-vl", 630), ("glm-4.1v", 630), ("glyph", 630)],
)
def test_design_doc_page_costs(family, expected):
    assert vision_tokens(PAGE, family) == expected


def test_family_names_and_errors():
    assert vision_spec("glyph") == vision_spec("glm-4.1v") == vision_spec("GLM4V")
    assert vision_spec("Qwen3-VL") is vision_spec("qwen3-vl")
    with pytest.raises(ValueError, match="qwen2-vl, qwen2.5-vl, qwen3-vl, glm-4.1v"):
        vision_spec("llava-1.5")
    with pytest.raises(ValueError, match="unknown vision family"):
        VisionSpec("internvl", 14, 2, 2, 1, 10)
    with pytest.raises(ValueError, match="patch_size"):
        VisionSpec("qwen3-vl", 0, 2, 2, 1, 10)
    for bad in [(0, 10), (10, -1), (1.5, 3), ("a", "b"), (5,), 42]:
        with pytest.raises(ValueError):
            vision_tokens(bad, "qwen3-vl")


def test_pil_image_and_size_pair_agree_and_order_is_width_height():
    from PIL import Image

    for w, h in [PAGE, (300, 40), (5, 900)]:
        for family in FAMILIES:
            assert vision_tokens(Image.new("RGB", (w, h)), family) == vision_tokens((w, h), family)
    # Orientation matters once rounding does: width first, as in PIL.
    assert resized_size(595, 842, vision_spec("qwen3-vl")) == (608, 832)
    assert resized_size(842, 595, vision_spec("qwen3-vl")) == (832, 608)


# --- vision tokens against the real processors ---------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl", "glm-4.1v"])
def test_vision_tokens_equal_processor_grid(family):
    processor = _processor(family)
    outcomes = {"ok": 0, "raised": 0}
    for size in SIZES:
        _check_against(processor, family, size)
        try:
            tokens = vision_tokens(size, family)
            outcomes["ok"] += 1
        except ValueError:
            outcomes["raised"] += 1
            continue
        if family == "qwen2.5-vl":  # Qwen2-VL ships the identical processor settings
            assert vision_tokens(size, "qwen2-vl") == tokens
    # The size table really exercises both the normal path and the processor's rejections.
    assert outcomes["ok"] >= 220 and outcomes["raised"] >= 10, outcomes


@pytest.mark.parametrize("family", sorted(HUGE))
def test_huge_images_hit_the_published_cap(family):
    size = HUGE[family]
    _check_against(_processor(family), family, size)
    spec = vision_spec(family)
    frames = spec.temporal_patch_size if family == "glm-4.1v" else 1
    w, h = resized_size(*size, spec)
    assert frames * w * h <= spec.max_pixels < frames * size[0] * size[1]


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl", "glm-4.1v"])
def test_max_pixels_override_equals_processor_with_that_cap(family):
    cap = 262_144  # the reference training cap (DESIGN.md): inference must price with the same
    processor = _processor(family, max_pixels=cap)
    for size in SIZES[::3] + [(2000, 2000), (1190, 1684)]:
        _check_against(processor, family, size, max_pixels=cap)
    assert vision_tokens((1190, 1684), family, max_pixels=cap) < vision_tokens((1190, 1684), family)


def test_tiny_images_are_upscaled_to_min_pixels():
    # Every family prices a 1x1 image at its minimum grid rather than rejecting it.
    assert {f: resized_size(1, 1, vision_spec(f)) for f in FAMILIES} == {
        "qwen2-vl": (56, 56),
        "qwen2.5-vl": (56, 56),
        "qwen3-vl": (256, 256),
        "glm-4.1v": (84, 84),
    }


# --- prompt tokens with the real Qwen3-VL processor and tokenizer -------------------------------


def test_image_prompt_tokens_match_qwen3_vl_processor(qwen3_tokenizer):
    from PIL import Image
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
        # The video processor needs torchvision; images never touch it.
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None)

    tokenizer = qwen3_tokenizer
    processor = ImageOnlyQwen3VLProcessor(image_processor=_processor("qwen3-vl"), tokenizer=tokenizer)
    start, pad, end = IMAGE_TOKENS["qwen3-vl"]
    for token in (start, pad, end):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    for size in [PAGE, (1, 1), (30, 5000)]:
        out = processor(text=[start + pad + end], images=[Image.new("RGB", size)], return_tensors="np")
        assert out["input_ids"].shape[1] == image_prompt_tokens(size, "qwen3-vl"), size
        assert image_prompt_tokens(size, "qwen3-vl") == vision_tokens(size, "qwen3-vl") + 2


# --- text tokens -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen3_tokenizer(qwen3_tokenizer_dir):
    pytest.importorskip("transformers")
    return load_tokenizer(qwen3_tokenizer_dir)


@pytest.fixture(scope="module")
def trace_texts(finished_traces):
    return [t["trace"] for t in finished_traces[:80]]


def test_counts_equal_tokenizer_json_encoding(qwen3_tokenizer, qwen3_tokenizer_dir, trace_texts):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(qwen3_tokenizer_dir / "tokenizer.json"))
    expected = [len(raw.encode(t, add_special_tokens=False).ids) for t in trace_texts]
    assert count_text_tokens(trace_texts, qwen3_tokenizer) == expected
    assert count_text_tokens(trace_texts, raw) == expected  # a bare tokenizers.Tokenizer works too
    assert [count_text_tokens(t, qwen3_tokenizer) for t in trace_texts[:10]] == expected[:10]


def test_special_tokens_are_not_added_but_written_ones_count_once(qwen3_tokenizer):
    assert count_text_tokens("", qwen3_tokenizer) == 0
    assert count_text_tokens([], qwen3_tokenizer) == []
    assert count_text_tokens("<think>", qwen3_tokenizer) == 1
    assert count_text_tokens("<|im_end|>", qwen3_tokenizer) == 1
    with pytest.raises(ValueError):
        count_text_tokens([1, 2], qwen3_tokenizer)


def test_chars_per_token_on_reasoning_traces(qwen3_tokenizer, trace_texts):
    counts = count_text_tokens(trace_texts, qwen3_tokenizer)
    per_trace = [len(t) / c for t, c in zip(trace_texts, counts)]
    overall = sum(map(len, trace_texts)) / sum(counts)
    # Byte-level BPE on English is ~4 chars/token; LaTeX-heavy math reasoning is denser (~2.8).
    assert 2.3 < overall < 3.6, overall
    assert all(1.5 < r < 6.0 for r in per_trace), (min(per_trace), max(per_trace))


def test_load_tokenizer_from_file_and_bare_folder(
    qwen3_tokenizer, qwen3_tokenizer_dir, tmp_path, trace_texts
):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(qwen3_tokenizer_dir / "tokenizer.json", bare / "tokenizer.json")
    sample = trace_texts[:5]
    expected = count_text_tokens(sample, qwen3_tokenizer)  # loaded from the full folder
    assert count_text_tokens(sample, load_tokenizer(qwen3_tokenizer_dir / "tokenizer.json")) == expected
    assert count_text_tokens(sample, load_tokenizer(str(bare))) == expected


def test_load_tokenizer_errors_name_the_input(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "vocab.txt").write_text("a\n")
    with pytest.raises(ValueError, match="vocab.txt"):
        load_tokenizer(tmp_path / "vocab.txt")
    with pytest.raises(ValueError, match="no-such-org/no-such-model"):
        load_tokenizer("no-such-org/no-such-model")


# --- compression ratio -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, vision, expected",
    [(1976, 494, 4.0), (630, 630, 1.0), (0, 494, 0.0), (3.5, 1.0, 3.5)],
)
def test_compression_ratio(text, vision, expected):
    assert compression_ratio(text, vision) == expected


def test_compression_ratio_without_vision_tokens_is_nan_and_bad_input_raises():
    assert math.isnan(compression_ratio(1000, 0))
    assert math.isnan(compression_ratio(0, 0))
    for bad in [(-1, 5), (5, -1), (math.inf, 3), (1, math.nan), (True, 3)]:
        with pytest.raises(ValueError):
            compression_ratio(*bad)
