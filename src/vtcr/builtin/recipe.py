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

RECIPE_VERSION = 5  # bump when anything below changes what is trained
MODES_TRAINED = ("vtc", "standard")
MANIFEST_FILE = "manifest.json"
LOCK_NAME = ".rebuild.lock"
WORK_NAME = ".rebuild-work"
LINE_TOKENS = len(Problem(0, 1, 0, 1).lines()[0])  # one token per character


def builtin_render_config():
    """The built-in models' pages: 6 task lines of DejaVu Sans 12 px on a 256x96 page, which the
    Qwen3-VL processor keeps as it is (multiples of 32 px): 24 vision tokens a page (8 columns x 3
    rows of 32x32 px). The lines sit so that the three digits a round must read -- the state that
    ends the page's last line -- lie in the page's last vision token (x 224-256 of the bottom row),
    with the line above's state in the same token: the same place on every page."""
    from vtcr.render import RenderConfig

    return RenderConfig(
        page_size=(256.0, 96.0), dpi=72, margin_x=2.0, margin_y=3.0, left_indent=5.0, font_size=12.0,
        line_height=13.0, alignment="LEFT", newline_markup="<br/>", name="builtin",
    )  # fmt: skip


PAGE_PIXELS = 256 * 96


@dataclass(frozen=True)
class BuiltinRecipe:
    """Everything that decides the built-in checkpoints (recorded in the manifest)."""

    arch: str = "qwen3-vl"
    size: str = "tiny"
    seed: int = TRAIN_SEED
    problems: int = TRAIN_PROBLEMS
    lengths: tuple[int, int] = TRAIN_LENGTHS
    lines_per_segment: int = LINES_PER_SEGMENT
    # The text model's RoPE base. Qwen3-VL's own (5e6) suits head_dim 128 and 256k contexts; at
    # the tiny head_dim 32 it leaves almost every frequency pair still over a few hundred positions,
    # so a page's rows and columns, and one page from the next, barely differ to attention.
    rope_theta: float = 10000.0
    # An optional reading stage (shared by both models, before either fine-tuning): the random-weight
    # model learns to write out the end of the last of 1-3 pages of task-shaped lines whose digits
    # are all random -- fresh pages every sample, never a training trace -- as the paper's models
    # start from a VLM that already reads. Off in the shipped recipe: on the tiny architecture its
    # loss stayed at chance (the text model does not learn to use the vision tokens; MODEL_CARD.md).
    reading_steps: int = 0
    reading_batch_size: int = 12
    reading_lr: float = 2e-3
    reading_pages: tuple[int, int] = (1, 3)
    reading_lines_out: int = 1  # lines from the end of the last page written out (the last holds the state)
    reading_check_pages: int = 48  # unseen pages the rebuild writes out after the reading stage (manifest)
    # The vision tower starts random and learns slowly at the text model's rate.
    vision_lr_scale: float = 5.0
    # After the reading stage the vision tower (and its merger) stays as it is in both
    # fine-tunings: the vtc model cannot re-learn its training pages by heart, only use what it reads.
    freeze_vision_after_reading: bool = True
    lr: float = 2e-3
    max_steps: int = 5000
    batch_size: int = 4  # the standard model's: 4 whole traces a step (~560 supervised tokens each)
    # The vtc model's: the same supervised-token budget a step as standard's (a vtc sample is one
    # round, ~180 supervised tokens), so that both models see the same tokens in the same steps.
    vtc_batch_size: int = 12
    warmup_ratio: float = 0.02
    cutoff_len: int = 2048
    save_steps: int = 250
    # An optional stage 2: the same trainer again from stage 1's weights (a second cosine cycle,
    # another data order) for the modes named. The shipped recipe has none: both models get the
    # same single schedule.
    stage2_steps: int = 0
    stage2_lr: float = 2e-3
    stage2_modes: tuple[str, ...] = ()
    modes: tuple[str, ...] = field(default=MODES_TRAINED)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", tuple(self.lengths))
        object.__setattr__(self, "reading_pages", tuple(self.reading_pages))
        lo, hi = self.reading_pages
        if not 1 <= lo <= hi:
            raise ValueError(f"reading_pages {self.reading_pages!r}: expected (min, max) with 1 <= min <= max")
        object.__setattr__(self, "modes", tuple(self.modes))
        object.__setattr__(self, "stage2_modes", tuple(self.stage2_modes))
        unknown = [m for m in self.modes if m not in MODES_TRAINED]
        if unknown or not self.modes:
            raise ValueError(f"recipe modes {self.modes!r}: choose from {', '.join(MODES_TRAINED)}")

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
        out["modes"] = list(self.modes)
        out["stage2_modes"] = list(self.stage2_modes)
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
        torch.manual_seed(recipe.seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=list(ids.stop), pad_token_id=ids.pad, bos_token_id=ids.bos)
    meta = ModelMeta(arch=recipe.arch, size=recipe.size, render_preset=None,
                     render_config=builtin_render_config().to_dict(), created_by="vtcr builtin (init)",
                     max_image_pixels=PAGE_PIXELS, seed=recipe.seed)  # fmt: skip
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


