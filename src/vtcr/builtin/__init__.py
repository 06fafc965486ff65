"""vtcr's built-in model: a tiny Qwen3-VL trained by vtcr itself on a synthetic optical-memory task.

The task ("running sum"): the question names the numbers, ``Add: b7 d3 g9 p2``; the reasoning adds
them one per round, one fixed-width line each -- the item, the running sum so far, the new sum:

    b7 | 00+7=07         round 1 (sees only the question)
    d3 | 07+3=10         round 2 (sees round 1's page)
    g9 | 10+9=19         round 3 (sees the pages of rounds 1-2)
    p2 | 19+2=21</think>  round 4, then <answer>21</answer>

Every line is one segment (the real builder cuts it so: `segment_tokens` 16 holds one 13-token line,
never two), so each round after the first must take the state -- which item was added last, and
the sum so far -- from the last page image: the images are the model's only memory. In `no-memory`
mode the model sees the question alone every round, starts over, and never finishes; in `vtc`
mode it reads its page and goes on.

The recipe, end to end with vtcr's own parts: a byte-level tokenizer (bytes, a few word merges and
the family's control tokens: a small vocabulary, fast on a CPU) -> a tiny Qwen3-VL with random weights
(`vtcr.models`) -> traces -> the real builder (`vtcr.data.build_dataset`, dense preset) -> the
trainer (`vtcr.train.train`). `ensure_builtin_model()` runs it once, deterministically, and caches
the checkpoint under `$VTCR_CACHE` (default `~/.cache/vtcr`)/builtin/<recipe hash>/.
Use it with `builtin_engine_config()` (greedy, short rounds).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RECIPE_VERSION = 2  # bump when anything below changes what is trained
CACHE_ENV = "VTCR_CACHE"
DONE_FILE = "builtin.json"
QUESTION_PREFIX = "Add: "
_QUESTION = re.compile(r"^\s*Add:\s*([bdgpq][1-9](?:\s+[bdgpq][1-9]){0,4})\s*$")


@dataclass(frozen=True)
class BuiltinRecipe:
    """Everything that decides the built-in checkpoint (its hash names the cache folder)."""

    arch: str = "qwen3-vl"
    size: str = "tiny"
    seed: int = 0
    min_terms: int = 3
    max_terms: int = 5
    problems: int = 600
    segment_tokens: int = 16
    preset: str = "dense"
    lr: float = 1e-3
    epochs: float = 10.0
    batch_size: int = 8
    warmup_ratio: float = 0.05
    cutoff_len: int = 1024
    workers: int = 1  # a DataLoader process decodes and resizes pages while the model trains
    # Pages are single short lines; the cap keeps them at 40 vision tokens (the family's minimum
    # area would blow them up to 80). Training and inference use it alike (vtcr.json).
    max_image_pixels: int = 32768

    def __post_init__(self) -> None:
        if not 2 <= self.min_terms <= self.max_terms <= len(LETTERS):
            raise ValueError(f"terms must satisfy 2 <= min_terms <= max_terms <= {len(LETTERS)} (one item letter each)")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "version": RECIPE_VERSION}

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


# --- the task -------------------------------------------------------------------------------------


# Item names: letters as wide as a digit in DejaVu Sans (635 vs 636 units); with the bar (which
# reaches above every ascender and below every descender) every state line of every problem renders
# to the same page size, so each glyph of the sum lands on the same patches.
LETTERS = "bdgpq"


def question(terms: list[int]) -> str:
    return QUESTION_PREFIX + " ".join(f"{LETTERS[i]}{t}" for i, t in enumerate(terms))


def parse_question(text: str) -> list[int] | None:
    """The numbers of a built-in task question ("Add: b7 d3 g9 p2"), or None for any other text."""
    m = _QUESTION.match(text)
    if not m:
        return None
    items = m.group(1).split()
    if [item[0] for item in items] != list(LETTERS[: len(items)]):
        return None
    return [int(item[1]) for item in items]


def state_lines(terms: list[int]) -> list[str]:
    """The reasoning, one fixed-width line per term: item, sum so far + term = new sum."""
    lines, total = [], 0
    for i, t in enumerate(terms):
        lines.append(f"{LETTERS[i]}{t} | {total:02d}+{t}={total + t:02d}\n")
        total += t
    return lines


def trace(terms: list[int]) -> str:
    """The whole generation, in the `...</think>` form the builder reads (no opening tag: round
    pages then hold nothing but state lines)."""
    return "".join(state_lines(terms)) + "</think>"


def random_terms(rng: random.Random, recipe: BuiltinRecipe) -> list[int]:
    return [rng.randint(1, 9) for _ in range(rng.randint(recipe.min_terms, recipe.max_terms))]


def problems(n: int, seed: int, recipe: BuiltinRecipe | None = None) -> list[dict[str, Any]]:
    """`n` task problems (id, question, trace, answer), the same for the same seed."""
    recipe = recipe or BuiltinRecipe()
    rng = random.Random(seed)
    out = []
    for i in range(n):
        terms = random_terms(rng, recipe)
        out.append({"id": f"add-{seed}-{i}", "question": question(terms), "trace": trace(terms),
                    "answer": str(sum(terms))})  # fmt: skip
    return out


def heldout_questions(n: int = 20, seed: int = 10_000, recipe: BuiltinRecipe | None = None) -> list[tuple[str, str]]:
    """`n` distinct (question, answer) pairs that the recipe's training set does not contain."""
    recipe = recipe or BuiltinRecipe()
    seen = {p["question"] for p in problems(recipe.problems, recipe.seed, recipe)}
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    while len(out) < n:
        terms = random_terms(rng, recipe)
        q = question(terms)
        if q not in seen:
            seen.add(q)
            out.append((q, str(sum(terms))))
    return out


