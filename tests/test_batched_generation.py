"""Batched decoding in the transformers backend, on tiny real-architecture models with real pages.

The reference is the same model decoding one request at a time (`batch_size=1`, the sequential
loop that tests/test_engine_transformers.py checks against transformers' own `generate`) and
transformers' own forward over prompt + output (teacher forcing). Rows are made to join a running
batch and to leave it at different steps, with prompts of different lengths and images.
"""

from __future__ import annotations

import os
import threading

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from vtcr.engine import (  # noqa: E402
    EngineConfig,
    GenerationRequest,
    TransformersBackend,
    open_backend,
    reason_many,
    round_messages,
)
from vtcr.engine.backend import ContextLengthError  # noqa: E402
from vtcr.engine.transformers_backend import _TextStream, apply_repetition_penalty  # noqa: E402
from vtcr.models import build_inputs, init_model  # noqa: E402
from vtcr.render import Renderer, preset  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ARCHS = ("qwen3-vl", "glm-4.1v")
CONFIG = EngineConfig()
QUESTIONS = ("Find the sum of all positive divisors of 36.", "How many primes are less than 30?")


@pytest.fixture(scope="module")
def models(tmp_path_factory, qwen3_tokenizer_dir):
    """Per architecture: a batched backend (width 4) and a one-at-a-time backend of one checkpoint."""
    root = tmp_path_factory.mktemp("batched_models")
    out = {}
    for arch in ARCHS:
        path = init_model(arch, "tiny", qwen3_tokenizer_dir, root / arch, seed=0)
        batched = TransformersBackend.from_pretrained(path, device="cpu", batch_size=4)
        alone = TransformersBackend.from_pretrained(path, device="cpu", batch_size=1)  # same weights, pages, pixels
        out[arch] = batched, alone
    return out


@pytest.fixture(scope="module")
def model_dir(models):
    return models["qwen3-vl"][0].name  # from_pretrained names a backend by its folder


@pytest.fixture(scope="module")
def pages(finished_traces):
    """Two single pages of real reasoning text (dense preset), so prompts differ in images and length."""
    think = next(t["think"] for t in finished_traces if t["think"] and len(t["think"]) > 6000)
    renderer = Renderer(preset("dense")).warm_up()
    out = [renderer.render(think[:1500])[:1], renderer.render(think[3000:4500])[:1]]
    assert all(len(p) == 1 for p in out)
    return out


def req(question: str, memory: list, **kwargs) -> GenerationRequest:
    kwargs.setdefault("max_new_tokens", 8)
    kwargs.setdefault("temperature", 0.0)
    return GenerationRequest(messages=round_messages(CONFIG, question, memory), **kwargs)


def run_staggered(backend, first: GenerationRequest, later: list[GenerationRequest]):
    """`first` alone, then -- once it has produced text -- `later` all at once: they join a running batch."""
    started = threading.Event()
    results: dict[int, object] = {}

    def on_token(_piece):
        started.set()

    first = GenerationRequest(**{**first.__dict__, "on_token": on_token})

    def call(i, r):
        results[i] = backend.generate(r)

    threads = [threading.Thread(target=call, args=(0, first))]
    threads[0].start()
    assert started.wait(60)
    threads += [threading.Thread(target=call, args=(i + 1, r)) for i, r in enumerate(later)]
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(120)
    return [results[i] for i in range(len(later) + 1)]


def forced_logits(backend, request: GenerationRequest, tokens: list[int]) -> torch.Tensor:
    """transformers' own forward over prompt + `tokens`: the logits that chose each token."""
    ref = build_inputs(backend.processor, request.messages)
    toks = torch.tensor([tokens])
    forced = dict(ref)
    forced["input_ids"] = torch.cat([ref["input_ids"], toks], dim=1)
    forced["attention_mask"] = torch.ones_like(forced["input_ids"])
    forced["mm_token_type_ids"] = torch.cat([ref["mm_token_type_ids"], torch.zeros_like(toks)], dim=1)
    with torch.no_grad():
        return backend.model(**forced, logits_to_keep=toks.shape[1] + 1).logits[0, :-1].float()


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_and_sampled_text_is_the_same_batched_or_alone(arch, models, pages):
    batched, alone = models[arch]
    first = req(QUESTIONS[0], pages[0] + pages[1], max_new_tokens=14, logprobs=0)
    later = [
        req(QUESTIONS[1], [], max_new_tokens=4),  # short: leaves the batch first
        req(QUESTIONS[0], pages[1], max_new_tokens=9, logprobs=0),
        req(QUESTIONS[1], pages[0], max_new_tokens=12, temperature=0.8, top_p=0.9, seed=5),
        req(QUESTIONS[0], [], max_new_tokens=10, temperature=1.0, top_k=20, seed=7),
    ]
    together = run_staggered(batched, first, later)
    assert max(r.extra["batch_rows"] for r in together) >= 3  # really decoded together
    for r, request in zip(together, [first, *later]):
        one = alone.generate(request)
        assert one.extra["batch_rows"] == 1
        assert r.extra["token_ids"] == one.extra["token_ids"] and r.text == one.text
        assert (r.finish_reason, r.prompt_tokens, r.vision_tokens) == (one.finish_reason, one.prompt_tokens, one.vision_tokens)
    # positions and padding are exact: each greedy row's token log-probabilities equal transformers'
    # own forward over its prompt and output (its own M-RoPE positions, no padding)
    for r, request in ((together[0], first), (together[2], later[1])):
        logp = torch.log_softmax(forced_logits(batched, request, r.extra["token_ids"]), dim=-1)
        expected = logp[torch.arange(len(r.extra["token_ids"])), r.extra["token_ids"]]
        torch.testing.assert_close(torch.tensor([e["logprob"] for e in r.extra["logprobs"]]), expected, atol=1e-4, rtol=1e-4)
        assert r.extra["token_ids"] == logp.argmax(-1).tolist()


