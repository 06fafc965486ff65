"""The recipe of the built-in models, and `rebuild`: vtcr's own builder and trainer, end to end.

tokenizer -> tiny Qwen3-VL with random weights (`vtcr.models`) -> task traces
(`vtcr.data.synthetic`) -> the real builder (`vtcr.data.build_dataset`, the built-in page layout)
-> the trainer (`vtcr.train.train`) twice from the same initial weights, on the same problems with
the same steps and supervised tokens a step: ``vtc`` (optical-memory samples) and ``standard``
(whole traces).

`rebuild` works in a work folder next to the target (`.rebuild-work`), one finished stage at a time
(init, data, each model, each with its own marker), under an fcntl lock; a killed rebuild resumes
from the last finished stage (the trainer resumes from its last checkpoint). It publishes the two
models and a manifest (sha256 of every file) with one rename, then removes the work folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vtcr._cpu import usable_cores
from vtcr.data.synthetic import LINES_PER_SEGMENT, TRAIN_LENGTHS, TRAIN_PROBLEMS, TRAIN_SEED, Problem, problems

RECIPE_VERSION = 7  # bump when anything below changes what is trained
MODES_TRAINED = ("vtc", "standard")
MANIFEST_FILE = "manifest.json"
LOCK_NAME = ".rebuild.lock"
WORK_NAME = ".rebuild-work"
LINE_TOKENS = len(Problem(0, 1, 0, 1).lines()[0])  # one token per character
MIX_TARGETS = ("state", "line")  # what a mixed reading sample answers (BuiltinRecipe.vtc_reading_mix_target)


TOKEN_PX = 32  # Qwen3-VL: 16-px patches merged 2x2 into one vision token
PAGE_SIZE = (320, 192)  # 10 x 6 vision tokens: one token row a line
STATE_COLUMNS = (7, 8, 9)  # the token columns that hold a line's state digits, one digit each


def builtin_render_config():
    """The built-in models' pages: 6 task lines of DejaVu Sans 12 px on a 320x192 page, which the
    Qwen3-VL processor keeps as it is (multiples of 32 px): 60 vision tokens a page (10 columns x 6
    rows of 32x32 px). Each line takes 30 px, so line k's ink lies in token row k; the spaces a
    line writes before its state's digits (`vtcr.data.synthetic.STATE_GAPS`) put each of those
    three digits alone in token columns 7, 8 and 9 of its row. So what a round must read -- the
    state that ends the page's last line -- is three tokens of the bottom row, each holding one
    digit and nothing else, on every page (tests/test_builtin.py checks it on rendered pages)."""
    from vtcr.render import RenderConfig

    return RenderConfig(
        page_size=(float(PAGE_SIZE[0]), float(PAGE_SIZE[1])), dpi=72, margin_x=2.0, margin_y=0.0, left_indent=5.0,
        font_size=12.0, line_height=30.0, alignment="LEFT", newline_markup="<br/>", name="builtin",
    )  # fmt: skip


PAGE_PIXELS = PAGE_SIZE[0] * PAGE_SIZE[1]


def state_tokens(lines: int = LINES_PER_SEGMENT) -> list[int]:
    """Indices (in a page's row-major vision tokens) of the tokens holding the state digits of
    each of a full page's `lines` lines, line by line, digit by digit."""
    cols = PAGE_SIZE[0] // TOKEN_PX
    return [row * cols + col for row in range(lines) for col in STATE_COLUMNS]


@dataclass(frozen=True)
class BuiltinRecipe:
    """Everything that decides the built-in checkpoints (recorded in the manifest)."""

    arch: str = "qwen3-vl"
    size: str = "tiny"
    seed: int = TRAIN_SEED  # the training problems (held-out sets exclude seed 0's); by default also model_seed
    problems: int = TRAIN_PROBLEMS
    # Seeds what is random in the models' own training -- the random-weight start, the alignment and
    # reading stages' pages, every stage's data order -- and nothing of the task: another model_seed
    # trains on the same problems, so the held-out set stays held out. None: `seed` (as shipped).
    # It is how one recipe is measured over several seeds (MODEL_CARD.md).
    model_seed: int | None = None
    lengths: tuple[int, int] = TRAIN_LENGTHS
    lines_per_segment: int = LINES_PER_SEGMENT
    # The text model's RoPE base. Qwen3-VL's own (5e6) suits head_dim 128 and 256k contexts; at
    # the tiny head_dim 32 it leaves almost every frequency pair still over a few hundred positions,
    # so a page's rows and columns, and one page from the next, barely differ to attention.
    rope_theta: float = 10000.0
    # The alignment stage (shared, first): the vision tower alone (and its merger) learns to output,
    # at every vision token that holds one state digit, that digit's input embedding -- as a VLM's
    # projector is aligned to its language model before instruction tuning. Fresh random pages
    # every step. Without it the text model never learns to use the random tower's tokens
    # (MODEL_CARD.md: reading loss at chance, and a vtc model that ignores its pages).
    align_steps: int = 1500
    align_batch_size: int = 12
    align_lr: float = 3e-3
    # The reading stage (shared, after the alignment, tower frozen): the model learns to write out
    # the state that ends the last of 1-3 pages of task-shaped lines whose digits are all random --
    # fresh pages every sample, never a training trace -- as the paper's models start from a VLM
    # that already reads. 0: no reading stage.
    reading_steps: int = 1500
    reading_batch_size: int = 12
    reading_lr: float = 2e-3
    reading_pages: tuple[int, int] = (1, 3)
    reading_check_pages: int = 48  # unseen pages the rebuild writes out after the reading stage (manifest)
    # Reading samples (fresh pages, another seed) mixed into the vtc model's last fine-tuning set
    # (stage 2's when there is one, else stage 1's): fitted on its 693 rounds alone, the vtc model
    # misreads the state copied from pages of states no training trace reaches (held-out problems
    # longer than the trained ones); mixed in, reading on random states keeps being trained while
    # the task is learned. 0 = none (v6).
    vtc_reading_mix: int = 700
    # Pages per mixed reading sample (None: `reading_pages`). A round of a 48-step problem reads
    # the last of 7 pages, more than the reading stage's 3 or any trained round's 5: with 1-3 pages
    # the mixed model still misread in round 7 (MODEL_CARD.md).
    vtc_reading_mix_pages: tuple[int, int] | None = (1, 7)
    # What a mixed reading sample answers: "state" (the three digits, as the reading stage) or
    # "line" (the whole line that follows the page: the state copied, then the step computed from
    # it -- arithmetic on states of every kind, which the 216 problems' ~300 states do not cover).
    vtc_reading_mix_target: str = "state"
    # The standard model's counterpart of a "line" reading mix: drills of 1-6 random task lines
    # given as text -> the line that follows the last one, mixed into its fine-tuning set, so that
    # both models see arithmetic on states of every kind. 0 = none (the shipped recipe).
    standard_line_mix: int = 0
    # Without an alignment stage the tower starts random and learns at this multiple of the text
    # model's rate.
    vision_lr_scale: float = 5.0
    # After the alignment (or reading) stage the vision tower stays as it is in every later stage:
    # the vtc model cannot re-learn its training pages by heart, only use what it reads.
    freeze_vision_after_reading: bool = True
    lr: float = 2e-3
    max_steps: int = 2500
    batch_size: int = 4  # the standard model's: 4 whole traces a step (~820 supervised tokens each)
    # The vtc model's: the same supervised-token budget a step as standard's (a vtc sample is one
    # round, ~250 supervised tokens), so that both models see the same tokens in the same steps.
    vtc_batch_size: int = 12
    warmup_ratio: float = 0.02
    cutoff_len: int = 2048  # the longest trained trace (32 lines) is ~1,600 tokens
    save_steps: int = 250
    # The fine-tunings of the models named here train on batches of similar length
    # (`TrainConfig.group_by_length`). Off in the shipped recipe: grouped vtc batches are batches of
    # one round index (its length is fixed mostly by the page count) and that vtc model read worse
    # (10/40 held-out answers instead of 19/40). Grouping standard alone (with `widen_at_step` 1100)
    # was measured: rebuild 53 minutes, standard 14/40, but that rebuild's vtc 6/40 (MODEL_CARD.md).
    grouped_modes: tuple[str, ...] = ()
    # Side by side, from step `widen_at_step` on the models in `widen_modes` wait until every other
    # model has finished and then take all the cores (a vtc step is 1.56x faster on two threads than
    # on one). The step is fixed, not the moment the other ends, so the result does not depend on
    # timing. 0: never (the shipped recipe: one thread each throughout).
    widen_modes: tuple[str, ...] = ("vtc",)
    widen_at_step: int = 0

    # An optional stage 2: the same trainer again from stage 1's weights (as published, float16; a
    # second cosine cycle, another data order) for the modes named (the vtc model's set adds
    # `vtc_reading_mix` reading samples). The shipped recipe has none: both models get the same
    # single schedule (a stage 2 of 1,000 steps at lr 1e-3 with 4,000 reading samples read better
    # but computed worse: MODEL_CARD.md).
    stage2_steps: int = 0
    stage2_lr: float = 2e-3
    stage2_modes: tuple[str, ...] = ()
    modes: tuple[str, ...] = field(default=MODES_TRAINED)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", tuple(self.lengths))
        object.__setattr__(self, "reading_pages", tuple(self.reading_pages))
        if self.vtc_reading_mix_pages is not None:
            object.__setattr__(self, "vtc_reading_mix_pages", tuple(self.vtc_reading_mix_pages))
        for name in ("reading_pages", "vtc_reading_mix_pages"):
            value = getattr(self, name)
            if value is not None and not (len(value) == 2 and all(isinstance(v, int) for v in value)
                                          and 1 <= value[0] <= value[1]):  # fmt: skip
                raise ValueError(f"{name} {value!r}: expected (min, max) with 1 <= min <= max")
        if self.vtc_reading_mix_target not in MIX_TARGETS:
            raise ValueError(f"recipe vtc_reading_mix_target {self.vtc_reading_mix_target!r}: choose from {', '.join(MIX_TARGETS)}")
        counts = {"max_steps": 1, "problems": 1, "align_steps": 0, "reading_steps": 0, "stage2_steps": 0, "vtc_reading_mix": 0, "standard_line_mix": 0,
                  "widen_at_step": 0}
        for name, least in counts.items():  # a step or sample count the stages would silently skip or mistrain
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"recipe {name} {value!r}: expected an integer >= {least}")
        if self.model_seed is not None and (isinstance(self.model_seed, bool) or not isinstance(self.model_seed, int)
                                            or self.model_seed < 0):  # fmt: skip
            raise ValueError(f"recipe model_seed {self.model_seed!r}: expected an integer >= 0 (or none: the recipe's seed)")
        object.__setattr__(self, "modes", tuple(self.modes))
        object.__setattr__(self, "stage2_modes", tuple(self.stage2_modes))
        unknown = [m for m in self.modes if m not in MODES_TRAINED]
        if unknown or not self.modes:
            raise ValueError(f"recipe modes {self.modes!r}: choose from {', '.join(MODES_TRAINED)}")
        for name in ("grouped_modes", "widen_modes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            unknown = [m for m in getattr(self, name) if m not in MODES_TRAINED]
            if unknown:
                raise ValueError(f"recipe {name} {getattr(self, name)!r}: choose from {', '.join(MODES_TRAINED)}")

    @property
    def weights_seed(self) -> int:
        return self.seed if self.model_seed is None else self.model_seed

    def batch_for(self, mode: str) -> int:
        """Samples per step of the `mode` model (the same supervised tokens a step for both)."""
        return self.vtc_batch_size if mode == "vtc" else self.batch_size

    @property
    def segment_tokens(self) -> int:
        return self.lines_per_segment * LINE_TOKENS

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["lengths"] = list(self.lengths)
        out["reading_pages"] = list(self.reading_pages)
        out["vtc_reading_mix_pages"] = None if self.vtc_reading_mix_pages is None else list(self.vtc_reading_mix_pages)
        out["modes"] = list(self.modes)
        out["stage2_modes"] = list(self.stage2_modes)
        out["grouped_modes"] = list(self.grouped_modes)
        out["widen_modes"] = list(self.widen_modes)
        out["version"] = RECIPE_VERSION
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuiltinRecipe:
        data = {k: v for k, v in data.items() if k != "version"}
        return cls(**data)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


# --- the stages -----------------------------------------------------------------------------------


def task_tokenizer(path: Path) -> Path:
    """The built-in tokenizer (tokenizer.json): one token per byte, except that a run of letters,
    with the space before it, merges into a word learned on the system prompt, the question
    template and the chat roles (as real BPE vocabularies hold " word" tokens). Digits, other
    spaces and punctuation stay one token each: a task line costs its length in tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from vtcr.prompts import SYSTEM_PROMPT

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(" ?[A-Za-z]+|[^A-Za-z]"), behavior="isolated"),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, min_frequency=1, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [SYSTEM_PROMPT, "system user assistant answer think", " Repeat until Answer"]
    tok.train_from_iterator(corpus, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def init_builtin_model(recipe: BuiltinRecipe, tokenizer_file: Path, out: Path) -> Path:
    """Random-weight `recipe.arch`/`recipe.size` whose vocabulary is the tokenizer's own (rounded
    up to 64) instead of the family's 150k: the same architecture, a tiny embedding."""
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig, PreTrainedTokenizerFast

    from vtcr.models import ModelMeta, build_config, make_processor, prepare_tokenizer, save_checkpoint

    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file))
    ids = prepare_tokenizer(tok, recipe.arch, published_vocab_size=1)  # 1: always the tokenizer's size
    config = build_config(recipe.arch, recipe.size, ids)
    text = getattr(config, "text_config", config)
    text.rope_parameters = {**text.rope_parameters, "rope_theta": float(recipe.rope_theta)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.weights_seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=list(ids.stop), pad_token_id=ids.pad, bos_token_id=ids.bos)
    meta = ModelMeta(arch=recipe.arch, size=recipe.size, render_preset=None,
                     render_config=builtin_render_config().to_dict(), created_by="vtcr builtin (init)",
                     max_image_pixels=PAGE_PIXELS, seed=recipe.weights_seed)  # fmt: skip
    return save_checkpoint(model.eval(), make_processor(recipe.arch, tok), out, meta, overwrite=True)