def builtin_engine_config(mode: str = "vtc", **changes: Any):
    """The engine settings the built-in model is meant for: greedy, rounds of at most 48 tokens."""
    from vtcr.engine import EngineConfig

    return EngineConfig(mode=mode, max_rounds=8, round_tokens=48, temperature=0.0, **changes)


# --- the model ------------------------------------------------------------------------------------


def task_tokenizer(path: Path) -> Path:
    """The built-in model's tokenizer, saved as `path` (tokenizer.json): one token per byte, except
    that runs of letters may merge into words (learned on the system prompt and the chat roles), so
    the long optical-memory system prompt costs ~60 tokens instead of ~190. Digits, spaces and
    punctuation stay one token each, so every state line costs exactly its length in tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from vtcr.prompts import SYSTEM_PROMPT

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex("[^A-Za-z]"), behavior="isolated"),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, min_frequency=1, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([SYSTEM_PROMPT, "system user assistant Add answer think"], trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def init_builtin_model(recipe: BuiltinRecipe, tokenizer_file: Path, out: Path) -> Path:
    """A random-weight checkpoint of `recipe.arch`/`recipe.size` whose vocabulary is the tokenizer's
    own (rounded up to 64) instead of the family's 150k: the same architecture, a tiny embedding."""
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig, PreTrainedTokenizerFast

    from vtcr.models import ModelMeta, build_config, make_processor, prepare_tokenizer, save_checkpoint

    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file))
    ids = prepare_tokenizer(tok, recipe.arch, published_vocab_size=1)  # 1: always the tokenizer's size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = AutoModelForImageTextToText.from_config(build_config(recipe.arch, recipe.size, ids), dtype=torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=list(ids.stop), pad_token_id=ids.pad, bos_token_id=ids.bos)
    meta = ModelMeta(arch=recipe.arch, size=recipe.size, render_preset=recipe.preset, created_by="vtcr builtin (init)",
                     seed=recipe.seed)  # fmt: skip
    return save_checkpoint(model.eval(), make_processor(recipe.arch, tok), out, meta)


def build_builtin_data(recipe: BuiltinRecipe, model_dir: Path, out: Path, progress: bool = False):
    """The training set, made by the real builder from the task's traces (the model's tokenizer)."""
    from vtcr.data import BuildConfig, SourceConfig, build_dataset

    rows = [{"id": p["id"], "problem": p["question"], "trace": p["trace"], "answer": p["answer"]}
            for p in problems(recipe.problems, recipe.seed, recipe)]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    source = out.parent / "builtin_traces.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = BuildConfig(
        SourceConfig(str(source)), segment_tokens=recipe.segment_tokens, tokenizer=str(model_dir),
        preset=recipe.preset, families=(recipe.arch,), dataset_name="vtcr-builtin",
    )  # fmt: skip
    return build_dataset(config, out, progress=progress, plots=False)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vtcr"


