"""`vtcr train` / `vtcr export-llamafactory` on tiny real-architecture models and a real build.

The build is made by the real builder from three real shared traces (small segments, so several
rounds per problem). Models are `vtcr init-model` tiny checkpoints with the real Qwen3 tokenizer.
References are independent of the code under test: transformers' own loss and processor, the
engine's prompt preparation, `vtcr.tokens.vision_tokens`, and LLaMA-Factory's documented resize rule.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from data_helpers import good_traces, write_jsonl  # noqa: E402

from vtcr.cli import main as cli_main  # noqa: E402
from vtcr.data import BuildConfig, SourceConfig, build_dataset  # noqa: E402
from vtcr.engine import EngineConfig, GenerationRequest, TransformersBackend, reason, round_messages  # noqa: E402
from vtcr.models import init_model, load_processor  # noqa: E402
from vtcr.models.processor import image_size_budget  # noqa: E402
from vtcr.tokens import vision_tokens  # noqa: E402
from vtcr.train import TrainConfig, train  # noqa: E402
from vtcr.train.data import IGNORE_INDEX, Collator, SampleEncoder, load_samples, read_build  # noqa: E402
from vtcr.train.progress import STEP_LOG_FILE, trim_step_log  # noqa: E402
from vtcr.train.trainer import last_checkpoint  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
CAP = 40_000  # pixels: below the area of the build's pages, so the cap really changes their size


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory, shared_traces) -> Path:
    root = tmp_path_factory.mktemp("train_build")
    rows = [{"id": t["id"], "problem": t["problem"], "answer": t["gt_answer"], "trace": t["r1_style"]}
            for t in good_traces(shared_traces, 3, min_chars=3000)]  # fmt: skip
    src = write_jsonl(root / "traces.jsonl", rows)
    build_dataset(BuildConfig(SourceConfig(str(src)), segment_tokens=256), root / "build", progress=False, plots=False)
    return root / "build"


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory, qwen3_tokenizer_dir) -> Path:
    return init_model("qwen3-vl", "tiny", qwen3_tokenizer_dir, tmp_path_factory.mktemp("m") / "qwen3", seed=0)


def config(build_dir, model, out, **kw) -> TrainConfig:
    defaults = dict(lr=2e-3, batch_size=2, grad_accum=1, warmup_ratio=0.0, cutoff_len=480, save_steps=1000,
                    progress=False, scheduler="constant")  # fmt: skip
    return TrainConfig(data=str(build_dir), model=str(model), out=str(out), **{**defaults, **kw})


# --- data: samples, encoding, truncation ------------------------------------------------------------


def test_samples_follow_the_build(build_dir):
    info = read_build(build_dir)
    records = [json.loads(line) for line in (build_dir / "problems.jsonl").read_text().splitlines()]
    problems = [r for r in records if r["kind"] == "problem"]
    vtc = load_samples(info, "vtc")
    assert len(vtc) == sum(len(r["turns"]) for r in problems) == json.loads((build_dir / "stats.json").read_text())["samples"]
    assert any(len(s.images) >= 2 for s in vtc)
    standard = load_samples(info, "standard")
    assert len(standard) == len(problems)
    for sample, record in zip(standard, problems):
        assert sample.images == ()
        assert [m["role"] for m in sample.messages] == ["user", "assistant"]  # no optical-memory system prompt
        answer = sample.messages[1]["content"][0]["text"]
        assert answer.startswith("<think>") and "</think>" in answer
        assert answer.endswith(f"<answer>{record['answer'].strip()}</answer>")


def test_encoding_matches_the_engine_prompt_and_supervises_only_the_answer(build_dir, tiny_qwen3):
    """Prompt tokens == what the engine feeds for the same round; labels == the assistant turn + <|im_end|>\n
    (the Qwen template closes every assistant turn with <|im_end|>\n; LLaMA-Factory trains on the same)."""
    processor = load_processor(tiny_qwen3)
    encoder = SampleEncoder(processor, cutoff_len=100_000)
    backend = TransformersBackend.from_pretrained(tiny_qwen3, device="cpu")
    sample = next(s for s in load_samples(read_build(build_dir)) if len(s.images) >= 2)
    enc = encoder.encode(sample)
    n_prompt = sum(1 for x in enc["labels"] if x == IGNORE_INDEX)
    question = sample.messages[1]["content"][0]["text"]
    pages = encoder.load_images(sample)
    prep = backend._prepare(GenerationRequest(messages=round_messages(EngineConfig(), question, pages), max_new_tokens=1))
    assert enc["input_ids"][:n_prompt] == prep.ids
    target = processor.tokenizer.decode(enc["input_ids"][n_prompt:])
    assert target == sample.messages[2]["content"][0]["text"] + "<|im_end|>\n"
    assert enc["labels"][n_prompt:] == enc["input_ids"][n_prompt:]


@pytest.mark.parametrize("cutoff", [300, 480, 100_000])
def test_truncation_rule_is_applied_and_counted(build_dir, tiny_qwen3, cutoff):
    processor = load_processor(tiny_qwen3)
    encoder = SampleEncoder(processor, cutoff_len=cutoff)
    samples = load_samples(read_build(build_dir))
    plan = encoder.plan(samples)
    full = SampleEncoder(processor, cutoff_len=10**9)
    dropped = truncated = cut = 0
    for i, sample in enumerate(samples):
        whole = full.encode(sample)
        n_prompt = sum(1 for x in whole["labels"] if x == IGNORE_INDEX)
        n_target = len(whole["input_ids"]) - n_prompt
        if n_prompt >= cutoff:
            dropped += 1
            assert i not in plan.kept
            with pytest.raises(ValueError, match="cutoff_len"):
                encoder.encode(sample)
            continue
        enc = encoder.encode(sample)
        assert enc["input_ids"] == whole["input_ids"][: min(cutoff, len(whole["input_ids"]))]  # cut from the right
        assert sum(1 for x in enc["labels"] if x == IGNORE_INDEX) == n_prompt  # the prompt is never cut
        if n_prompt + n_target > cutoff:
            truncated += 1
            cut += n_prompt + n_target - cutoff
    assert (len(plan.dropped_prompt_too_long), plan.truncated, plan.target_tokens_cut) == (dropped, truncated, cut)
    assert len(plan.kept) == len(samples) - dropped
    if cutoff == 300:
        assert dropped > 0 and truncated > 0
    if cutoff == 100_000:
        assert dropped == truncated == 0


def test_masked_loss_equals_transformers_loss(build_dir, tiny_qwen3):
    """The trainer's loss (logits only where the next token is labelled) == the model's own full loss."""
    from transformers import AutoModelForImageTextToText, TrainingArguments

    from vtcr.train.trainer import _make_trainer_class

    processor = load_processor(tiny_qwen3)
    encoder = SampleEncoder(processor, cutoff_len=480)
    samples = load_samples(read_build(build_dir))
    feats = [encoder.encode(samples[i]) for i in (1, 3)]  # different lengths: padding is exercised
    batch = Collator(processor.tokenizer.pad_token_id, encoder.image_token_id)(feats)
    model = AutoModelForImageTextToText.from_pretrained(str(tiny_qwen3), dtype=torch.float32)
    with torch.no_grad():
        reference = model(**batch, use_cache=False).loss  # mean over every labelled token
    args = TrainingArguments(output_dir=str(tiny_qwen3.parent / "unused"), report_to="none", use_cpu=True)
    trainer = _make_trainer_class()(model=model, args=args)
    n_items = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    with torch.no_grad():
        ours = trainer.compute_loss(model, dict(batch), num_items_in_batch=n_items)
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-5), (float(ours), float(reference))


def test_pages_seen_again_come_from_the_cache_as_the_same_numbers(build_dir, tiny_qwen3):
    """A vtc set shows round r's pages again in every later round: the encoder keeps a page once it
    comes back (never one used once), up to its byte budget, and gives the processor's own values."""
    processor = load_processor(tiny_qwen3)
    samples = [s for s in load_samples(read_build(build_dir)) if s.images]
    uses: dict[str, int] = {}
    for s in samples:
        for path in s.images:
            uses[path] = uses.get(path, 0) + 1
    assert any(n > 1 for n in uses.values()) and any(n == 1 for n in uses.values())
    encoder, uncached = SampleEncoder(processor, 4096, CAP), SampleEncoder(processor, 4096, CAP)
    uncached.pixel_cache_bytes = 0
    for _ in range(2):
        for s in samples:
            reference, grids = encoder.preprocess(encoder.load_images(s))
            for enc in (encoder, uncached):
                got = enc.encode(s)
                assert torch.equal(got["pixel_values"], reference) and got["image_grid_thw"] == grids
        if _ == 0:  # after one pass: exactly the pages used more than once
            assert set(encoder._pixel_cache) == {p for p, n in uses.items() if n > 1}
    assert set(encoder._pixel_cache) == set(uses) and not uncached._pixel_cache
    assert encoder._pixel_bytes == sum(v.numel() * v.element_size() for v, _ in encoder._pixel_cache.values())


