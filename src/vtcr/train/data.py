"""Training samples from a `vtcr build-data` folder, tokenized exactly as the engine prompts.

Samples (one list, in the build's source order):
- ``vtc``: every sample of the build (`vtcr.data.samples.typed_sample`): the build's system prompt,
  the question followed by the pages of segments 0..k-1, and segment k as the assistant turn.
- ``standard`` (the paper's baseline): one sample per problem: the question alone (no system
  turn, no images, as the engine's ``standard`` mode asks) and the whole trace -- every segment
  joined, i.e. ``<think>`` reasoning ``</think>`` summary ``<answer>GOLD</answer>`` -- as the answer.

Encoding: the prompt is the checkpoint's chat template rendered over the sample's system and user
turns with its generation prompt (`vtcr.models.conventions.render_prompt`), its image placeholders
expanded per image and tokenized in one call -- the same steps, in the same order, as
`vtcr.engine.TransformersBackend` -- so training and inference see identical prompt tokens. The
target is never taken from how the template re-renders an assistant message (Qwen3-VL Thinking
would turn every middle segment into an empty think block followed by the text): it is exactly the
segment the dataset holds, minus an opening ``<think>\n`` that the generation prompt already wrote,
plus the family's end-of-turn token and what the template writes right after it
(`vtcr.models.conventions.training_target`: ``<|im_end|>\n`` for Qwen, ``<|endoftext|>`` for GLM).
It is tokenized on its own (what the model generates token by token). Loss covers the target only.

Truncation rule (`cutoff_len` = L; counted in `DataPlan`): a sample whose prompt alone has L or
more tokens is dropped (its images would have to be cut); otherwise the target keeps its first
L - prompt tokens (cut from the right). Prompts, and so image placeholders, are never cut.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100
_MAX_NAMED = 10  # missing images / dropped samples named in an error or a summary


# --- the build folder ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildInfo:
    """A build folder and the settings it was built with (build.json)."""

    path: Path
    settings: dict[str, Any]

    @property
    def system_prompt(self) -> str:
        return self.settings["system_prompt"]

    @property
    def render_config(self):
        """The RenderConfig the build's pages were rendered with (None for an old build.json without it)."""
        from vtcr.render import render_config

        return render_config(self.settings.get("render"))

    @property
    def dataset_name(self) -> str:
        return str(self.settings.get("dataset_name", "vtc-r1"))