def test_prefix_cache_kept_from_a_batch_is_exact(models, pages):
    """A row's prompt cache cut out of the padded batch serves its next round exactly."""
    batched, _ = models["qwen3-vl"]
    round1 = [req(QUESTIONS[0], pages[0], prefix_key="k0", max_new_tokens=6),
              req(QUESTIONS[1], [], prefix_key="k1", max_new_tokens=3)]  # fmt: skip
    run_staggered(batched, round1[0], round1[1:])
    nxt = req(QUESTIONS[0], pages[0] + pages[1], prefix_key="k0")
    logits, prefill = batched.next_token_logits(nxt)
    ref = build_inputs(batched.processor, nxt.messages)
    with torch.no_grad():
        full = batched.model(**ref, logits_to_keep=1).logits[0, -1].float()
    assert prefill < ref["input_ids"].shape[1] - 100  # the first page's prompt was reused
    torch.testing.assert_close(logits, full, atol=1e-4, rtol=1e-4)


def test_identical_prompts_in_flight_share_one_prefill(models, pages):
    batched, alone = models["glm-4.1v"]
    blocker = req(QUESTIONS[1], [], max_new_tokens=6)
    same = [req(QUESTIONS[0], pages[0], max_new_tokens=6, temperature=1.0, seed=s, prefix_key="n") for s in (1, 2, 3)]
    results = run_staggered(batched, blocker, same)[1:]
    assert sorted(r.prefill_tokens for r in results) == [0, 0, results[0].prompt_tokens]
    assert sum(r.extra["shared_prefill"] for r in results) == 2
    for r, request in zip(results, same):
        assert r.extra["token_ids"] == alone.generate(request).extra["token_ids"]
    assert len({tuple(r.extra["token_ids"]) for r in results}) > 1  # different seeds, different samples


def test_top_k_and_logprobs(models):
    backend, _ = models["qwen3-vl"]
    k = 5
    r = backend.generate(req(QUESTIONS[0], [], max_new_tokens=10, temperature=1.5, top_k=k, seed=3, logprobs=k))
    assert len(r.extra["logprobs"]) == r.generated_tokens == 10
    for token, entry in zip(r.extra["token_ids"], r.extra["logprobs"]):
        top = entry["top"]
        assert entry["id"] == token and isinstance(entry["token"], str) and len(top) == k
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert token in [t["id"] for t in top]  # top-k sampling never leaves the k most likely
    assert len(set(r.extra["token_ids"])) > 1
    # top_k=1 is greedy, whatever the temperature
    greedy = backend.generate(req(QUESTIONS[0], [], max_new_tokens=10))
    assert backend.generate(req(QUESTIONS[0], [], max_new_tokens=10, temperature=1.5, top_k=1, seed=3)).extra[
        "token_ids"] == greedy.extra["token_ids"]  # fmt: skip


def test_repetition_penalty_follows_transformers_semantics(models):
    backend, _ = models["glm-4.1v"]
    penalty = 3.0
    request = req(QUESTIONS[0], [], max_new_tokens=10, repetition_penalty=penalty)
    r = backend.generate(request)
    plain = backend.generate(req(QUESTIONS[0], [], max_new_tokens=10))
    assert r.extra["token_ids"] != plain.extra["token_ids"]
    logits = forced_logits(backend, request, r.extra["token_ids"])
    prompt = build_inputs(backend.processor, request.messages)["input_ids"][0].tolist()
    for t, token in enumerate(r.extra["token_ids"]):
        seen = torch.zeros(logits.shape[-1], dtype=torch.bool)
        seen[prompt + r.extra["token_ids"][:t]] = True
        row = logits[t]
        expected = torch.where(seen, torch.where(row > 0, row / penalty, row * penalty), row)
        torch.testing.assert_close(apply_repetition_penalty(row, seen, penalty), expected)
        assert token == int(expected.argmax())