# --- the reading stage ------------------------------------------------------------------------------

READING_QUESTION = "Write out the end of the last page."
READING_SAMPLES_FILE = "samples.jsonl"


def _reading_page(renderer: Any, rng: random.Random) -> tuple[str, Any]:
    from vtcr.data.synthetic import reading_lines

    text = "".join(reading_lines(rng, LINES_PER_SEGMENT))
    pages = list(renderer.iter_pages(text))
    if len(pages) != 1:  # the layout is the training pages' own: six task lines fill exactly one page
        raise RuntimeError(f"a reading page of {LINES_PER_SEGMENT} lines rendered to {len(pages)} pages")
    return text, pages[0]


def reading_sample(rng: random.Random, renderer: Any, folder: Path, name: str, system_prompt: str,
                   pages: tuple[int, int], lines_out: int):  # fmt: skip
    """One reading sample: the system prompt, READING_QUESTION with 1-3 pages of random
    task-shaped lines (saved under `folder/images`), and the last `lines_out` lines of the last
    page as the answer."""
    from vtcr.prompts import user_parts
    from vtcr.render import save_png
    from vtcr.train.data import Sample

    n = rng.randint(*pages)
    paths = []
    for j in range(n):
        text, page = _reading_page(renderer, rng)
        paths.append(str(save_png(page, folder / "images" / f"{name}-{j}.png")))
    messages = (
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {"role": "user", "content": user_parts(READING_QUESTION, n)},
        {"role": "assistant", "content": [{"type": "text", "text": "".join(text.splitlines(keepends=True)[-lines_out:])}]},
    )
    return Sample(id=name, messages=messages, images=tuple(paths))


def build_reading_samples(recipe: BuiltinRecipe, folder: Path, system_prompt: str, progress: bool = False) -> Path:
    """The reading stage's samples (one per sample the stage trains on: every page is new), seeded
    by the recipe, written to `folder` (images/ and samples.jsonl). Returns the samples file."""
    from tqdm.auto import tqdm

    from vtcr.render import get_renderer

    renderer = get_renderer(builtin_render_config())
    rng = random.Random(f"vtcr-builtin-reading-{recipe.seed}")
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(recipe.reading_steps * recipe.reading_batch_size), desc="reading pages", unit="sample", disable=not progress):
        sample = reading_sample(rng, renderer, folder, f"read-{i:06d}", system_prompt, recipe.reading_pages, recipe.reading_lines_out)
        rows.append(json.dumps({"id": sample.id, "messages": sample.messages, "images": [Path(p).name for p in sample.images]}))
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