def test_length_grouped_batches_pad_less_and_are_seeded_by_the_epoch(build_dir, tiny_qwen3):
    from vtcr.train.trainer import LengthBatches

    encoder = SampleEncoder(load_processor(tiny_qwen3), 480)
    plan = encoder.plan(load_samples(read_build(build_dir)))
    lengths, batch = plan.lengths, 2
    assert len(lengths) == len(plan.kept) and len(set(lengths)) > batch

    def padding(order):
        chunks = [[lengths[i] for i in order[k : k + batch]] for k in range(0, len(order), batch)]
        return sum(max(c) * len(c) - sum(c) for c in chunks)

    sampler = LengthBatches(lengths, batch, seed=0)
    first = list(sampler)
    assert sorted(first) == list(range(len(lengths))) and list(sampler) == first  # a permutation, seeded
    sampler.set_epoch(1)
    assert sorted(list(sampler)) == sorted(first) and list(sampler) != first  # another order next epoch
    assert list(LengthBatches(lengths, batch, seed=1)) != first
    # transformers' rule: random mega-batches (here of 2 batches: a quarter of this small set), each
    # sorted by length
    grouped = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        grouped.append(padding(list(sampler)))
    randoms = [padding(torch.randperm(len(lengths), generator=torch.Generator().manual_seed(k)).tolist()) for k in range(20)]
    assert sum(grouped) < 0.8 * sum(randoms), (grouped, randoms)