def build_builtin_data(recipe: BuiltinRecipe, model_dir: Path, out: Path, progress: bool = False):
    """The training set, made by the real builder from the task's traces (the model's tokenizer)."""
    from vtcr.data import BuildConfig, SourceConfig, build_dataset

    rows = [{"id": p["id"], "problem": p["question"], "trace": p["trace"], "answer": p["answer"]}
            for p in problems(recipe.problems, recipe.seed, recipe.lengths)]  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    source = out.parent / "builtin_traces.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    render_file = out.parent / "builtin_render.json"
    render_file.write_text(json.dumps(builtin_render_config().to_dict(), indent=2) + "\n", encoding="utf-8")
    config = BuildConfig(
        SourceConfig(str(source)), segment_tokens=recipe.segment_tokens, tokenizer=str(model_dir),
        preset=str(render_file), families=(recipe.arch,), dataset_name="vtcr-builtin", min_segments=1,
    )  # fmt: skip
    return build_dataset(config, out, progress=progress, plots=False)


# --- the alignment and reading stages ----------------------------------------------------------------

READING_QUESTION = "Write out the state that ends the last page."
READING_LINE_QUESTION = "Write the line that follows the last page."
TEXT_LINE_QUESTION = "Write the line that follows these lines."
READING_SAMPLES_FILE = "samples.jsonl"
ALIGNMENT_FILE = "alignment.json"