def read_build(data_dir: str | os.PathLike) -> BuildInfo:
    """The build folder's settings; FileNotFoundError when `data_dir` is not a finished build."""
    from vtcr.data.build import SETTINGS_FILE
    from vtcr.data.records import RECORDS_FILE

    path = Path(data_dir).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} does not exist")
    missing = [name for name in (SETTINGS_FILE, RECORDS_FILE) if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{data_dir} is not a vtcr build folder: {' and '.join(missing)} missing (run `vtcr build-data` first)"
        )
    try:
        settings = json.loads((path / SETTINGS_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path / SETTINGS_FILE} is not valid JSON: {exc}") from None
    if "system_prompt" not in settings:
        raise ValueError(f"{path / SETTINGS_FILE} has no system_prompt: not a vtcr build folder")
    return BuildInfo(path, settings)


def iter_problems(info: BuildInfo) -> Iterator[dict[str, Any]]:
    """The build's problem records in source order (rejected rows skipped)."""
    from vtcr.data.records import RecordLog

    for record in RecordLog(info.path).iter_sorted():
        if record["kind"] == "problem":
            yield record


def missing_images(info: BuildInfo, records: Sequence[dict[str, Any]]) -> list[str]:
    """Relative paths of every page the records reference that is not a file, in order, once each."""
    seen: set[str] = set()
    missing = []
    for record in records:
        for pages in record["pages"]:
            for page in pages:
                name = page["file"]
                if name not in seen:
                    seen.add(name)
                    if not (info.path / name).is_file():
                        missing.append(name)
    return missing


@dataclass(frozen=True)
class Sample:
    """One training sample: chat messages in typed-parts form and the absolute paths of its images."""

    id: str
    messages: tuple[dict[str, Any], ...]
    images: tuple[str, ...] = ()


def load_samples(info: BuildInfo, mode: str = "vtc") -> list[Sample]:
    """Every sample of `mode` ("vtc" or "standard"), after checking that every image exists.

    Raises FileNotFoundError naming the missing images, ValueError for a build with no problem.
    """
    from vtcr.data.samples import typed_sample

    records = list(iter_problems(info))
    if not records:
        raise ValueError(f"{info.path} holds no built problem (see its stats.json for rejected rows)")
    samples: list[Sample] = []
    if mode == "standard":
        for record in records:
            messages = (
                {"role": "user", "content": [{"type": "text", "text": record["question"]}]},
                {"role": "assistant", "content": [{"type": "text", "text": "".join(record["turns"])}]},
            )
            samples.append(Sample(id=str(record["id"]), messages=messages))
        return samples
    if mode != "vtc":
        raise ValueError(f"unknown mode {mode!r}; choose vtc or standard")
    missing = missing_images(info, records)
    if missing:
        named = ", ".join(missing[:_MAX_NAMED]) + (f", ... ({len(missing) - _MAX_NAMED} more)" if len(missing) > _MAX_NAMED else "")
        raise FileNotFoundError(f"{info.path}: {len(missing)} referenced image(s) missing: {named}")
    for record in records:
        for k in range(len(record["turns"])):
            row = typed_sample(record, k, info.system_prompt)
            images = tuple(str(info.path / name) for name in row["images"])
            samples.append(Sample(id=row["id"], messages=tuple(row["messages"]), images=images))
    return samples


# --- encoding ------------------------------------------------------------------------------------


@dataclass
class DataPlan:
    """What the truncation rule did to a sample list (see the module docstring)."""

    samples: int = 0
    kept: list[int] = field(default_factory=list)  # indexes of the samples trained on
    lengths: list[int] = field(default_factory=list)  # tokens (prompt + kept target) of each kept sample
    dropped_prompt_too_long: list[str] = field(default_factory=list)  # sample ids
    truncated: int = 0
    target_tokens_cut: int = 0
    prompt_tokens: int = 0  # of kept samples
    target_tokens: int = 0  # of kept samples, after truncation
    max_length: int = 0

    def summary(self, cutoff_len: int) -> dict[str, Any]:
        return {
            "rule": (
                f"cutoff_len {cutoff_len}: a sample whose prompt alone has >= {cutoff_len} tokens is dropped; "
                "otherwise its assistant tokens are cut from the right to fit (prompts and image tokens never cut)"
            ),
            "samples": self.samples,
            "kept": len(self.kept),
            "dropped_prompt_too_long": len(self.dropped_prompt_too_long),
            "dropped_examples": self.dropped_prompt_too_long[:_MAX_NAMED],
            "truncated": self.truncated,
            "target_tokens_cut": self.target_tokens_cut,
            "prompt_tokens": self.prompt_tokens,
            "target_tokens": self.target_tokens,
            "max_length": self.max_length,
        }


def vision_spec_of(processor: Any, max_image_pixels: int | None):
    """The `vtcr.tokens.VisionSpec` of a loaded processor under a pixel cap (for counting tokens)."""
    from vtcr.models.processor import arch_of_processor, image_size_budget
    from vtcr.tokens import VisionSpec

    ip = processor.image_processor
    size = dict(ip.size) if max_image_pixels is None else image_size_budget(processor, max_image_pixels)
    return VisionSpec(
        family=arch_of_processor(processor), patch_size=int(ip.patch_size), merge_size=int(ip.merge_size),
        temporal_patch_size=int(ip.temporal_patch_size), min_pixels=int(size["shortest_edge"]),
        max_pixels=int(size["longest_edge"]),
    )  # fmt: skip


def _text_of(content: Any) -> str:
    """The text of an assistant message (a string, or its text parts joined)."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content if part.get("type") == "text")


class SampleEncoder:
    """Turns a `Sample` into input ids, labels and pixel values (see the module docstring).

    `max_image_pixels` is the same cap the engine applies (`TransformersBackend(max_image_pixels=)`):
    None keeps the processor's own size settings.
    """

    def __init__(self, processor: Any, cutoff_len: int, max_image_pixels: int | None = None):
        from vtcr.models.conventions import chat_conventions
        from vtcr.models.processor import arch_of_processor, image_size_budget

        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.cutoff_len = int(cutoff_len)
        self.max_image_pixels = max_image_pixels
        arch = arch_of_processor(processor)
        self.image_token = processor.image_token
        ids = self.tokenizer.convert_tokens_to_ids([self.image_token])
        self.image_token_id = int(ids[0])
        self.merge = int(processor.image_processor.merge_size)
        self.size_kwargs: dict[str, Any] = {}
        if max_image_pixels is not None:
            self.size_kwargs["size"] = image_size_budget(processor, max_image_pixels)
        self.spec = vision_spec_of(processor, max_image_pixels)
        self.conventions = chat_conventions(processor.chat_template or "", arch, source="the model's chat template")
        self.pixel_cache_bytes = 1 << 30  # per process (each data-loader worker holds its own cache)
        self._pixel_cache: dict[str, tuple[Any, tuple[int, ...]]] = {}
        self._pixel_seen: set[str] = set()
        self._pixel_bytes = 0

    # -- text ------------------------------------------------------------------------------------

    def split(self, messages: Sequence[dict[str, Any]]) -> tuple[str, str]:
        """(prompt text, target text) of a conversation whose last message is the assistant's
        (see the module docstring)."""
        from vtcr.models.conventions import render_prompt, training_target

        messages = list(messages)
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError("a training sample must end with an assistant message")
        prompt = render_prompt(self.processor, messages[:-1], source="the model's chat template")
        return prompt, training_target(_text_of(messages[-1]["content"]), self.conventions)

    def prompt_ids(self, prompt: str, grids: Sequence[Sequence[int]]) -> list[int]:
        """Token ids of `prompt` with its i-th image placeholder expanded to image i's token count
        (what the processor, and the engine, do)."""
        chunks = prompt.split(self.image_token)
        if len(chunks) - 1 != len(grids):
            raise ValueError(f"the prompt holds {len(chunks) - 1} image placeholders but the sample has {len(grids)} images")
        expanded = chunks[0] + "".join(self.image_token * self._n_tokens(g) + c for g, c in zip(grids, chunks[1:]))
        return list(self.tokenizer(expanded)["input_ids"])

    def _n_tokens(self, grid: Sequence[int]) -> int:
        t, h, w = (int(x) for x in grid)
        return t * h * w // (self.merge * self.merge)

    def target_ids(self, target: str) -> list[int]:
        return list(self.tokenizer(target, add_special_tokens=False)["input_ids"])

    # -- planning (lengths without decoding any image) --------------------------------------------

    def plan(self, samples: Sequence[Sample], progress: bool = False) -> DataPlan:
        """Apply the truncation rule to every sample, counting tokens from image headers only."""
        from PIL import Image
        from tqdm.auto import tqdm

        from vtcr.tokens import vision_tokens

        sizes: dict[str, int] = {}

        def image_tokens(path: str) -> int:
            if path not in sizes:
                try:
                    with Image.open(path) as img:
                        sizes[path] = vision_tokens(img.size, self.spec)
                except OSError as exc:
                    raise ValueError(f"image {path} cannot be read: {exc}") from None
            return sizes[path]

        plan = DataPlan(samples=len(samples))
        batch = 256
        for start in tqdm(range(0, len(samples), batch), desc="plan samples", unit="batch", disable=not progress):
            chunk = samples[start : start + batch]
            texts = [self.split(s.messages) for s in chunk]
            prompts = self.tokenizer([p for p, _ in texts])["input_ids"]
            targets = self.tokenizer([t for _, t in texts], add_special_tokens=False)["input_ids"]
            for offset, (sample, p_ids, t_ids) in enumerate(zip(chunk, prompts, targets)):
                # Each placeholder is one special token: expanding it to n tokens adds n - 1.
                n_prompt = len(p_ids) + sum(image_tokens(path) - 1 for path in sample.images)
                room = self.cutoff_len - n_prompt
                if room < 1:
                    plan.dropped_prompt_too_long.append(sample.id)
                    continue
                n_target = min(len(t_ids), room)
                if n_target < len(t_ids):
                    plan.truncated += 1
                    plan.target_tokens_cut += len(t_ids) - n_target
                plan.kept.append(start + offset)
                plan.lengths.append(n_prompt + n_target)
                plan.prompt_tokens += n_prompt
                plan.target_tokens += n_target
                plan.max_length = max(plan.max_length, n_prompt + n_target)
        return plan

    # -- encoding ---------------------------------------------------------------------------------

    def load_images(self, sample: Sample) -> list[Any]:
        from PIL import Image

        images = []
        for path in sample.images:
            try:
                with Image.open(path) as img:
                    images.append(img.convert("RGB"))
            except OSError as exc:
                raise ValueError(f"sample {sample.id}: image {path} cannot be read: {exc}") from None
        return images

    def preprocess(self, images: Sequence[Any]):
        """(pixel_values, grids) of `images` through the image processor under the cap (as the engine)."""
        if not images:
            return None, []
        out = self.processor.image_processor(images=list(images), return_tensors="pt", **self.size_kwargs)
        grids = [tuple(int(x) for x in g) for g in out["image_grid_thw"].tolist()]
        return out["pixel_values"], grids

    def pixels_of(self, sample: Sample):
        """`preprocess` of the sample's images, with each page that comes back (a vtc set shows
        round r's pages again in rounds r+1, r+2, ... and every epoch) taken from a cache filled on
        its second use, up to `pixel_cache_bytes`: a page used once is never held. The processor
        works on each image alone, so cached and fresh values are the same numbers."""
        import torch

        if not sample.images:
            return None, []
        missing = list(dict.fromkeys(p for p in sample.images if p not in self._pixel_cache))
        fresh: dict[str, tuple[Any, tuple[int, ...]]] = {}
        if missing:
            values, grids = self.preprocess(self.load_images(Sample(sample.id, sample.messages, tuple(missing))))
            rows = [t * h * w for t, h, w in grids]
            for path, value, grid in zip(missing, values.split(rows), grids, strict=True):
                fresh[path] = (value, grid)
                size = value.numel() * value.element_size()
                if path in self._pixel_seen and self._pixel_bytes + size <= self.pixel_cache_bytes:
                    self._pixel_cache[path] = (value, grid)
                    self._pixel_bytes += size
                self._pixel_seen.add(path)
        chosen = [fresh[p] if p in fresh else self._pixel_cache[p] for p in sample.images]
        return torch.cat([value for value, _ in chosen]), [grid for _, grid in chosen]

    def encode(self, sample: Sample) -> dict[str, Any]:
        """input_ids, labels (IGNORE_INDEX on the prompt), pixel_values and image_grid_thw of one sample."""
        pixel_values, grids = self.pixels_of(sample)
        prompt, target = self.split(sample.messages)
        ids = self.prompt_ids(prompt, grids)
        room = self.cutoff_len - len(ids)
        if room < 1:
            raise ValueError(f"sample {sample.id}: its prompt has {len(ids)} tokens, cutoff_len is {self.cutoff_len}")
        tgt = self.target_ids(target)[:room]
        return {
            "id": sample.id,
            "input_ids": ids + tgt,
            "labels": [IGNORE_INDEX] * len(ids) + tgt,
            "pixel_values": pixel_values,
            "image_grid_thw": grids,
        }


class EncodedDataset:
    """A map-style dataset of encoded samples (encoding runs in the DataLoader workers)."""

    def __init__(self, samples: Sequence[Sample], encoder: SampleEncoder, indexes: Sequence[int] | None = None):
        self.samples = samples
        self.encoder = encoder
        self.indexes = list(range(len(samples))) if indexes is None else list(indexes)

    def __len__(self) -> int:
        return len(self.indexes)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.encoder.encode(self.samples[self.indexes[i]])


class Collator:
    """Pads encoded samples into one batch (right padding; labels padded with IGNORE_INDEX)."""

    def __init__(self, pad_token_id: int, image_token_id: int):
        self.pad_token_id = int(pad_token_id)
        self.image_token_id = int(image_token_id)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(f["labels"], dtype=torch.long)
            mask[row, :n] = 1
        batch: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "mm_token_type_ids": (ids == self.image_token_id).int() * mask.int(),
        }
        pixels = [f["pixel_values"] for f in features if f["pixel_values"] is not None]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)
            batch["image_grid_thw"] = torch.tensor([g for f in features for g in f["image_grid_thw"]], dtype=torch.long)
        return batch