def test_a_length_grouped_run_resumed_in_its_second_epoch_ends_with_the_same_weights(build_dir, tiny_qwen3, tmp_path):
    """The batch order of every epoch depends on the seed and the epoch alone, so a run resumed from a
    checkpoint of a later epoch trains on the batches the uninterrupted run did."""
    from safetensors.torch import load_file

    n = len(SampleEncoder(load_processor(tiny_qwen3), 480).plan(load_samples(read_build(build_dir))).kept)
    per_epoch = -(-n // 2)
    whole = tmp_path / "whole"
    cfg = config(build_dir, tiny_qwen3, whole, group_by_length=True, max_steps=per_epoch + 3, save_steps=per_epoch + 1,
                 save_total_limit=None)  # fmt: skip
    train(cfg)
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(whole / "checkpoints" / f"checkpoint-{per_epoch + 1}", resumed / "checkpoints" / f"checkpoint-{per_epoch + 1}")
    again = replace(cfg, out=str(resumed))
    (resumed / "train_config.json").write_text(again.to_json())
    result = train(again)
    assert result.resumed_from == f"checkpoint-{per_epoch + 1}" and result.log["epochs_done"] > 1
    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- training runs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("progress", [True, False], ids=["bar", "no-progress"])
def test_training_shows_one_bar_with_loss_and_lr_and_logs_steps_to_a_file(build_dir, tiny_qwen3, tmp_path, capsys, progress):
    """No raw `{'loss': ...}` dict reaches the terminal, bar or not; every logging step is a line of train_log.jsonl."""
    out = tmp_path / "run"
    argv = ["train", "--data", str(build_dir), "--model", str(tiny_qwen3), "--out", str(out), "--max-steps", "3",
            "--grad-accum", "1", "--batch-size", "2", "--cutoff-len", "480", "--lr", "1e-3", "--warmup-ratio", "0"]  # fmt: skip
    assert cli_main(argv + ([] if progress else ["--no-progress"])) == 0
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert "{'loss'" not in shown and "'grad_norm'" not in shown and "train_runtime" not in shown
    assert "Writing model shards" not in shown  # transformers' own save bars are hidden while training
    if progress:
        assert re.search(r"train: 100%.*3/3.*loss=[0-9.]+, lr=", shown), shown[-2000:]
    else:
        assert "train:" not in shown and "it/s" not in shown
    logged = [json.loads(line) for line in (out / STEP_LOG_FILE).read_text().splitlines()]
    steps = [e for e in logged if "loss" in e]
    assert [e["step"] for e in steps] == [1, 2, 3]
    assert all({"loss", "grad_norm", "learning_rate", "epoch"} <= set(e) for e in steps)
    assert logged[-1]["step"] == 3 and "train_loss" in logged[-1]  # the run's summary, last
    history = json.loads((out / "train_log.json").read_text())["loss_history"]
    assert [h["loss"] for h in history] == [e["loss"] for e in steps]


def test_step_log_trim_keeps_whole_lines_up_to_the_resumed_step(tmp_path):
    path = tmp_path / STEP_LOG_FILE
    path.write_text("".join(json.dumps({"step": k, "loss": 1.0 / k}) + "\n" for k in range(1, 6)) + '{"step": 6, "lo')
    trim_step_log(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    trim_step_log(tmp_path / "absent.jsonl", 3)  # nothing to trim: no file is created
    assert not (tmp_path / "absent.jsonl").exists()


def test_training_lowers_the_loss_and_the_checkpoint_loads_in_the_engine(build_dir, tiny_qwen3, tmp_path):
    out = tmp_path / "run"
    result = train(config(build_dir, tiny_qwen3, out, max_steps=8, lr=1e-2))
    log = json.loads((out / "train_log.json").read_text())
    losses = [h["loss"] for h in log["loss_history"]]
    assert result.global_step == 8 and len(losses) == 8
    assert sum(losses[-2:]) / 2 < 0.7 * sum(losses[:2]) / 2, losses  # the same few samples, seen repeatedly
    assert log["data"]["truncated"] > 0 and log["data"]["kept"] + log["data"]["dropped_prompt_too_long"] == log["data"]["samples"]
    assert log["timing"]["seconds_per_step"] > 0 and log["memory"]["peak_rss_bytes"] > 0
    assert (out / "loss.png").stat().st_size > 0
    saved = TrainConfig.from_json(out / "train_config.json")
    assert saved == TrainConfig.from_json(saved.to_json()) and saved.out == str(out.resolve()) and saved.max_steps == 8
    meta = json.loads((out / "vtcr.json").read_text())
    # the checkpoint records the whole render config of the data's pages (and its preset name)
    assert meta["render_config"] == json.loads((build_dir / "build.json").read_text())["render"]
    assert meta["render_preset"] == json.loads((build_dir / "build.json").read_text())["preset"]
    assert meta["max_image_pixels"] is None and meta["created_by"] == "vtcr train"
    # Vision tower frozen: its weights are bit-identical to the starting checkpoint's.
    from safetensors.torch import load_file

    before, after = load_file(tiny_qwen3 / "model.safetensors"), load_file(out / "model.safetensors")
    vision = [k for k in before if ".visual." in k]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert any(not torch.equal(before[k], after[k]) for k in before if "language_model.layers" in k)
    # The folder loads in the engine unchanged and reasons (random-ish weights: just a round).
    backend = TransformersBackend.from_pretrained(out, device="cpu")
    record = reason("What is 2+3?", backend, EngineConfig(max_rounds=1, round_tokens=4, temperature=0))
    assert record.rounds and record.rounds[0].generated_tokens >= 1


def test_vision_lr_scale_steps_the_vision_tower_that_many_times_further(build_dir, tiny_qwen3, tmp_path):
    """One AdamW step moves every weight by about lr (its first update is lr * sign(grad)), so the
    vision tower's mean change over the text model's is the scale."""
    from safetensors.torch import load_file

    out = tmp_path / "scaled"
    train(config(build_dir, tiny_qwen3, out, max_steps=1, lr=1e-3, freeze_vision=False, vision_lr_scale=8.0))
    before, after = load_file(tiny_qwen3 / "model.safetensors"), load_file(out / "model.safetensors")

    def mean_step(pick) -> float:
        deltas = [(after[k].float() - before[k].float()).abs().mean().item() for k in before if pick(k) and after[k].ndim == 2]
        return sum(deltas) / len(deltas)

    ratio = mean_step(lambda k: ".visual.blocks." in k) / mean_step(lambda k: "language_model.layers" in k)
    assert 5.0 < ratio < 10.0, ratio
    with pytest.raises(ValueError, match="vision_lr_scale needs a trained vision tower"):
        config(build_dir, tiny_qwen3, out, vision_lr_scale=8.0)  # frozen by default
    with pytest.raises(ValueError, match="vision_lr_scale must be a positive number, got 0"):
        config(build_dir, tiny_qwen3, out, freeze_vision=False, vision_lr_scale=0)


def test_lora_saves_and_reloads_and_image_size_parity(build_dir, tiny_qwen3, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "lora"
    train(config(build_dir, tiny_qwen3, out, max_steps=3, lora=True, lr=5e-2, max_image_pixels=CAP))
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert "language_model" in adapter["target_modules"] and "visual" not in adapter["target_modules"]
    lora_encoder = SampleEncoder(load_processor(out), cutoff_len=480)
    feats = lora_encoder.encode(load_samples(read_build(build_dir))[2])
    batch = Collator(0, lora_encoder.image_token_id)([feats])
    batch.pop("labels")
    base = AutoModelForImageTextToText.from_pretrained(str(tiny_qwen3), dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(**batch).logits
        reloaded = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
        adapter_logits = reloaded(**batch).logits
        merged_logits = AutoModelForImageTextToText.from_pretrained(str(out), dtype=torch.float32).eval()(**batch).logits
    assert not torch.allclose(base_logits, adapter_logits, atol=1e-3)  # the adapter learned something
    assert torch.allclose(adapter_logits, merged_logits, atol=1e-4)  # merged checkpoint == base + adapter

    # Image size parity: training (the collator, with the cap the checkpoint records) and inference
    # (the engine loading the saved folder) resize each page to the same grid -- the capped one.
    meta = json.loads((out / "vtcr.json").read_text())
    assert meta["max_image_pixels"] == CAP
    processor = load_processor(out)
    assert dict(processor.image_processor.size) == image_size_budget(processor, CAP)  # saved into the processor
    encoder = SampleEncoder(processor, cutoff_len=10**9, max_image_pixels=meta["max_image_pixels"])
    backend = TransformersBackend.from_pretrained(out, device="cpu")
    sample = next(s for s in load_samples(read_build(build_dir)) if len(s.images) >= 2)
    pages = encoder.load_images(sample)
    _, train_grids = encoder.preprocess(pages)
    _, infer_grids = backend._preprocess(pages)
    assert train_grids == infer_grids
    for page, (t, h, w) in zip(pages, train_grids):
        assert t * h * w // 4 == vision_tokens(page, "qwen3-vl", max_pixels=CAP) < vision_tokens(page, "qwen3-vl")
    collated = Collator(0, encoder.image_token_id)([encoder.encode(sample)])
    assert collated["image_grid_thw"].tolist() == [list(g) for g in infer_grids]


def test_interrupted_run_resumes_from_its_checkpoint(build_dir, tiny_qwen3, tmp_path):
    out = tmp_path / "resume"
    cmd = [sys.executable, "-m", "vtcr.cli", "train", "--data", str(build_dir), "--model", str(tiny_qwen3),
           "--out", str(out), "--max-steps", "6", "--save-steps", "2", "--lr", "2e-3", "--batch-size", "2",
           "--grad-accum", "1", "--warmup-ratio", "0", "--cutoff-len", "480", "--scheduler", "constant",
           "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while last_checkpoint(out / "checkpoints") is None:
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "train_log.json").exists()
    ckpt = last_checkpoint(out / "checkpoints")
    done = int(ckpt.name.split("-")[1])
    assert 2 <= done < 6
    # Different settings are refused, naming the setting.
    with pytest.raises(ValueError, match="lr"):
        train(TrainConfig.from_dict({**TrainConfig.from_json(out / "train_config.json").to_dict(), "lr": 1e-4}))
    result = train(TrainConfig.from_json(out / "train_config.json"))
    assert result.resumed_from == ckpt.name and result.global_step == 6
    steps = [h["step"] for h in result.log["loss_history"]]
    assert steps == list(range(1, 7))  # the killed run's history is kept, then continued
    logged = [json.loads(line) for line in (out / STEP_LOG_FILE).read_text().splitlines()]
    assert [e["step"] for e in logged if "loss" in e] == list(range(1, 7))  # each step once, across the kill
    with pytest.raises(ValueError, match="finished"):
        train(TrainConfig.from_json(out / "train_config.json"))


@pytest.mark.parametrize("arch", ["glm-4.1v", "qwen2.5-vl"])
def test_other_families_train_with_their_end_of_turn(build_dir, qwen3_tokenizer_dir, tmp_path, arch):
    model = init_model(arch, "tiny", qwen3_tokenizer_dir, tmp_path / arch, seed=0)
    processor = load_processor(model)
    sample = load_samples(read_build(build_dir))[0]
    enc = SampleEncoder(processor, cutoff_len=100_000).encode(sample)
    n_prompt = sum(1 for x in enc["labels"] if x == IGNORE_INDEX)
    end = {"glm-4.1v": "<|endoftext|>", "qwen2.5-vl": "<|im_end|>\n"}[arch]
    assert processor.tokenizer.decode(enc["input_ids"][n_prompt:]) == sample.messages[2]["content"][0]["text"] + end
    out = tmp_path / "run"
    result = train(config(build_dir, model, out, max_steps=1, batch_size=1, cutoff_len=300))
    assert result.global_step == 1 and json.loads((out / "vtcr.json").read_text())["arch"] == arch
    TransformersBackend.from_pretrained(out, device="cpu")


def test_standard_mode_trains_on_whole_traces(build_dir, tiny_qwen3, tmp_path):
    out = tmp_path / "standard"
    result = train(config(build_dir, tiny_qwen3, out, mode="standard", max_steps=1, batch_size=1, cutoff_len=256))
    data = result.log["data"]
    assert data["samples"] == 3 and data["truncated"] == 3 and data["max_length"] == 256


# --- bad input -----------------------------------------------------------------------------------------


def run_cli(args, capsys) -> tuple[int, str]:
    code = cli_main(args)
    return code, capsys.readouterr().err


def test_bad_inputs_give_clear_errors(build_dir, tiny_qwen3, tmp_path, capsys):
    base = ["train", "--model", str(tiny_qwen3), "--no-progress"]
    # Missing images are named.
    broken = tmp_path / "broken"
    shutil.copytree(build_dir, broken)
    gone = sorted((broken / "images").iterdir())[:2]
    for p in gone:
        p.unlink()
    code, err = run_cli([*base, "--data", str(broken), "--out", str(tmp_path / "o1")], capsys)
    assert code == 2 and "2 referenced image(s) missing" in err and all(p.name in err for p in gone)
    # Not a build folder.
    code, err = run_cli([*base, "--data", str(tmp_path), "--out", str(tmp_path / "o2")], capsys)
    assert code == 2 and "not a vtcr build folder" in err
    # A model folder without processor files.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_qwen3 / "config.json", bare / "config.json")
    code, err = run_cli(["train", "--data", str(build_dir), "--model", str(bare), "--out", str(tmp_path / "o3")], capsys)
    assert code == 2 and "no processor files" in err and "tokenizer" in err
    # An architecture the processor cannot handle.
    text_only = tmp_path / "text_only"
    shutil.copytree(tiny_qwen3, text_only)
    cfg = json.loads((text_only / "config.json").read_text())
    (text_only / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    code, err = run_cli(["train", "--data", str(build_dir), "--model", str(text_only), "--out", str(tmp_path / "o4")], capsys)
    assert code == 2 and "'llama'" in err and "not a supported VLM" in err
    # Every prompt longer than the cutoff.
    code, err = run_cli([*base, "--data", str(build_dir), "--out", str(tmp_path / "o5"), "--cutoff-len", "50"], capsys)
    assert code == 2 and "no sample fits cutoff_len 50" in err
    # A non-empty folder that is not a training run.
    code, err = run_cli([*base, "--data", str(build_dir), "--out", str(build_dir)], capsys)
    assert code == 2 and "holds no vtcr training run" in err
    for name in ("o1", "o2", "o3", "o4", "o5"):
        assert not (tmp_path / name).exists()  # nothing written before the inputs were checked


# --- LLaMA-Factory export ------------------------------------------------------------------------------


def llamafactory_pre_resize(img, image_max_pixels: int, image_min_pixels: int):
    """LLaMA-Factory's documented image pre-processing (mm_plugin `_preprocess_image`), re-stated here."""
    import math

    if img.width * img.height > image_max_pixels:
        f = math.sqrt(image_max_pixels / (img.width * img.height))
        img = img.resize((int(img.width * f), int(img.height * f)))
    if img.width * img.height < image_min_pixels:
        f = math.sqrt(image_min_pixels / (img.width * img.height))
        img = img.resize((int(img.width * f), int(img.height * f)))
    return img.convert("RGB")


@pytest.mark.parametrize("cap", [None, CAP])
def test_export_llamafactory_matches_inference_image_size(build_dir, tiny_qwen3, tmp_path, capsys, cap):
    import yaml

    out = tmp_path / "lf"
    args = ["export-llamafactory", "--data", str(build_dir), "--model", str(tiny_qwen3), "--out", str(out)]
    assert cli_main(args + ([] if cap is None else ["--max-image-pixels", str(cap)])) == 0
    cfg = yaml.safe_load((out / "vtcr_sft.yaml").read_text())
    assert cfg["template"] == "qwen3_vl_nothink" and cfg["finetuning_type"] == "full"
    assert cfg["freeze_vision_tower"] is True and cfg["freeze_multi_modal_projector"] is True
    assert (cfg["learning_rate"], cfg["lr_scheduler_type"], cfg["warmup_ratio"], cfg["num_train_epochs"]) == (1e-5, "cosine", 0.1, 1.0)
    assert (cfg["cutoff_len"], cfg["bf16"], cfg["per_device_train_batch_size"], cfg["gradient_accumulation_steps"]) == (32768, True, 1, 8)
    assert json.loads(Path(cfg["deepspeed"]).read_text())["zero_optimization"]["stage"] == 3
    info = json.loads((Path(cfg["dataset_dir"]) / "dataset_info.json").read_text())[cfg["dataset"]]
    assert (Path(cfg["dataset_dir"]) / info["file_name"]).is_file() and info["formatting"] == "sharegpt"
    exported = json.loads((out / "dataset_info.json").read_text())[cfg["dataset"]]
    assert Path(exported["file_name"]).is_absolute() and Path(exported["file_name"]).is_file()
    meta = json.loads((out / "vtcr.json").read_text())
    assert meta["max_image_pixels"] == cap and meta["render_preset"] == "dense"
    # Every page of the data: LLaMA-Factory's resize, then the processor it loads, gives the grid
    # the engine computes at inference for the same page and cap.
    lf_processor = load_processor(cfg["model_name_or_path"])
    backend = TransformersBackend(*_model_and_processor(tiny_qwen3), max_image_pixels=cap)
    from PIL import Image

    pages = [Image.open(p).convert("RGB") for p in sorted((build_dir / "images").iterdir())]
    lf_pages = [llamafactory_pre_resize(p, cfg["image_max_pixels"], cfg["image_min_pixels"]) for p in pages]
    lf_grids = lf_processor.image_processor(images=lf_pages, return_tensors="pt")["image_grid_thw"].tolist()
    assert [tuple(g) for g in lf_grids] == backend._preprocess(pages)[1]


def _model_and_processor(path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(path)), load_processor(path)


def test_a_custom_render_config_travels_from_the_build_to_the_checkpoint_and_the_engine(build_dir, tmp_path):
    """A build rendered with a custom Glyph JSON config records it whole; training records it in the
    checkpoint's vtcr.json, and the engine's backend renders with it (no preset name needed)."""
    from vtcr.models.checkpoint import ModelMeta, read_meta, write_meta
    from vtcr.render import preset
    from vtcr.train.data import BuildInfo
    from vtcr.train.trainer import recorded_render_config

    custom = preset("vtcr1").replace(font_size=7.0, line_height=8.0, margin_x=6.0)
    info = read_build(build_dir)
    custom_build = BuildInfo(info.path, {**info.settings, "preset": "my_pages.json", "render": custom.to_dict()})
    start = ModelMeta(arch="qwen3-vl").with_render("dense")
    cfg = TrainConfig(data=str(build_dir), model="m", out=str(tmp_path / "o"))
    recorded = recorded_render_config(cfg, custom_build, start)
    assert recorded == custom
    meta = start.with_render(recorded)
    assert meta.render_preset is None and meta.render_config == custom.to_dict()
    # explicit flags win; `standard` trains on no pages and keeps the starting model's
    path = tmp_path / "flag.json"
    custom.replace(font_size=6.5).to_json(path)
    assert recorded_render_config(replace(cfg, render_config=str(path)), custom_build, start).font_size == 6.5
    assert recorded_render_config(replace(cfg, render_preset="vtcr1"), custom_build, start) == preset("vtcr1")
    assert recorded_render_config(replace(cfg, mode="standard"), custom_build, start) == preset("dense")
    # the checkpoint's vtcr.json -> the backend the engine renders with
    folder = tmp_path / "ckpt"
    folder.mkdir()
    write_meta(folder, meta)
    assert read_meta(folder).render() == custom
