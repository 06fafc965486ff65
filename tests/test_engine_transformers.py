"""The transformers backend and the engine end to end, on tiny real-architecture models.

The reference for every prefix-reuse check is transformers itself: `model(**processor inputs)` over
the whole prompt (its own M-RoPE positions) and `model.generate`. Pages are real renders of real
reasoning traces. Tiny models have random weights: they never write `<answer>`, so every vtc run
here ends at max rounds.
"""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from vtcr.cli import main as cli_main  # noqa: E402
from vtcr.engine import (  # noqa: E402
    EngineConfig,
    GenerationRequest,
    TransformersBackend,
    reason,
    reason_many,
    round_messages,
)
from vtcr.engine.transformers_backend import common_prefix_len, sample_token, top_p_floor  # noqa: E402
from vtcr.models import build_inputs, init_model  # noqa: E402
from vtcr.render import Renderer, preset  # noqa: E402
from vtcr.tokens import vision_tokens  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ARCHS = ("qwen3-vl", "glm-4.1v")  # Qwen3-VL and one other M-RoPE family (GLM: another template, partial RoPE)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, qwen3_tokenizer_dir):
    root = tmp_path_factory.mktemp("engine_models")
    return {arch: init_model(arch, "tiny", qwen3_tokenizer_dir, root / arch, seed=0) for arch in ARCHS}


@pytest.fixture(scope="module")
def backends(tiny_dirs):
    return {arch: TransformersBackend.from_pretrained(path, device="cpu") for arch, path in tiny_dirs.items()}


@pytest.fixture(scope="module")
def pages(finished_traces):
    """Three rounds of optical memory: real reasoning text rendered with the paper's preset (real
    line breaks: about 2k characters a page, so rounds of several pages)."""
    think = next(t["think"] for t in finished_traces if t["think"] and len(t["think"]) > 12000)
    renderer = Renderer(preset("vtcr1")).warm_up()
    out = [renderer.render(think[i * 4000 : (i + 1) * 4000]) for i in range(3)]
    assert all(len(p) >= 1 for p in out) and max(len(p) for p in out) >= 2
    return out


QUESTION = "Find the sum of all positive divisors of 36."
CONFIG = EngineConfig()


def request(pages_so_far, key=None, **kwargs) -> GenerationRequest:
    kwargs.setdefault("max_new_tokens", 8)
    return GenerationRequest(messages=round_messages(CONFIG, QUESTION, pages_so_far), prefix_key=key, **kwargs)


def reference_inputs(backend, pages_so_far):
    return build_inputs(backend.processor, round_messages(CONFIG, QUESTION, pages_so_far))


def without_timings(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in ("seconds", "model")}
    out["rounds"] = [{k: v for k, v in r.items() if not k.endswith("_s")} for r in record["rounds"]]
    return out