def reading_check(model_dir: Path, n: int = 24, seed: int = 12345, pages: tuple[int, int] = (1, 3), lines_out: int = 1,
                  threads: int | None = None) -> dict[str, Any]:  # fmt: skip
    """How well `model_dir` writes out the end of the last of 1-3 pages it has never seen (fresh
    random lines, the built-in layout), greedy: answers, lines and digits right, and the state that
    ends the page (its last three digits: what a round of the task reads). An independent check
    that the pages are read, not recalled."""
    import tempfile

    import torch

    from vtcr.engine import GenerationRequest, TransformersBackend
    from vtcr.prompts import SYSTEM_PROMPT
    from vtcr.render import get_renderer

    if threads:
        torch.set_num_threads(threads)
    backend = TransformersBackend.from_pretrained(model_dir, max_image_pixels=PAGE_PIXELS)
    renderer = get_renderer(builtin_render_config())
    rng = random.Random(f"vtcr-builtin-reading-check-{seed}")
    right = {"answers": 0, "lines": 0, "digits": 0, "states": 0}
    total = {"answers": 0, "lines": 0, "digits": 0, "states": 0}
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            sample = reading_sample(rng, renderer, Path(tmp), f"check-{i}", SYSTEM_PROMPT, pages, lines_out)
            images = [Image.open(p).convert("RGB") for p in sample.images]
            content = [{"type": "text", "text": READING_QUESTION}] + [{"type": "image", "image": im} for im in images]
            gold = sample.messages[-1]["content"][0]["text"]
            result = backend.generate(GenerationRequest(
                [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}],
                max_new_tokens=len(gold) + 8, temperature=0.0))  # fmt: skip
            got = result.text.removeprefix(backend.prompt_opens)
            gold_lines, got_lines = gold.splitlines(), got.splitlines()
            total["answers"] += 1
            right["answers"] += got.strip() == gold.strip()
            total["states"] += 1
            right["states"] += bool(got_lines) and len(got_lines) >= len(gold_lines) and got_lines[len(gold_lines) - 1][-3:] == gold_lines[-1][-3:]
            for k, line in enumerate(gold_lines):
                other = got_lines[k] if k < len(got_lines) else ""
                total["lines"] += 1
                right["lines"] += other == line
                digits = [c for c in line if c.isdigit()]
                theirs = [c for c in other if c.isdigit()]
                total["digits"] += len(digits)
                right["digits"] += sum(a == b for a, b in zip(digits, theirs))
    return {k: {"right": right[k], "of": total[k]} for k in total}


def train_config(recipe: BuiltinRecipe, mode: str, model_dir: Path, data_dir: Path, out: Path, *,
                 progress: bool = False, threads: int | None = None, stage: int = 1):  # fmt: skip
    """The TrainConfig of one stage of one model (stage 2 starts from stage 1's output; stage 0 is
    the shared reading stage, `mode` "vtc": its samples carry pages)."""
    from vtcr.train import TrainConfig

    if stage == 0:
        steps, lr, seed, batch = recipe.reading_steps, recipe.reading_lr, recipe.seed + 2, recipe.reading_batch_size
    elif stage == 1:
        steps, lr, seed, batch = recipe.max_steps, recipe.lr, recipe.seed, recipe.batch_for(mode)
    else:
        steps, lr, seed, batch = recipe.stage2_steps, recipe.stage2_lr, recipe.seed + 1, recipe.batch_for(mode)
    # The vision tower starts random: it learns to read in the reading stage (or, without one, in
    # the fine-tuning), at a higher rate; after the reading stage it may stay frozen.
    frozen = stage > 0 and recipe.reading_steps > 0 and recipe.freeze_vision_after_reading
    return TrainConfig(
        data=str(data_dir), model=str(model_dir), out=str(out), mode=mode, lr=lr, max_steps=steps,
        batch_size=batch, grad_accum=1, warmup_ratio=recipe.warmup_ratio, cutoff_len=recipe.cutoff_len,
        seed=seed, save_steps=recipe.save_steps, save_total_limit=1, logging_steps=10, progress=progress,
        freeze_vision=frozen, vision_lr_scale=1.0 if frozen else recipe.vision_lr_scale,
        max_image_pixels=PAGE_PIXELS, **({"threads": threads} if threads is not None else {}),
    )  # fmt: skip