def test_stop_strings_and_streaming(models):
    backend, _ = models["qwen3-vl"]
    full = backend.generate(req(QUESTIONS[1], [], max_new_tokens=16))
    assert full.finish_reason == "length" and len(full.text) > 8
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    pieces: list[str] = []
    r = backend.generate(req(QUESTIONS[1], [], max_new_tokens=16, stop=("\x00never", stop), on_token=pieces.append))
    assert r.finish_reason == "stop" and r.text == full.text[: full.text.find(stop)]
    assert "".join(pieces) == r.text and r.generated_tokens < full.generated_tokens
    pieces.clear()
    streamed = backend.generate(req(QUESTIONS[1], [], max_new_tokens=16, on_token=pieces.append))
    assert "".join(pieces) == streamed.text == full.text and len(pieces) > 1


def test_stream_never_splits_a_character(qwen3_tokenizer_dir):
    """Multi-byte characters split over byte-level tokens come out whole, in order."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)
    text = "Soit 𝔽₇ un corps; 数学 🧮🫠 ok"
    ids = tokenizer(text)["input_ids"]
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # some token ends inside a character
    pieces: list[str] = []
    stream = _TextStream(tokenizer, (), pieces.append)
    for i in ids:
        stream.push(i)
    stream.finish(tokenizer.decode(ids, skip_special_tokens=True))
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    # a stop string inside a multi-byte run
    pieces.clear()
    stream = _TextStream(tokenizer, ("🫠",), pieces.append)
    assert any(stream.push(i) for i in ids) and stream.stopped == text[: text.index("🫠")]
    assert "".join(pieces) == stream.stopped


def test_cancel_stops_within_a_step(models, pages):
    batched, alone = models["qwen3-vl"]
    cancel = threading.Event()
    seen: list[str] = []

    def on_token(piece):
        seen.append(piece)
        cancel.set()

    victim = req(QUESTIONS[0], pages[0], max_new_tokens=40, on_token=on_token, cancel=cancel)
    other = req(QUESTIONS[1], [], max_new_tokens=10)
    results = run_staggered(batched, other, [victim])
    assert results[1].finish_reason == "cancelled" and results[1].generated_tokens < 40
    assert results[1].text.startswith("".join(seen))
    assert results[0].extra["token_ids"] == alone.generate(other).extra["token_ids"]  # the others go on
    already = batched.generate(req(QUESTIONS[0], [], cancel=cancel))
    assert (already.finish_reason, already.generated_tokens) == ("cancelled", 0)


def test_bad_fields_are_refused(models):
    backend, _ = models["qwen3-vl"]
    for field, value in (("top_k", -1), ("repetition_penalty", 0.0), ("logprobs", -2), ("stop", "x"), ("stop", ("",))):
        with pytest.raises(ValueError, match=field):
            backend.generate(req(QUESTIONS[0], [], **{field: value}))
    with pytest.raises(ValueError, match="batch_size"):
        TransformersBackend(backend.model, backend.processor, batch_size=0)
    short = TransformersBackend(backend.model, backend.processor, context_length=40)
    with pytest.raises(ContextLengthError, match="context length is 40"):
        short.generate(req(QUESTIONS[0], [], max_new_tokens=4))
    fits = TransformersBackend(backend.model, backend.processor, context_length=short_prompt(backend) + 3)
    r = fits.generate(req("Hi", [], max_new_tokens=50, temperature=1.0, seed=0))
    assert (r.generated_tokens, r.finish_reason) == (3, "length")


def short_prompt(backend) -> int:
    return backend.generate(req("Hi", [], max_new_tokens=1)).prompt_tokens


def test_engine_rounds_decode_together(models, model_dir, monkeypatch):
    """reason_many keeps `concurrency` rounds in flight and they share decode steps; the records are
    those of one-at-a-time decoding. `vtcr eval --concurrency` (open_backend) sets the width."""
    batched, alone = models["glm-4.1v"]
    widths: list[int] = []
    generate = batched.generate

    def logged(request):
        result = generate(request)
        widths.append(result.extra["batch_rows"])
        return result

    monkeypatch.setattr(batched, "generate", logged)
    config = EngineConfig(max_rounds=2, round_tokens=4, temperature=0.0)
    questions = list(QUESTIONS)
    many = reason_many(questions, batched, config)
    solo = reason_many(questions, alone, config)
    assert max(widths) == 2 and len(widths) == 4
    for a, b in zip(many, solo):
        assert [(r.text, r.prompt_tokens, r.images) for r in a.rounds] == [(r.text, r.prompt_tokens, r.images) for r in b.rounds]
    assert open_backend(model_dir, device="cpu", concurrency=3).concurrency == 3