def reading_page(renderer: Any, rng: random.Random) -> tuple[Any, list[str]]:
    """One page of `LINES_PER_SEGMENT` task-shaped lines with random digits (the built-in layout)
    and each line's final state (three digits)."""
    from vtcr.data.synthetic import line_state, reading_lines

    lines = reading_lines(rng, LINES_PER_SEGMENT)
    return render_reading_page(renderer, "".join(lines)), [line_state(line) for line in lines]


def render_reading_page(renderer: Any, text: str) -> Any:
    pages = list(renderer.iter_pages(text))
    if len(pages) != 1:  # the layout is the training pages' own: six task lines fill exactly one page
        raise RuntimeError(f"a reading page of {LINES_PER_SEGMENT} lines rendered to {len(pages)} pages")
    return pages[0].convert("RGB")


def align_vision(start: Path, out: Path, steps: int, lr: float, batch: int, seed: int, *, threads: int | None = None,
                 progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """The alignment stage: `start` -> `out` with only the vision tower (and merger) trained, so
    that each vision token holding one state digit (`state_tokens`) comes out as that digit's
    input embedding (squared error relative to the embeddings' own norm; AdamW, 20 warm-up steps,
    cosine decay; `batch` fresh random pages a step). The text model and embeddings stay as they
    are. Returns the last figures (loss, and the share of those tokens nearest their digit's
    embedding), also written to `out/alignment.json`."""
    import math

    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForImageTextToText

    from vtcr.models.processor import image_size_budget, load_processor
    from vtcr.render import get_renderer

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(start, dtype=torch.float32)
    processor = load_processor(start)
    size = image_size_budget(processor, PAGE_PIXELS)
    digit_ids = [processor.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    table = model.get_input_embeddings().weight.detach()[digit_ids]  # (10, hidden)
    tower = model.model.visual
    model.requires_grad_(False)
    tower.requires_grad_(True)
    opt = torch.optim.AdamW(tower.parameters(), lr=lr, weight_decay=0.0)
    renderer, rng = get_renderer(builtin_render_config()), random.Random(f"vtcr-builtin-align-{seed}")
    cells = state_tokens()
    figures: dict[str, Any] = {}
    started = time.perf_counter()
    for step in tqdm(range(1, steps + 1), desc="alignment", unit="step", disable=not progress):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
        images, labels = [], []
        for _ in range(batch):
            image, states = reading_page(renderer, rng)
            images.append(image)
            labels.append([int(c) for state in states for c in state])
        pixels = processor.image_processor(images=images, return_tensors="pt", size=size)
        feats = tower(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"], return_dict=True).pooler_output
        feats = feats.view(batch, -1, feats.shape[-1])[:, cells]  # (batch, 18, hidden)
        target = table[torch.tensor(labels)]
        loss = ((feats - target) ** 2).sum(-1).mean() / (target**2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps:
            nearest = torch.cdist(feats.detach().flatten(0, 1), table).argmin(-1)
            right = (nearest == torch.tensor(labels).flatten()).float().mean().item()
            figures = {"step": step, "loss": round(loss.item(), 5), "nearest_embedding_right": round(right, 4),
                       "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(start, out)  # processor, tokenizer, vtcr.json
    model.save_pretrained(out)
    (out / ALIGNMENT_FILE).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return figures


def _reading_texts(rng: random.Random, pages: tuple[int, int]) -> list[str]:
    """The text of each page of one reading sample (1-3 pages of random task lines)."""
    from vtcr.data.synthetic import reading_lines

    return ["".join(reading_lines(rng, LINES_PER_SEGMENT)) for _ in range(rng.randint(*pages))]


def _line_after(state: str) -> str:
    """The task line a round writes from `state` (three digits): one step of `Problem.lines`."""
    return Problem(*(int(d) for d in state), 1).lines()[0]


def _reading_messages(system_prompt: str, texts: list[str], target: str = "state") -> tuple[dict[str, Any], ...]:
    """The messages of one reading sample: `target` "state" answers the three digits that end the
    last page; "line" the line a round would write next (`Problem.lines` of that state, one step)."""
    from vtcr.data.synthetic import line_state
    from vtcr.prompts import user_parts

    last_state = line_state(texts[-1].splitlines()[-1])
    if target == "line":
        question, answer = READING_LINE_QUESTION, _line_after(last_state)
    else:
        question, answer = READING_QUESTION, last_state + "\n"
    return (
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {"role": "user", "content": user_parts(question, len(texts))},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    )


def reading_sample(rng: random.Random, renderer: Any, folder: Path, name: str, system_prompt: str,
                   pages: tuple[int, int]):  # fmt: skip
    """One reading sample: the system prompt, READING_QUESTION with 1-3 pages of random
    task-shaped lines (saved under `folder/images`), and the state that ends the last page (its
    three digits, as a round of the task copies them first) as the answer. (Asking for all six
    states of the last page, bottom line first, was measured worse: reading loss still near
    chance after 1,500 steps, 0/48 unseen states right: MODEL_CARD.md.)"""
    from vtcr.render import save_png
    from vtcr.train.data import Sample

    texts = _reading_texts(rng, pages)
    paths = [str(save_png(render_reading_page(renderer, text), folder / "images" / f"{name}-{j}.png"))
             for j, text in enumerate(texts)]  # fmt: skip
    return Sample(id=name, messages=_reading_messages(system_prompt, texts), images=tuple(paths))


def line_drills(recipe: BuiltinRecipe, n: int) -> list[Any]:
    """`n` text drills for the standard model (`BuiltinRecipe.standard_line_mix`): 1-6 random task
    lines in the user turn (`reading_lines`), the line that follows the last one as the answer (as
    a "line" reading sample answers after its pages); no system prompt, as the standard samples.
    Seeded by the recipe's model seed."""
    from vtcr.data.synthetic import line_state, reading_lines
    from vtcr.train.data import Sample

    rng = random.Random(f"vtcr-builtin-line-drill-{recipe.weights_seed}")
    out = []
    for i in range(n):
        text = "".join(reading_lines(rng, rng.randint(1, LINES_PER_SEGMENT)))
        user = {"role": "user", "content": [{"type": "text", "text": f"{TEXT_LINE_QUESTION}\n{text}"}]}
        answer = {"role": "assistant", "content": [{"type": "text", "text": _line_after(line_state(text.splitlines()[-1]))}]}
        out.append(Sample(id=f"drill-{i:06d}", messages=(user, answer)))
    return out


def _render_reading_pages(jobs: list[tuple[str, str]]) -> int:
    """(text, png path) -> the page saved there; one worker's share of `build_reading_samples`."""
    from vtcr.render import get_renderer, save_png

    renderer = get_renderer(builtin_render_config())
    for text, path in jobs:
        save_png(render_reading_page(renderer, text), path)
    return len(jobs)


def build_reading_samples(recipe: BuiltinRecipe, folder: Path, system_prompt: str, progress: bool = False,
                          n: int | None = None, tag: str = "reading", processes: int | None = None,
                          pages: tuple[int, int] | None = None, target: str = "state") -> Path:  # fmt: skip
    """The reading stage's samples (`n`, default one per sample the stage trains on: every page is
    new; `pages` per sample, default the recipe's `reading_pages`; `target` as `_reading_messages`),
    seeded by the recipe and `tag`, written to `folder` (images/ and samples.jsonl). Returns
    the samples file. The lines are drawn in order from one seeded stream, then the pages rendered
    on `processes` (default: the usable cores): the same samples for any number of processes."""
    import multiprocessing

    from tqdm.auto import tqdm

    rng = random.Random(f"vtcr-builtin-{tag}-{recipe.weights_seed}")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows, jobs = [], []
    n = recipe.reading_steps * recipe.reading_batch_size if n is None else n
    for i in range(n):
        name, texts = f"read-{i:06d}", _reading_texts(rng, pages or recipe.reading_pages)
        images = [f"{name}-{j}.png" for j in range(len(texts))]
        jobs.extend((text, str(folder / "images" / image)) for text, image in zip(texts, images))
        rows.append(json.dumps({"id": name, "messages": _reading_messages(system_prompt, texts, target), "images": images}))
    processes = max(1, processes or usable_cores())
    chunks = [jobs[i:i + 500] for i in range(0, len(jobs), 500)]
    bar = tqdm(total=len(jobs), desc=f"{tag} pages", unit="page", disable=not progress)
    if processes == 1:
        for chunk in chunks:
            bar.update(_render_reading_pages(chunk))
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            for done in pool.imap_unordered(_render_reading_pages, chunks):
                bar.update(done)
    bar.close()
    path = folder / READING_SAMPLES_FILE
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def load_reading_samples(folder: Path) -> list[Any]:
    from vtcr.train.data import Sample

    out = []
    for line in (folder / READING_SAMPLES_FILE).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        out.append(Sample(id=row["id"], messages=tuple(row["messages"]),
                          images=tuple(str(folder / "images" / name) for name in row["images"])))  # fmt: skip
    return out


def reading_check(model_dir: Path, n: int = 24, seed: int = 12345, pages: tuple[int, int] = (1, 3),
                  threads: int | None = None) -> dict[str, Any]:  # fmt: skip
    """How well `model_dir` writes out the state that ends the last of 1-3 pages it has never seen
    (fresh random lines, the built-in layout), greedy: states exactly right, and each of the three
    digits right (chance: 1 in 10 a digit). An independent check that the pages are read, not
    recalled."""
    import tempfile

    import torch
    from PIL import Image

    from vtcr.engine import GenerationRequest, TransformersBackend
    from vtcr.prompts import SYSTEM_PROMPT
    from vtcr.render import get_renderer

    if threads:
        torch.set_num_threads(threads)
    backend = TransformersBackend.from_pretrained(model_dir, max_image_pixels=PAGE_PIXELS)
    renderer = get_renderer(builtin_render_config())
    rng = random.Random(f"vtcr-builtin-reading-check-{seed}")
    right = {"states": 0, "digit1": 0, "digit2": 0, "digit3": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            sample = reading_sample(rng, renderer, Path(tmp), f"check-{i}", SYSTEM_PROMPT, pages)
            images = [Image.open(p).convert("RGB") for p in sample.images]
            content = [{"type": "text", "text": READING_QUESTION}] + [{"type": "image", "image": im} for im in images]
            gold = sample.messages[-1]["content"][0]["text"][:3]  # the state that ends the last page
            result = backend.generate(GenerationRequest(
                [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}],
                max_new_tokens=8, temperature=0.0))  # fmt: skip
            got = result.text.removeprefix(backend.prompt_opens).strip()[:3]
            right["states"] += got == gold
            for k in range(3):
                right[f"digit{k + 1}"] += len(got) > k and got[k] == gold[k]
    return {k: {"right": v, "of": n} for k, v in right.items()}


def train_config(recipe: BuiltinRecipe, mode: str, model_dir: Path, data_dir: Path, out: Path, *,
                 progress: bool = False, threads: int | None = None, stage: int = 1):  # fmt: skip
    """The TrainConfig of one stage of one model (stage 2 starts from stage 1's output; stage 0 is
    the shared reading stage, `mode` "vtc": its samples carry pages)."""
    from vtcr.train import TrainConfig

    if stage == 0:
        steps, lr, seed, batch = recipe.reading_steps, recipe.reading_lr, recipe.weights_seed + 2, recipe.reading_batch_size
    elif stage == 1:
        steps, lr, seed, batch = recipe.max_steps, recipe.lr, recipe.weights_seed, recipe.batch_for(mode)
    else:
        steps, lr, seed, batch = recipe.stage2_steps, recipe.stage2_lr, recipe.weights_seed + 1, recipe.batch_for(mode)
    # The vision tower is aligned in the alignment stage; without one it starts random and learns
    # in the reading stage (or the fine-tuning) at a higher rate. After either it may stay frozen.
    frozen = recipe.freeze_vision_after_reading and (recipe.align_steps > 0 or (stage > 0 and recipe.reading_steps > 0))
    return TrainConfig(
        data=str(data_dir), model=str(model_dir), out=str(out), mode=mode, lr=lr, max_steps=steps,
        batch_size=batch, grad_accum=1, warmup_ratio=recipe.warmup_ratio, cutoff_len=recipe.cutoff_len,
        seed=seed, save_steps=recipe.save_steps, save_total_limit=1, logging_steps=10, progress=progress,
        freeze_vision=frozen, vision_lr_scale=1.0 if frozen else recipe.vision_lr_scale,
        max_image_pixels=PAGE_PIXELS, group_by_length=stage > 0 and mode in recipe.grouped_modes,
        **({"threads": threads} if threads is not None else {}),
    )  # fmt: skip


def train_reading(recipe: BuiltinRecipe, work: Path, *, progress: bool = False, threads: int | None = None) -> Path:
    """The shared reading stage: aligned (or init) -> work/read (resumes from its last checkpoint)."""
    from vtcr.train import train

    samples = load_reading_samples(work / "reading-data")
    start = work / ("aligned" if recipe.align_steps else "init")
    train(train_config(recipe, "vtc", start, work / "data", work / "read", progress=progress, threads=threads, stage=0),
          samples=samples)  # fmt: skip
    return work / "read"


# --- training the models ----------------------------------------------------------------------------


def _stages(recipe: BuiltinRecipe, work: Path, mode: str) -> list[tuple[Path, Path]]:
    """(output folder, done marker) of each training stage of `mode`; the last folder is published."""
    stages = [(work / "models" / mode, _stage(work, f"train-{mode}"))]
    if recipe.stage2_steps and mode in recipe.stage2_modes:
        stages.append((work / "models2" / mode, _stage(work, f"train2-{mode}")))
    return stages


def _mode_done(recipe: BuiltinRecipe, work: Path, mode: str) -> bool:
    return all(marker.is_file() for _, marker in _stages(recipe, work, mode))


WIDENED_FILE = "widened.json"


def _widen_when_others_done(at_step: int, markers: list[Path], threads: int, record: Path, poll_s: float = 2.0):
    """A trainer callback: from step `at_step` on (a resumed run included), wait until every
    marker exists (the other models have finished), then train on `threads` torch threads; what
    it did goes to `record` (step, seconds waited, threads)."""
    import torch
    from transformers import TrainerCallback

    class WidenWhenOthersDone(TrainerCallback):
        widened = False

        def on_step_begin(self, args, state, control, **kwargs):
            if self.widened or state.global_step < at_step:
                return
            started = time.perf_counter()
            while not all(m.is_file() for m in markers):  # the parent stops every model if one fails
                time.sleep(poll_s)
            torch.set_num_threads(threads)
            self.widened = True
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"step": state.global_step, "waited_seconds": round(time.perf_counter() - started, 1),
                                          "threads": threads}) + "\n", encoding="utf-8")  # fmt: skip

    return WidenWhenOthersDone()


def train_mode(recipe: BuiltinRecipe, work: Path, mode: str, *, progress: bool = False, threads: int | None = None,
               widen_threads: int | None = None) -> None:  # fmt: skip
    """Every unfinished training stage of one model, each leaving its marker when it ends.
    `widen_threads`: side by side, the threads this model takes from `recipe.widen_at_step` on,
    once the other models are done (only for a model in `recipe.widen_modes`)."""
    from vtcr.train import train

    previous = work / ("read" if recipe.reading_steps else "aligned" if recipe.align_steps else "init")
    mixed = None  # the last stage's samples when reading samples are mixed in
    if mode == "vtc" and recipe.vtc_reading_mix:
        from vtcr.train.data import load_samples, read_build

        build = read_build(work / "data")
        mix = work / "mix-data"
        if not _stage(work, "mix-data").is_file():
            if mix.exists():
                shutil.rmtree(mix)
            build_reading_samples(recipe, mix, build.system_prompt, progress=progress, n=recipe.vtc_reading_mix, tag="mix",
                                  pages=recipe.vtc_reading_mix_pages, target=recipe.vtc_reading_mix_target)  # fmt: skip
            _stage(work, "mix-data").write_text("ok\n")
        mixed = load_samples(build, "vtc") + load_reading_samples(mix)
    elif mode == "standard" and recipe.standard_line_mix:
        from vtcr.train.data import load_samples, read_build

        mixed = load_samples(read_build(work / "data"), "standard") + line_drills(recipe, recipe.standard_line_mix)
    callbacks: tuple = ()
    if widen_threads and recipe.widen_at_step and mode in recipe.widen_modes:
        others = [marker for m in recipe.modes if m != mode for _, marker in _stages(recipe, work, m)]
        record = _stages(recipe, work, mode)[0][0] / WIDENED_FILE
        callbacks = (_widen_when_others_done(recipe.widen_at_step, others, widen_threads, record),)
    stages = _stages(recipe, work, mode)
    for stage, (out, marker) in enumerate(stages, start=1):
        if not marker.is_file():
            if stage > 1:  # stage 2 starts from stage 1's weights as they would be published (float16)
                _half_precision(previous)
            train(train_config(recipe, mode, previous, work / "data", out, progress=progress, threads=threads, stage=stage),
                  samples=mixed if stage == len(stages) else None, callbacks=callbacks if stage == 1 else ())  # fmt: skip
            marker.write_text("ok\n")
        previous = out


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies (a killed rebuild leaves no
    orphan training into its work folder)."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _train_mode_child(recipe_data: dict[str, Any], work: str, mode: str, threads: int, widen_threads: int) -> None:
    _die_with_parent()
    train_mode(BuiltinRecipe.from_dict(recipe_data), Path(work), mode, progress=False, threads=threads,
               widen_threads=widen_threads)  # fmt: skip


def _train_side_by_side(recipe: BuiltinRecipe, work: Path, modes: list[str], threads: int) -> None:
    """One spawned process per model (torch's thread pool is per process), `threads` each; a
    model in `recipe.widen_modes` takes every core once the others are done. RuntimeError naming
    each model whose training failed (the first failure stops the others: one may be waiting)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    widen = max(threads, usable_cores())
    procs = {m: ctx.Process(target=_train_mode_child, args=(recipe.to_dict(), str(work), m, threads, widen),
                            name=f"train-{m}") for m in modes}  # fmt: skip
    try:
        for proc in procs.values():
            proc.start()
        while any(p.is_alive() for p in procs.values()):
            if any(p.exitcode not in (None, 0) for p in procs.values()):
                break  # the finally stops the rest
            time.sleep(0.5)
    finally:
        for proc in procs.values():
            if proc.is_alive():
                proc.kill()
                proc.join()
    failed = [f"{m} (exit code {p.exitcode}; its log: {work / 'models' / m / 'train_log.jsonl'})" for m, p in procs.items() if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"training failed: {', '.join(failed)}; run the rebuild again to resume")


# --- files, manifest, lock ------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stored_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def write_manifest(folder: Path, info: dict[str, Any]) -> Path:
    files = {str(p.relative_to(folder)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in _stored_files(folder) if p.name != MANIFEST_FILE}  # fmt: skip
    manifest = {**info, "files": files}
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


@contextmanager
def _terminate_as_exit():
    """SIGTERM (`kill PID`, a job scheduler) and SIGHUP (a closed terminal) end the rebuild as
    Ctrl-C does, with SystemExit(128 + signal): the `finally` blocks run (the training processes
    are stopped, the lock file removed) and the finished stages stay for the resume. Only in the
    main thread (the only one that may set a handler); the previous handlers come back after."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum, _frame):
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, _exit) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def rebuild_lock(root: Path):
    """One rebuild per weights folder at a time (fcntl; the OS drops it when a process dies, so a
    killed rebuild leaves no stale lock). A second caller fails at once, naming the lock file."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    fh = open(path, "a")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another `vtcr builtin rebuild` holds {path}; wait for it to finish") from None
        try:
            yield path
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _fraction(check: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v['right']}/{v['of']}" for k, v in check.items())


def _schedule(recipe: BuiltinRecipe) -> str:
    stage2 = f" + stage 2 of {recipe.stage2_steps} steps ({', '.join(recipe.stage2_modes)})" if recipe.stage2_steps else ""
    return f"{recipe.max_steps} steps{stage2}"


def _stage(work: Path, name: str) -> Path:
    return work / f"{name}.done"


def _half_precision(model_dir: Path) -> None:
    """Store the weights as float16 (loading casts them back to float32 on a CPU)."""
    from safetensors.torch import load_file, save_file

    import torch

    for path in model_dir.glob("*.safetensors"):
        tensors = load_file(str(path))
        save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()}, str(path),
                  metadata={"format": "pt"})  # fmt: skip
        os.chmod(path, 0o644)


_KEEP = ("checkpoints", "train_config.json", "train_log.jsonl", "loss.png", WIDENED_FILE)


def rebuild(
    root: str | os.PathLike,
    recipe: BuiltinRecipe | None = None,
    *,
    progress: bool = False,
    threads: int | None = None,
    parallel: bool | None = None,
    half: bool = True,
    log=print,
) -> dict[str, Any]:
    """Train the built-in models of `recipe` and publish them under `root` (`root/vtc`,
    `root/standard`, `root/manifest.json`). Resumes a killed rebuild of the same recipe; a work
    folder of another recipe is discarded. Returns the manifest.

    `parallel` (default: when this process may use >= 2 cores) trains the models side by side,
    one process each with `threads` torch threads (default: the cores split between them), which
    is how the shipped models were trained (2 cores, 1 thread each); else one after the other."""
    recipe = recipe or BuiltinRecipe()
    root = Path(root)
    with _terminate_as_exit(), rebuild_lock(root):
        work = root / WORK_NAME
        recipe_file = work / "recipe.json"
        if work.exists():
            old = json.loads(recipe_file.read_text(encoding="utf-8")) if recipe_file.is_file() else None
            if old != recipe.to_dict():
                log(f"discarding {work}: it holds a rebuild of another recipe")
                shutil.rmtree(work)
            else:
                log(f"resuming the rebuild in {work}")
        work.mkdir(parents=True, exist_ok=True)
        recipe_file.write_text(json.dumps(recipe.to_dict(), indent=2) + "\n", encoding="utf-8")
        started = time.perf_counter()
        init = work / "init"
        if not _stage(work, "init").is_file():
            log("1/6 tokenizer and random-weight model")
            init_builtin_model(recipe, task_tokenizer(work / "tokenizer" / "tokenizer.json"), init)
            _stage(work, "init").write_text("ok\n")
        data = work / "data"
        if not _stage(work, "data").is_file():
            log(f"2/6 training set: {recipe.problems} problems, lengths {recipe.lengths[0]}:{recipe.lengths[1]}")
            if data.exists():
                shutil.rmtree(data)
            build_builtin_data(recipe, init, data, progress=progress)
            _stage(work, "data").write_text("ok\n")
        stats = json.loads((data / "stats.json").read_text(encoding="utf-8")) if (data / "stats.json").is_file() else {}
        alignment: dict[str, Any] = {}
        if recipe.align_steps:
            if not _stage(work, "aligned").is_file():
                log(f"3/6 alignment stage (shared): the vision tower alone, {recipe.align_steps} steps of "
                    f"{recipe.align_batch_size} new pages, state-digit tokens -> the digits' embeddings")  # fmt: skip
                align_vision(init, work / "aligned", recipe.align_steps, recipe.align_lr, recipe.align_batch_size,
                             recipe.weights_seed, threads=threads, progress=progress)  # fmt: skip
                _stage(work, "aligned").write_text("ok\n")
            alignment = json.loads((work / "aligned" / ALIGNMENT_FILE).read_text(encoding="utf-8"))
            log(f"   aligned: {alignment['nearest_embedding_right']:.1%} of state-digit tokens nearest their digit's embedding")
        reading: dict[str, Any] = {}
        if recipe.reading_steps and not _stage(work, "read").is_file():
            log(f"4/6 reading stage (shared by both models): {recipe.reading_steps} steps of batch {recipe.reading_batch_size}, "
                f"every sample new pages of random task lines")  # fmt: skip
            if not _stage(work, "reading-data").is_file():
                if (work / "reading-data").exists():
                    shutil.rmtree(work / "reading-data")
                from vtcr.train.data import read_build

                build_reading_samples(recipe, work / "reading-data", read_build(data).system_prompt, progress=progress)
                _stage(work, "reading-data").write_text("ok\n")
            train_reading(recipe, work, progress=progress, threads=threads)
            check = reading_check(work / "read", n=recipe.reading_check_pages, pages=recipe.reading_pages, threads=threads)
            (work / "read" / "reading_check.json").write_text(json.dumps(check, indent=2) + "\n", encoding="utf-8")
            _stage(work, "read").write_text("ok\n")
        if recipe.reading_steps:
            log_data = json.loads((work / "read" / "train_log.json").read_text(encoding="utf-8"))
            reading = {k: log_data.get(k) for k in ("final_train_loss", "timing", "global_step")}
            reading["unseen_pages"] = json.loads((work / "read" / "reading_check.json").read_text(encoding="utf-8"))
            log(f"   the reading stage writes out unseen pages: {_fraction(reading['unseen_pages'])}")
        pending = [m for m in recipe.modes if not _mode_done(recipe, work, m)]
        side_by_side = len(pending) > 1 and (parallel if parallel is not None else usable_cores() >= 2)
        if side_by_side:
            each = threads or max(1, usable_cores() // len(pending))
            widen = [m for m in pending if m in recipe.widen_modes] if recipe.widen_at_step else []
            later = f"; from step {recipe.widen_at_step} {', '.join(widen)} takes every core once the other is done" if widen else ""
            log(f"5/6 training the {' and '.join(pending)} models side by side ({each} torch thread(s) each{later}): "
                f"{_schedule(recipe)} (batch: {', '.join(f'{m} {recipe.batch_for(m)}' for m in pending)}; "
                f"grouped by length: {', '.join(m for m in pending if m in recipe.grouped_modes) or 'none'})")
            _train_side_by_side(recipe, work, pending, each)
        else:
            for mode in pending:
                log(f"{5 + recipe.modes.index(mode)}/6 training the {mode} model: {_schedule(recipe)} of batch {recipe.batch_for(mode)}")
                train_mode(recipe, work, mode, progress=progress, threads=threads)
        trained: dict[str, Any] = {}
        for mode in recipe.modes:
            trained[mode] = {}
            for stage, (folder, _) in enumerate(_stages(recipe, work, mode), start=1):
                log_data = json.loads((folder / "train_log.json").read_text(encoding="utf-8"))
                trained[mode][f"stage{stage}"] = {k: log_data.get(k) for k in ("final_train_loss", "timing", "global_step")}
                config = json.loads((folder / "train_config.json").read_text(encoding="utf-8"))
                trained[mode][f"stage{stage}"]["group_by_length"] = config.get("group_by_length", False)
                if (folder / WIDENED_FILE).is_file():  # side by side: the step it took every core from
                    trained[mode][f"stage{stage}"]["widened"] = json.loads((folder / WIDENED_FILE).read_text(encoding="utf-8"))
            trained[mode]["final_train_loss"] = log_data.get("final_train_loss")
        publish = work / "publish"
        if publish.exists():
            shutil.rmtree(publish)
        publish.mkdir()
        for mode in recipe.modes:
            dest = publish / mode
            shutil.copytree(_stages(recipe, work, mode)[-1][0], dest, ignore=shutil.ignore_patterns(*_KEEP))
            if half:
                _half_precision(dest)
        manifest = write_manifest(publish, {
            "recipe": recipe.to_dict(), "recipe_key": recipe.key(), "render_config": builtin_render_config().to_dict(),
            "samples": stats.get("samples"), "problems": stats.get("problems"), "alignment": alignment, "reading": reading, "trained": trained,
            "rebuild_seconds_this_run": round(time.perf_counter() - started, 1),
        })  # fmt: skip
        # publish: the old models move aside, the new folder's contents move in, the old go
        old = root / ".rebuild-old"
        if old.exists():
            shutil.rmtree(old)
        old.mkdir()
        for name in (*MODES_TRAINED, MANIFEST_FILE):
            if (root / name).exists():
                os.replace(root / name, old / name)
        for item in publish.iterdir():
            os.replace(item, root / item.name)
        shutil.rmtree(old, ignore_errors=True)
        result = json.loads((root / MANIFEST_FILE).read_text(encoding="utf-8"))
        shutil.rmtree(work, ignore_errors=True)
        del manifest
        return result