def train_reading(recipe: BuiltinRecipe, work: Path, *, progress: bool = False, threads: int | None = None) -> Path:
    """The shared reading stage: init -> work/read (resumes from its last checkpoint)."""
    from vtcr.train import train

    samples = load_reading_samples(work / "reading-data")
    train(train_config(recipe, "vtc", work / "init", work / "data", work / "read", progress=progress, threads=threads, stage=0),
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


def train_mode(recipe: BuiltinRecipe, work: Path, mode: str, *, progress: bool = False, threads: int | None = None) -> None:
    """Every unfinished training stage of one model, each leaving its marker when it ends."""
    from vtcr.train import train

    previous = work / ("read" if recipe.reading_steps else "init")
    for stage, (out, marker) in enumerate(_stages(recipe, work, mode), start=1):
        if not marker.is_file():
            train(train_config(recipe, mode, previous, work / "data", out, progress=progress, threads=threads, stage=stage))
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


def _train_mode_child(recipe_data: dict[str, Any], work: str, mode: str, threads: int) -> None:
    _die_with_parent()
    train_mode(BuiltinRecipe.from_dict(recipe_data), Path(work), mode, progress=False, threads=threads)


def _train_side_by_side(recipe: BuiltinRecipe, work: Path, modes: list[str], threads: int) -> None:
    """One spawned process per model (torch's thread pool is per process); RuntimeError naming
    each model whose training failed."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = {m: ctx.Process(target=_train_mode_child, args=(recipe.to_dict(), str(work), m, threads), name=f"train-{m}")
             for m in modes}  # fmt: skip
    try:
        for proc in procs.values():
            proc.start()
        for proc in procs.values():
            proc.join()
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


_KEEP = ("checkpoints", "train_config.json", "train_log.jsonl", "loss.png")


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
    with rebuild_lock(root):
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
            log("1/5 tokenizer and random-weight model")
            init_builtin_model(recipe, task_tokenizer(work / "tokenizer" / "tokenizer.json"), init)
            _stage(work, "init").write_text("ok\n")
        data = work / "data"
        if not _stage(work, "data").is_file():
            log(f"2/5 training set: {recipe.problems} problems, lengths {recipe.lengths[0]}:{recipe.lengths[1]}")
            if data.exists():
                shutil.rmtree(data)
            build_builtin_data(recipe, init, data, progress=progress)
            _stage(work, "data").write_text("ok\n")
        stats = json.loads((data / "stats.json").read_text(encoding="utf-8")) if (data / "stats.json").is_file() else {}
        reading: dict[str, Any] = {}
        if recipe.reading_steps and not _stage(work, "read").is_file():
            log(f"3/5 reading stage (shared by both models): {recipe.reading_steps} steps of batch {recipe.reading_batch_size}, "
                f"every sample new pages of random task lines")  # fmt: skip
            if not _stage(work, "reading-data").is_file():
                if (work / "reading-data").exists():
                    shutil.rmtree(work / "reading-data")
                from vtcr.train.data import read_build

                build_reading_samples(recipe, work / "reading-data", read_build(data).system_prompt, progress=progress)
                _stage(work, "reading-data").write_text("ok\n")
            train_reading(recipe, work, progress=progress, threads=threads)
            check = reading_check(work / "read", n=recipe.reading_check_pages, pages=recipe.reading_pages,
                                  lines_out=recipe.reading_lines_out, threads=threads)
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
            log(f"4/5 training the {' and '.join(pending)} models side by side ({each} torch thread(s) each): "
                f"{recipe.max_steps} steps (batch: {', '.join(f'{m} {recipe.batch_for(m)}' for m in pending)})")
            _train_side_by_side(recipe, work, pending, each)
        else:
            for mode in pending:
                log(f"{4 + recipe.modes.index(mode)}/5 training the {mode} model: {recipe.max_steps} steps of batch {recipe.batch_for(mode)}")
                train_mode(recipe, work, mode, progress=progress, threads=threads)
        trained: dict[str, Any] = {}
        for mode in recipe.modes:
            trained[mode] = {}
            for stage, (folder, _) in enumerate(_stages(recipe, work, mode), start=1):
                log_data = json.loads((folder / "train_log.json").read_text(encoding="utf-8"))
                trained[mode][f"stage{stage}"] = {k: log_data.get(k) for k in ("final_train_loss", "timing", "global_step")}
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
            "samples": stats.get("samples"), "problems": stats.get("problems"), "reading": reading, "trained": trained,
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