def builtin_model_dir(cache_dir: str | os.PathLike | None = None, recipe: BuiltinRecipe | None = None) -> Path:
    """Where the built-in checkpoint of `recipe` lives (whether or not it is trained yet)."""
    recipe = recipe or BuiltinRecipe()
    return cache_root(cache_dir) / "builtin" / f"{recipe.arch}-{recipe.size}-{recipe.key()}"


@contextmanager
def _lock(path: Path):
    """One trainer per cache folder at a time; others wait, then find the finished model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_builtin_model(
    cache_dir: str | os.PathLike | None = None,
    *,
    recipe: BuiltinRecipe | None = None,
    progress: bool = False,
    force: bool = False,
) -> Path:
    """The built-in checkpoint folder, trained now (deterministically; ~9 min on a 2-core CPU)
    unless already cached. The folder is a normal vtcr checkpoint: pass it to `vtcr reason --model`.
    """
    recipe = recipe or BuiltinRecipe()
    target = builtin_model_dir(cache_dir, recipe)
    with _lock(target.with_name(target.name + ".lock")):
        if force and target.exists():
            shutil.rmtree(target)
        if (target / DONE_FILE).is_file():
            return target
        work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.work-"))
        try:
            started = time.perf_counter()
            init = init_builtin_model(recipe, task_tokenizer(work / "tokenizer" / "tokenizer.json"), work / "init")
            report = build_builtin_data(recipe, init, work / "data", progress=progress)
            result = train_builtin(recipe, init, work / "data", work / "model", progress=progress)
            info = {
                "recipe": recipe.to_dict(),
                "samples": report.stats["samples"],
                "problems": report.stats["problems"],
                "train_seconds": result.log["timing"]["train_seconds"],
                "total_seconds": round(time.perf_counter() - started, 3),
                "final_train_loss": result.log["final_train_loss"],
                "global_step": result.global_step,
            }
            model = work / "model"
            shutil.rmtree(model / "checkpoints", ignore_errors=True)  # the cache keeps the model only
            (model / DONE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            if target.exists():
                shutil.rmtree(target)
            os.replace(model, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def train_builtin(recipe: BuiltinRecipe, model_dir: Path, data_dir: Path, out: Path, progress: bool = False):
    from vtcr.train import TrainConfig, train

    config = TrainConfig(
        data=str(data_dir), model=str(model_dir), out=str(out), lr=recipe.lr, epochs=recipe.epochs,
        batch_size=recipe.batch_size, grad_accum=1, warmup_ratio=recipe.warmup_ratio, cutoff_len=recipe.cutoff_len,
        seed=recipe.seed, save_steps=10**6, save_total_limit=1, logging_steps=10, progress=progress, workers=recipe.workers,
        freeze_vision=False,  # the vision tower starts random: it must learn to read the pages
        max_image_pixels=recipe.max_image_pixels,
    )  # fmt: skip
    return train(config)


def answered_correctly(record, gold: str) -> bool:
    """A run of the task is correct when it finished with exactly the gold sum."""
    return record.finished and (record.answer or "").strip() == gold


def evaluate_builtin(
    model_dir: str | os.PathLike, questions: list[tuple[str, str]] | None = None, modes: tuple[str, ...] = ("vtc", "no-memory")
) -> dict[str, Any]:
    """Accuracy of the model per engine mode on held-out task questions (greedy)."""
    from vtcr.engine import TransformersBackend, reason_many

    questions = questions or heldout_questions()
    backend = TransformersBackend.from_pretrained(model_dir, device="cpu")
    out: dict[str, Any] = {"questions": len(questions)}
    for mode in modes:
        started = time.perf_counter()
        records = reason_many([q for q, _ in questions], backend, builtin_engine_config(mode))
        correct = sum(answered_correctly(r, a) for r, (_, a) in zip(records, questions))
        out[mode] = {
            "accuracy": correct / len(questions),
            "finished": sum(r.finished for r in records) / len(questions),
            "mean_rounds": sum(len(r.rounds) for r in records) / len(questions),
            "seconds": round(time.perf_counter() - started, 3),
        }
    return out


__all__ = [
    "BuiltinRecipe", "answered_correctly", "builtin_engine_config", "builtin_model_dir", "ensure_builtin_model", "evaluate_builtin",
    "heldout_questions", "parse_question", "problems", "question", "state_lines", "trace",
]  # fmt: skip