# --- sampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("top_p", [1.0, 0.95, 0.8, 0.5, 0.3])
def test_sampling_follows_temperature_and_top_p(top_p):
    """Empirical frequencies match the nucleus distribution computed independently by sorting."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 0.7])
    temperature = 0.8
    probs = torch.softmax(logits / temperature, dim=-1)
    order = torch.argsort(probs, descending=True)
    keep = order[: int(((torch.cumsum(probs[order], 0) - probs[order]) < top_p).sum())]
    expected = torch.zeros_like(probs)
    expected[keep] = probs[keep] / probs[keep].sum()
    generator = torch.Generator().manual_seed(0)
    n = 20_000
    draws = torch.tensor([sample_token(logits, temperature, top_p, generator) for _ in range(n)])
    counts = torch.bincount(draws, minlength=6)
    torch.testing.assert_close(counts / n, expected, atol=0.015, rtol=0)
    assert sample_token(logits, 0.0, top_p, generator) == 0  # temperature 0: greedy


def test_top_p_floor_keeps_the_sorted_nucleus():
    generator = torch.Generator().manual_seed(1)
    for trial in range(100):
        probs = torch.softmax(torch.randn(5000, generator=generator) * (0.2 + trial / 10), dim=-1)
        top_p = 0.05 + 0.9 * trial / 100
        ranked = torch.sort(probs, descending=True).values
        expected = int(((torch.cumsum(ranked, 0) - ranked) < top_p).sum())
        assert int((probs >= top_p_floor(probs, top_p)).sum()) == expected


# --- prompts are what the processor builds ------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_tokens_and_pixels_match_the_processor(arch, backends, pages):
    backend = backends[arch]
    for memory in ([], pages[0], pages[0] + pages[1]):
        ref = reference_inputs(backend, memory)
        prep = backend._prepare(request(memory))
        assert prep.ids == ref["input_ids"][0].tolist()
        if memory:
            assert prep.new_grids == [tuple(g) for g in ref["image_grid_thw"].tolist()]
            assert torch.equal(prep.pixel_values, ref["pixel_values"])


# --- prefix reuse: the acceptance test ------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_reuse_equals_full_recompute(arch, backends, pages):
    backend = backends[arch]
    key = f"acceptance-{arch}"
    rounds = [[], pages[0], pages[0] + pages[1], pages[0] + pages[1] + pages[2]]
    previous_ids: list[int] = []
    tails = []
    for k, memory in enumerate(rounds):
        ref = reference_inputs(backend, memory)
        ids = ref["input_ids"][0].tolist()
        with torch.no_grad():
            full = backend.model(**ref, logits_to_keep=1).logits[0, -1].float()
        logits, prefill = backend.next_token_logits(request(memory, key))
        torch.testing.assert_close(logits, full, atol=1e-4, rtol=1e-4)
        # only the part that differs from the previous round's prompt is computed
        assert prefill == len(ids) - common_prefix_len(previous_ids, ids)
        if k:
            new_pages = rounds[k][len(rounds[k - 1]) :]
            new_vision = sum(vision_tokens(p, arch) + 2 for p in new_pages)  # placeholders + start/end marks
            tails.append(prefill - new_vision)
        previous_ids = ids
    assert len(set(tails)) == 1 and 0 < tails[0] < 10  # the same few template tokens after the images


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_with_reuse_equals_generation_without(arch, backends, pages):
    backend = backends[arch]
    checker = TransformersBackend(backend.model, backend.processor, record_logprobs=True)
    memory = pages[0] + pages[1]
    ref = reference_inputs(backend, memory)
    n_prompt = ref["input_ids"].shape[1]

    # greedy: reuse (second call of a key) == no reuse == transformers' generate
    greedy = dict(max_new_tokens=12, temperature=0.0)
    checker.generate(request(pages[0], "g", **greedy))
    reused = checker.generate(request(memory, "g", **greedy))
    fresh = checker.generate(request(memory, None, **greedy))
    hf = backend.model.generate(**ref, do_sample=False, max_new_tokens=12)[0, n_prompt:].tolist()
    assert reused.prefill_tokens < fresh.prefill_tokens == fresh.prompt_tokens == n_prompt
    assert reused.extra["token_ids"] == fresh.extra["token_ids"] == hf[: len(fresh.extra["token_ids"])]

    # sampling with one seed: the same tokens with and without reuse
    sampled = dict(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=11)
    checker.generate(request(pages[0], "s", **sampled))
    a = checker.generate(request(memory, "s", **sampled))
    b = checker.generate(request(memory, None, **sampled))
    assert a.extra["token_ids"] == b.extra["token_ids"] and a.text == b.text
    assert len(set(a.extra["token_ids"])) > 3  # really sampled (random weights: not one repeated token)

    # decoding positions: every sampled token's log-probability equals transformers' own forward over
    # prompt + generated tokens (teacher forcing, its own M-RoPE positions)
    toks = torch.tensor([a.extra["token_ids"]])
    forced = dict(ref)
    forced["input_ids"] = torch.cat([ref["input_ids"], toks], dim=1)
    forced["attention_mask"] = torch.ones_like(forced["input_ids"])
    forced["mm_token_type_ids"] = torch.cat([ref["mm_token_type_ids"], torch.zeros_like(toks)], dim=1)
    with torch.no_grad():
        logits = backend.model(**forced, logits_to_keep=toks.shape[1] + 1).logits[0, :-1].float()
    expected = torch.log_softmax(logits, dim=-1)[torch.arange(toks.shape[1]), toks[0]]
    torch.testing.assert_close(torch.tensor(a.extra["logprobs"]), expected, atol=1e-4, rtol=1e-4)


# --- the engine end to end -------------------------------------------------------------------------


def test_vtc_end_to_end_never_finishing_tiny_model(backends, tiny_dirs):
    backend = backends["qwen3-vl"]
    config = EngineConfig(max_rounds=3, round_tokens=6, temperature=0.6)
    record = reason(QUESTION, backend, config)
    assert (record.finished, record.stop_reason, record.error, len(record.rounds)) == (False, "max_rounds", None, 3)
    assert record.model == str(tiny_dirs["qwen3-vl"]) and record.config["render_preset"] == "dense"
    renderer = Renderer(preset("dense"))
    seen_pages = []
    first = record.rounds[1]
    tail = first.prefill_tokens - first.vision_tokens - 2 * first.images  # template tokens after the images
    for k, rnd in enumerate(record.rounds):
        assert rnd.generated_tokens == 6 and rnd.finish_reason == "length" and rnd.text.strip()
        assert rnd.images == len(seen_pages)
        assert rnd.vision_tokens == sum(vision_tokens(p, "qwen3-vl") for p in seen_pages)
        if k:
            new = rnd.images - record.rounds[k - 1].images
            new_vision = rnd.vision_tokens - record.rounds[k - 1].vision_tokens
            assert rnd.prefill_tokens == new_vision + 2 * new + tail
            assert rnd.prefill_tokens < rnd.prompt_tokens
        if k < 2:
            page_list = renderer.render(rnd.text)
            assert rnd.pages == len(page_list) >= 1
            seen_pages += page_list
    assert record.rounds[-1].pages == 0

    # same seed, same inputs -> same record; many at once == one at a time (no cross-talk)
    again = reason(QUESTION, backend, config)
    assert without_timings(again.to_dict()) == without_timings(record.to_dict())
    other = "How many primes are less than 30?"
    many = reason_many([QUESTION, other], backend, config, render_workers=2)
    assert without_timings(many[0].to_dict()) == without_timings(record.to_dict())
    assert without_timings(many[1].to_dict()) == without_timings(reason(other, backend, config, seed=1).to_dict())


def test_text_and_no_memory_modes_reuse_their_prefix(backends):
    backend = backends["glm-4.1v"]
    text = reason(QUESTION, backend, EngineConfig(mode="text", max_rounds=2, round_tokens=6, temperature=0.0))
    r1, r2 = text.rounds
    assert r2.images == 0 and r2.prompt_tokens > r1.prompt_tokens
    assert r2.prefill_tokens <= r2.prompt_tokens - r1.prompt_tokens  # round 1's prompt and output reused
    nomem = reason(QUESTION, backend, EngineConfig(mode="no-memory", max_rounds=2, round_tokens=4))
    assert [r.images for r in nomem.rounds] == [0, 0]
    assert nomem.rounds[1].prompt_tokens == nomem.rounds[0].prompt_tokens and nomem.rounds[1].prefill_tokens == 1
    standard = reason(QUESTION, backend, EngineConfig(mode="standard", max_rounds=2, round_tokens=4))
    assert len(standard.rounds) == 1 and standard.rounds[0].generated_tokens == 8 and standard.stop_reason == "length"


# --- bad input ------------------------------------------------------------------------------------


def link_checkpoint(src, dst, skip=()):
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            (dst / f.name).symlink_to(f)
    return dst


def test_images_larger_than_the_maximum_are_capped(backends, tiny_dirs, tmp_path, pages):
    """A checkpoint whose vtcr.json caps image area (as its training data was) gets every image
    resized under the cap, exactly as the processor would."""
    from PIL import Image

    src = tiny_dirs["qwen3-vl"]
    capped_dir = link_checkpoint(src, tmp_path / "capped", skip=("vtcr.json",))
    meta = json.loads((src / "vtcr.json").read_text())
    (capped_dir / "vtcr.json").write_text(json.dumps({**meta, "max_image_pixels": 60_000}))
    backend = TransformersBackend.from_pretrained(capped_dir, device="cpu")
    big = pages[0][0].resize((1190, 1684), Image.BICUBIC)  # 2M pixels: far above the cap
    result = backend.generate(request([big], max_new_tokens=2))
    assert result.vision_tokens == vision_tokens(big, "qwen3-vl", max_pixels=60_000) < vision_tokens(big, "qwen3-vl")
    ref = build_inputs(backend.processor, round_messages(CONFIG, QUESTION, [big]), max_image_pixels=60_000)
    assert result.prompt_tokens == ref["input_ids"].shape[1]


def test_checkpoint_without_processor_is_refused(tiny_dirs, tmp_path, capsys):
    src = tiny_dirs["qwen3-vl"]
    processor_files = [f.name for f in src.iterdir() if any(w in f.name for w in ("token", "processor", "template"))]
    bare = link_checkpoint(src, tmp_path / "bare", skip=processor_files)
    with pytest.raises(FileNotFoundError, match="no processor files"):
        TransformersBackend.from_pretrained(bare, device="cpu")
    assert cli_main(["reason", QUESTION, "--model", str(bare)]) == 2
    assert "no processor files" in capsys.readouterr().err


def test_cli_reason(tiny_dirs, tmp_path, capsys):
    model = str(tiny_dirs["glm-4.1v"])
    out = tmp_path / "run"
    rc = cli_main(["reason", QUESTION, "--model", model, "--max-rounds", "2", "--round-tokens", "4",
                   "--seed", "3", "--json", "--out", str(out), "--save-images"])
    captured = capsys.readouterr()
    assert rc == 0
    record = json.loads(captured.out)
    assert record["question"] == QUESTION and record["mode"] == "vtc" and record["finished"] is False
    assert [r["images"] for r in record["rounds"]] == [0, record["rounds"][0]["pages"]]
    assert record["config"]["seed"] == 3 and record["config"]["round_tokens"] == 4
    assert "--- round 2" in captured.err
    saved = json.loads((out / "run.json").read_text())
    assert saved["rounds"][0]["page_files"] and (out / saved["rounds"][0]["page_files"][0]).is_file()

    rc = cli_main(["reason", QUESTION, "--model", model, "--max-rounds", "1", "--round-tokens", "3"])
    text = capsys.readouterr().out
    assert rc == 0 and "--- round 1" in text and "not finished" in text
    assert text.strip().splitlines()[-1].startswith("no final answer") and "\nanswer:" not in text  # never shown as an answer

    assert cli_main(["reason", "  ", "--model", model]) == 2
    assert "question is empty" in capsys.readouterr().err
    assert cli_main(["reason", QUESTION, "--server", "http://localhost:1/v1"]) == 2
    assert "--served-model" in capsys.readouterr().err


def test_unsupported_model_is_refused():
    class NotAVlm(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match="M-RoPE"):
        TransformersBackend(NotAVlm(), processor=None)


def test_bad_request_is_refused(backends):
    with pytest.raises(ValueError, match="max_new_tokens"):
        backends["qwen3-vl"].generate(request([], max_new_tokens=0))
    with pytest.raises(ValueError, match="PIL image"):
        bad = [{"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "image", "image": "page.png"}]}]
        backends["qwen3-vl"].generate(GenerationRequest(messages=bad, max_new_tokens=2))
