"""vtcr.models: real-architecture VLMs built offline with the real Qwen3 tokenizer files.

One tiny checkpoint per family is created once per module and shared; the expensive checks
(forward, generate, reload) run on it. Expected numbers come from outside this code: the
published parameter totals of the real checkpoints and the vision-token counts in DESIGN.md.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from vtcr.render import preset

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image, ImageDraw  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from vtcr.cli import main as cli_main  # noqa: E402
from vtcr.models import (  # noqa: E402
    ARCHS,
    ModelMeta,
    build_inputs,
    count_parameters,
    family,
    image_token_counts,
    init_model,
    load_model,
    load_processor,
    read_meta,
    resolve_size,
    save_checkpoint,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, qwen3_tokenizer_dir) -> dict[str, object]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: init_model(arch, "tiny", qwen3_tokenizer_dir, root / arch, seed=0) for arch in ARCHS}


@pytest.fixture(scope="module")
def tiny_loaded(tiny_dirs):
    return {arch: load_model(path, device="cpu") for arch, path in tiny_dirs.items()}


def page(width: int, height: int, text: str) -> Image.Image:
    img = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(img).text((8, 8), text, fill="black")
    return img


def two_image_messages() -> tuple[list[dict], list[Image.Image]]:
    images = [page(160, 96, "1234"), page(300, 420, "line one\nline two")]
    messages = [
        {"role": "system", "content": "Read the images."},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "What is written?"}, {"type": "image"}],
        },
    ]
    return messages, images


# --- the tiny models run -------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_forward_generate_and_placeholders(arch, tiny_loaded):
    model, processor, meta = tiny_loaded[arch]
    fam = family(arch)
    assert meta == ModelMeta(
        arch=arch, size="tiny", render_preset="dense", render_config=preset("dense").to_dict(),
        created_by="vtcr init-model", max_image_pixels=None, seed=0,
    )  # fmt: skip
    assert meta.render() == preset("dense") and meta.render().name == "dense"
    messages, images = two_image_messages()
    inputs = build_inputs(processor, messages, images)

    # One placeholder token per merged patch: grid t*h*w / merge^2, in image order, contiguous.
    merge = processor.image_processor.merge_size
    assert merge == fam.merge_size == 2
    grids = inputs["image_grid_thw"].tolist()
    assert len(grids) == 2 and grids[0] != grids[1]
    expected = [t * h * w // merge**2 for t, h, w in grids]
    assert image_token_counts(inputs, merge) == expected
    ids = inputs["input_ids"][0].tolist()
    image_id = model.config.image_token_id
    runs, run = [], 0
    for token in ids + [-1]:
        if token == image_id:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    assert runs == expected
    # Each run sits between the family's start/end markers.
    start_id = processor.tokenizer.convert_tokens_to_ids(fam.image_start_token)
    end_id = processor.tokenizer.convert_tokens_to_ids(fam.image_end_token)
    assert ids.count(start_id) == 2 and ids.count(end_id) == 2

    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, len(ids), model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()

    def sample(seed: int) -> list[int]:
        torch.manual_seed(seed)
        out = model.generate(**inputs, do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=6)
        return out[0, len(ids) :].tolist()

    first = sample(7)
    assert 1 <= len(first) <= 6 and all(0 <= t < model.config.text_config.vocab_size for t in first)
    assert sample(7) == first


@pytest.mark.parametrize("arch", ARCHS)
def test_config_token_ids_follow_the_tokenizer(arch, tiny_loaded):
    model, processor, _ = tiny_loaded[arch]
    fam, tok = family(arch), processor.tokenizer
    tid = tok.convert_tokens_to_ids
    assert model.config.image_token_id == tid(fam.image_token) == processor.image_token_id
    assert model.config.video_token_id == tid(fam.video_token)
    if arch == "glm-4.1v":
        assert model.config.image_start_token_id == tid("<|begin_of_image|>")
        assert model.config.image_end_token_id == tid("<|end_of_image|>")
        assert model.config.video_start_token_id == tid("<|begin_of_video|>")
    else:
        assert model.config.vision_start_token_id == tid("<|vision_start|>") == 151652  # real Qwen ids
        assert model.config.image_token_id == 151655
    assert model.generation_config.eos_token_id == [tid(t) for t in fam.stop_tokens]
    assert model.generation_config.pad_token_id == tid(fam.pad_token) == model.config.text_config.pad_token_id
    assert tok.eos_token == fam.eos_token
    vocab = model.config.text_config.vocab_size
    assert max(tok.get_vocab().values()) < vocab == model.get_input_embeddings().weight.shape[0]
    # Control tokens are single tokens; <think> survives decoding without special tokens.
    for token in fam.special_tokens:
        assert tok.encode(token, add_special_tokens=False) == [tid(token)]
    text = "<think>\nso 2+2=4\n</think>\n<answer>4</answer>"
    assert tok.decode(tok.encode(text, add_special_tokens=False), skip_special_tokens=True) == text


def test_glm_adds_its_control_tokens_to_a_qwen_tokenizer(tiny_loaded):
    _, processor, _ = tiny_loaded["glm-4.1v"]
    qwen_len = 151669  # the real Qwen3 tokenizer: 151643 BPE tokens + 26 added tokens
    tok = processor.tokenizer
    fam = family("glm-4.1v")
    new = [t for t in (*fam.special_tokens, *fam.plain_tokens) if tok.convert_tokens_to_ids(t) >= qwen_len]
    # Qwen3 already has <|endoftext|>, <think>, </think>; the box tokens are added as plain tokens.
    assert set(new) == set(fam.special_tokens + fam.plain_tokens) - {"<|endoftext|>", "<think>", "</think>"}
    assert len(tok) == qwen_len + len(new)


# --- processor geometry --------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "tokens"), [("qwen3-vl", 494), ("qwen2.5-vl", 630), ("glm-4.1v", 630)])
def test_a4_page_vision_tokens_match_design(arch, tokens, tiny_loaded):
    """DESIGN.md: a 595x842 page is 494 tokens for Qwen3-VL (patch 16), 630 for patch-14 families."""
    _, processor, _ = tiny_loaded[arch]
    assert processor.image_processor.patch_size == (16 if arch == "qwen3-vl" else 14)
    messages = [{"role": "user", "content": [{"type": "image", "image": page(595, 842, "x")}]}]
    inputs = build_inputs(processor, messages)  # images taken from the message items
    assert image_token_counts(inputs, 2) == [tokens]


@pytest.mark.parametrize("arch", ARCHS)
def test_max_image_pixels_caps_the_resized_area(arch, tiny_loaded):
    _, processor, _ = tiny_loaded[arch]
    messages = [{"role": "user", "content": [{"type": "image"}]}]
    img = page(1190, 1684, "big")
    full = build_inputs(processor, messages, [img])
    capped = build_inputs(processor, messages, [img], max_image_pixels=200_000)
    _, h, w = capped["image_grid_thw"][0].tolist()
    patch = processor.image_processor.patch_size
    assert h * w * patch * patch <= 200_000
    assert image_token_counts(capped, 2)[0] < image_token_counts(full, 2)[0]


def test_build_inputs_rejects_image_count_mismatch(tiny_loaded):
    _, processor, _ = tiny_loaded["qwen3-vl"]
    messages, images = two_image_messages()
    with pytest.raises(ValueError, match="2 image items but 1 images"):
        build_inputs(processor, messages, images[:1])


# --- chat templates ------------------------------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "SYS"},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q1"}]},
    {"role": "assistant", "content": "<think>\nr\n</think>\n<answer>1</answer>"},
    {"role": "user", "content": "Q2"},
]

QWEN_BODY = (
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q1<|im_end|>\n"
    "<|im_start|>assistant\n<think>\nr\n</think>\n<answer>1</answer><|im_end|>\n"
    "<|im_start|>user\nQ2<|im_end|>\n"
)
GLM_BODY = (
    "<|user|>\n<|begin_of_image|><|image|><|end_of_image|>Q1"
    "<|assistant|>\n<think>\nr\n</think>\n<answer>1</answer><|user|>\nQ2"
)


@pytest.mark.parametrize(
    ("arch", "with_system", "without_system", "prompt"),
    [
        ("qwen3-vl", "<|im_start|>system\nSYS<|im_end|>\n" + QWEN_BODY, QWEN_BODY, "<|im_start|>assistant\n"),
        (
            "qwen2.5-vl",
            "<|im_start|>system\nSYS<|im_end|>\n" + QWEN_BODY,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + QWEN_BODY,
            "<|im_start|>assistant\n",
        ),
        ("glm-4.1v", "[gMASK]<sop><|system|>\nSYS" + GLM_BODY, "[gMASK]<sop>" + GLM_BODY, "<|assistant|>\n"),
    ],
)
def test_chat_template_renders_the_family_format(arch, with_system, without_system, prompt, tiny_loaded):
    _, processor, _ = tiny_loaded[arch]
    render = processor.apply_chat_template
    assert render(CONVERSATION, tokenize=False) == with_system
    assert render(CONVERSATION, tokenize=False, add_generation_prompt=True) == with_system + prompt
    assert render(CONVERSATION[1:], tokenize=False) == without_system
    # The tokenizer saved alongside carries the same template.
    assert processor.tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == with_system


@pytest.mark.parametrize("arch", ARCHS)
def test_assistant_mask_covers_the_reply(arch, tiny_loaded):
    _, processor, _ = tiny_loaded[arch]
    tok = processor.tokenizer
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>x</think>ok"}]
    out = tok.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    reply = tok.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m])
    # Qwen closes the turn with <|im_end|> (the model must learn to stop); GLM ends where the next role starts.
    assert reply == ("<think>x</think>ok" if arch == "glm-4.1v" else "<think>x</think>ok<|im_end|>")


def test_enable_thinking_opens_a_think_block(tiny_loaded):
    _, processor, _ = tiny_loaded["qwen3-vl"]
    text = processor.apply_chat_template(
        [{"role": "user", "content": "Q"}], tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    assert text == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n"


# --- save / load ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_save_and_reload_gives_identical_logits(arch, tiny_loaded, tmp_path):
    model, processor, meta = tiny_loaded[arch]
    messages, images = two_image_messages()
    inputs = build_inputs(processor, messages, images)
    with torch.no_grad():
        before = model(**inputs).logits
    out = save_checkpoint(model, processor, tmp_path / "copy", meta)
    model2, processor2, meta2 = load_model(out, device="cpu")
    assert meta2 == meta and type(processor2) is type(processor)
    inputs2 = build_inputs(processor2, messages, images)
    assert torch.equal(inputs2["input_ids"], inputs["input_ids"])
    assert torch.equal(inputs2["pixel_values"], inputs["pixel_values"])
    with torch.no_grad():
        after = model2(**inputs2).logits
    assert torch.equal(after, before)


def test_processor_config_names_the_real_class(tiny_dirs):
    for arch, path in tiny_dirs.items():
        fam = family(arch)
        config = json.loads((path / "processor_config.json").read_text())
        assert config["processor_class"] == fam.processor_class
        assert config["image_processor"]["patch_size"] == fam.patch_size
        assert config["video_processor"]["video_processor_type"] == fam.video_processor_type
        assert json.loads((path / "tokenizer_config.json").read_text())["processor_class"] == fam.processor_class
        assert json.loads((path / "config.json").read_text())["model_type"] == fam.model_type


def test_same_seed_same_weights_via_cli(tiny_dirs, qwen3_tokenizer_dir, tmp_path, capsys):
    reference = load_file(tiny_dirs["qwen3-vl"] / "model.safetensors")
    again = tmp_path / "again"
    argv = ["init-model", "--arch", "qwen3-vl", "--size", "tiny", "--tokenizer", str(qwen3_tokenizer_dir)]
    assert cli_main([*argv, "--out", str(again), "--seed", "0"]) == 0
    assert capsys.readouterr().out.strip() == str(again.resolve())
    weights = load_file(again / "model.safetensors")
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[k], reference[k]) for k in reference)
    rng_before = torch.random.get_rng_state()
    other = init_model("qwen3-vl", "tiny", qwen3_tokenizer_dir, tmp_path / "seed1", seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is untouched
    changed = load_file(other / "model.safetensors")
    assert changed.keys() == reference.keys()
    # Every randomly drawn tensor changes with the seed (norm weights and biases start constant).
    drawn = [k for k in reference if reference[k].numel() > 1 and reference[k].float().std() > 0]
    assert len(drawn) > 20 and all(not torch.equal(changed[k], reference[k]) for k in drawn)
    # A non-empty --out is refused without --overwrite, with a message instead of a traceback.
    assert cli_main([*argv, "--out", str(again)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_missing_processor_files_give_a_clear_error(tiny_dirs, tmp_path):
    bare = tmp_path / "weights_only"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(tiny_dirs["qwen2.5-vl"] / name, bare / name)
    for loader in (load_processor, load_model):
        with pytest.raises(FileNotFoundError) as err:
            loader(bare)
        message = str(err.value)
        assert str(bare) in message and "tokenizer" in message and "processor_config.json" in message
    assert cli_main(["init-model", "--arch", "glm-4.1v", "--size", "2b", "--tokenizer", "x", "--out", str(bare)]) == 2


def test_legacy_preprocessor_config_layout_loads(tiny_dirs, tmp_path):
    """Downloaded checkpoints keep image settings in preprocessor_config.json, not processor_config.json."""
    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_dirs["qwen2.5-vl"], legacy)
    config = json.loads((legacy / "processor_config.json").read_text())
    (legacy / "processor_config.json").unlink()
    image = config["image_processor"]
    (legacy / "preprocessor_config.json").write_text(json.dumps({**image, "processor_class": "Qwen2_5_VLProcessor"}))
    processor = load_processor(legacy)
    messages = [{"role": "user", "content": [{"type": "image", "image": page(595, 842, "x")}]}]
    assert image_token_counts(build_inputs(processor, messages), 2) == [630]


def test_meta_defaults_for_a_checkpoint_without_vtcr_json(tiny_dirs, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_dirs["glm-4.1v"], plain)
    (plain / "vtcr.json").unlink()
    # a checkpoint vtcr did not make: its pages are unknown (the engine then renders vtcr1, with a warning)
    assert read_meta(plain) == ModelMeta(arch="glm-4.1v", size=None, render_preset=None, max_image_pixels=None)
    assert read_meta(plain).render() is None
    assert json.loads((tiny_dirs["glm-4.1v"] / "vtcr.json").read_text()) == {
        "arch": "glm-4.1v", "size": "tiny", "render_preset": "dense", "render_config": preset("dense").to_dict(),
        "created_by": "vtcr init-model", "max_image_pixels": None, "seed": 0,
    }  # fmt: skip
    # an older vtcr.json names the preset only; a custom config is kept whole
    (plain / "vtcr.json").write_text(json.dumps({"arch": "glm-4.1v", "render_preset": "vtcr1"}))
    assert read_meta(plain).render() == preset("vtcr1")
    custom = preset("vtcr1").replace(font_size=8.0)
    meta = ModelMeta(arch="glm-4.1v").with_render(custom)
    assert meta.render_preset is None and meta.render() == custom


# --- sizes ---------------------------------------------------------------------------------------

# Published totals of the real checkpoints (Hugging Face safetensors parameter counts).
PUBLISHED_TOTALS = [
    ("qwen3-vl", "2b", 2.13e9),  # Qwen/Qwen3-VL-2B-Instruct
    ("qwen3-vl", "8b", 8.77e9),  # Qwen/Qwen3-VL-8B-Instruct
    ("qwen2.5-vl", "2b", 3.75e9),  # Qwen/Qwen2.5-VL-3B-Instruct
    ("qwen2.5-vl", "8b", 8.29e9),  # Qwen/Qwen2.5-VL-7B-Instruct
    ("glm-4.1v", "8b", 10.3e9),  # zai-org/GLM-4.1V-9B-Thinking
]


@pytest.mark.parametrize(("arch", "size", "published"), PUBLISHED_TOTALS)
def test_real_sizes_have_the_published_parameter_counts(arch, size, published):
    counts = count_parameters(arch, size)  # built on the meta device: no memory
    assert abs(counts["total"] - published) / published < 0.02, counts
    assert counts["vision"] + counts["language"] == counts["total"]


@pytest.mark.parametrize("arch", ARCHS)
def test_toy_sizes(arch, tiny_loaded):
    tiny, small = count_parameters(arch, "tiny"), count_parameters(arch, "small")
    # tiny: a few M parameters besides the 151k-token embedding; small: tens of millions.
    assert tiny["total"] - tiny["embedding"] < 2e6 and tiny["total"] < 25e6
    assert 2e6 < small["total"] - small["embedding"] < 10e6 and 20e6 < small["total"] < 80e6
    model = tiny_loaded[arch][0]
    vocab = model.config.text_config.vocab_size  # GLM grows past its published vocab with Qwen ids
    assert sum(p.numel() for p in model.parameters()) == count_parameters(arch, "tiny", vocab)["total"]


def test_size_names():
    assert resolve_size("qwen2.5-vl", "7B") == "8b" and resolve_size("glm-4.1v", "9b") == "8b"
    with pytest.raises(ValueError, match="does not exist for glm-4.1v"):
        resolve_size("glm-4.1v", "2b")
    with pytest.raises(ValueError, match="unknown arch"):
        resolve_size("llava", "tiny")
