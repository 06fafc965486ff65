"""Final outputs of a build folder, derived from its records in source order.

- `vtcr_sft.json`: LLaMA-Factory sharegpt samples (a JSON array, written one sample at a time);
- `dataset_info.json`: the matching LLaMA-Factory entry (images resolve against the folder);
- `hf/train.parquet`: the same samples in transformers / TRL form (typed content parts, ids),
  loadable with `datasets.load_dataset("parquet", ...)` or `load_sft_dataset` (which also
  turns the relative image paths into images);
- `stats.json` and `plots/*.png`.

Compression, as stats.json defines it (per vision family): the text tokens of every rendered
segment (segments 0..n-2 of each problem -- the last one is the final answer and is never
rendered), each counted once, divided by the vision tokens of their pages. This is what the optical
memory saves over keeping the reasoning as text, the paper's "token compression". The per-sample
figure weights each segment by the number of samples that carry its pages. Text tokens are counted
with the build's tokenizer for every family.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from vtcr._io import atomic_open, write_text_atomic
from vtcr.data.records import RecordLog
from vtcr.data.samples import sharegpt_sample, typed_sample
from vtcr.data.sources import REJECT_REASONS

SFT_FILE = "vtcr_sft.json"
DATASET_INFO_FILE = "dataset_info.json"
HF_DIR = "hf"
HF_FILE = "train.parquet"
STATS_FILE = "stats.json"
PLOTS_DIR = "plots"
_EXAMPLES_PER_REASON = 5
_PARQUET_ROWS = 512
_TRACE_BIN = 64  # trace-length histogram bin (tokens)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def dataset_info(name: str, file_name: str = SFT_FILE) -> dict[str, Any]:
    """LLaMA-Factory `dataset_info.json` entry for the sharegpt file."""
    return {
        name: {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            },
        }
    }


def _summary(counts: Counter) -> dict[str, float | int]:
    """min / p50 / p90 / max / mean of a value -> count histogram (empty -> zeros)."""
    total = sum(counts.values())
    if not total:
        return {"count": 0, "min": 0, "p50": 0, "p90": 0, "max": 0, "mean": 0.0}
    values = sorted(counts)

    def quantile(q: float) -> int:
        need, seen = math.ceil(q * total), 0
        for v in values:
            seen += counts[v]
            if seen >= need:
                return v
        return values[-1]

    mean = sum(v * c for v, c in counts.items()) / total
    return {"count": total, "min": values[0], "p50": quantile(0.5), "p90": quantile(0.9), "max": values[-1], "mean": round(mean, 2)}


class StatsAccumulator:
    """Running totals over records; memory grows only with distinct values and image names."""

    def __init__(self, families: tuple[str, ...]):
        from vtcr.tokens import canonical_family

        self.families = tuple(canonical_family(f) for f in families)
        self.rows = 0
        self.rejected: Counter = Counter()
        self.examples: dict[str, list[dict]] = {}
        self.file_errors: list[dict] = []
        self.problems = 0
        self.samples = 0
        self.per_index: Counter = Counter()
        self.segments_per_problem: Counter = Counter()
        self.verified_by: Counter = Counter()
        self.turn_tokens: Counter = Counter()
        self.question_tokens: Counter = Counter()
        self.trace_tokens: Counter = Counter()
        self.pages_per_segment: Counter = Counter()
        self.images_per_sample: Counter = Counter()
        self.unique_files: set[str] = set()
        self.page_refs = 0
        self.text_replaced = 0
        self.text_in_samples = 0
        self.vision: Counter = Counter()
        self.vision_in_samples: Counter = Counter()
        self._size_cache: dict[tuple[int, int, str], int] = {}

    def _vision(self, width: int, height: int, family: str) -> int:
        key = (width, height, family)
        if key not in self._size_cache:
            from vtcr.tokens import vision_tokens

            self._size_cache[key] = vision_tokens((width, height), family)
        return self._size_cache[key]

    def add(self, record: dict[str, Any]) -> None:
        kind = record["kind"]
        if kind == "file_error":
            self.rejected[record["reason"]] += 1
            self.file_errors.append({k: record[k] for k in ("file", "reason", "detail")})
            return
        self.rows += 1
        if kind == "rejected":
            reason = record["reason"]
            self.rejected[reason] += 1
            examples = self.examples.setdefault(reason, [])
            if len(examples) < _EXAMPLES_PER_REASON:
                examples.append({k: record[k] for k in ("index", "id", "detail")})
            return
        n = len(record["turns"])
        self.problems += 1
        self.samples += n
        self.segments_per_problem[n] += 1
        for k in range(n):
            self.per_index[k] += 1
        if "verified_by" in record["origin"]:
            self.verified_by[record["origin"]["verified_by"]] += 1
        self.turn_tokens.update(record["turn_tokens"])
        self.question_tokens[record["question_tokens"]] += 1
        self.trace_tokens[sum(record["turn_tokens"]) // _TRACE_BIN * _TRACE_BIN] += 1
        for k in range(n):
            self.images_per_sample[sum(len(p) for p in record["pages"][:k])] += 1
        for j, pages in enumerate(record["pages"]):
            carried_by = n - 1 - j  # samples j+1..n-1 see segment j's pages
            self.pages_per_segment[len(pages)] += 1
            self.page_refs += len(pages)
            self.text_replaced += record["turn_tokens"][j]
            self.text_in_samples += record["turn_tokens"][j] * carried_by
            for page in pages:
                self.unique_files.add(page["file"])
                for family in self.families:
                    v = self._vision(page["width"], page["height"], family)
                    self.vision[family] += v
                    self.vision_in_samples[family] += v * carried_by

    def result(self, settings: dict[str, Any]) -> dict[str, Any]:
        def ratio(text: int, vision: int) -> float | None:
            return round(text / vision, 4) if vision else None

        compression: dict[str, Any] = {
            "definition": (
                "text tokens of the rendered segments (0..n-2 of each problem, each once) / vision tokens of "
                "their pages; per_sample weights each segment by the samples that carry its pages"
            ),
            "text_tokenizer": settings["tokenizer"],
        }
        for family in self.families:
            compression[family] = {
                "text_tokens_replaced": self.text_replaced,
                "vision_tokens": self.vision[family],
                "ratio": ratio(self.text_replaced, self.vision[family]),
                "per_sample": {
                    "text_tokens": self.text_in_samples,
                    "vision_tokens": self.vision_in_samples[family],
                    "ratio": ratio(self.text_in_samples, self.vision_in_samples[family]),
                },
            }
        return {
            "settings": settings,
            "rows": {"read": self.rows, "built": self.problems, "rejected": self.rows - self.problems},
            "rejected": {r: self.rejected[r] for r in sorted(self.rejected)},
            "rejected_reasons": {r: REJECT_REASONS.get(r, r) for r in sorted(self.rejected)},
            "rejected_examples": {r: self.examples[r] for r in sorted(self.examples)},
            "file_errors": self.file_errors,
            "problems": self.problems,
            "samples": self.samples,
            "samples_per_segment_index": [self.per_index[k] for k in range(len(self.per_index))],
            "problems_per_segment_count": {str(n): self.segments_per_problem[n] for n in sorted(self.segments_per_problem)},
            "verified_by": dict(sorted(self.verified_by.items())),
            "pages": {
                "rendered": self.page_refs,
                "unique_files": len(self.unique_files),
                "in_samples": sum(v * c for v, c in self.images_per_sample.items()),
                "per_rendered_segment": _summary(self.pages_per_segment),
                "per_sample": _summary(self.images_per_sample),
            },
            "tokens": {
                "question": _summary(self.question_tokens),
                "turn": _summary(self.turn_tokens),
                "trace": _summary(self.trace_tokens),
                "trace_bin": _TRACE_BIN,
                "rendered_text_total": self.text_replaced,
            },
            "compression": compression,
        }

    def histograms(self) -> dict[str, Counter]:
        return {
            "turn_tokens": self.turn_tokens,
            "trace_tokens": self.trace_tokens,
            "pages_per_segment": self.pages_per_segment,
            "images_per_sample": self.images_per_sample,
        }


class _ParquetSink:
    """Streams typed samples into one parquet file in fixed-size row groups."""

    def __init__(self, path: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        part = pa.struct([("type", pa.string()), ("text", pa.string())])
        message = pa.struct([("role", pa.string()), ("content", pa.list_(part))])
        self.schema = pa.schema(
            [
                ("id", pa.string()),
                ("problem_id", pa.string()),
                ("segment_index", pa.int32()),
                ("num_segments", pa.int32()),
                ("messages", pa.list_(message)),
                ("images", pa.list_(pa.string())),
            ]
        )
        self._pa = pa
        self.path = path
        self.tmp = _tmp(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= _PARQUET_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(self._pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()
        os.replace(self.tmp, self.path)


def write_outputs(out_dir: str | os.PathLike, settings: dict[str, Any], plots: bool = True) -> dict[str, Any]:
    """(Re)write every derived output of `out_dir` from its records; returns the stats."""
    out = Path(out_dir)
    stats = StatsAccumulator(tuple(settings["families"]))
    system_prompt = settings["system_prompt"]
    sft_path = out / SFT_FILE
    sink = _ParquetSink(out / HF_DIR / HF_FILE)
    first = True
    with atomic_open(sft_path) as sft:
        sft.write("[")
        for record in RecordLog(out).iter_sorted():
            stats.add(record)
            if record["kind"] != "problem":
                continue
            for k in range(len(record["turns"])):
                sft.write("\n" if first else ",\n")
                sft.write(json.dumps(sharegpt_sample(record, k, system_prompt), ensure_ascii=False))
                sink.add(typed_sample(record, k, system_prompt))
                first = False
        sft.write("\n]\n")
    sink.close()
    write_text_atomic(out / DATASET_INFO_FILE, json.dumps(dataset_info(settings["dataset_name"]), indent=2) + "\n")
    result = stats.result(settings)
    write_text_atomic(out / STATS_FILE, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    if plots:
        from vtcr.data.plots import write_plots

        write_plots(out / PLOTS_DIR, result, stats.histograms())
    return result


def load_sft_dataset(out_dir: str | os.PathLike, decode_images: bool = True, cache_dir: str | None = None):
    """The built samples as a `datasets.Dataset` in TRL form.

    With `decode_images`, `images` becomes a list of `datasets.Image` (PIL on access) read from
    the build folder; otherwise it stays the list of paths relative to the folder.
    """
    import datasets

    out = Path(out_dir).resolve()
    path = out / HF_DIR / HF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no built dataset at {path} (run `vtcr build-data` first)")
    ds = datasets.Dataset.from_parquet(str(path), cache_dir=cache_dir)
    if decode_images:
        root = str(out)
        ds = ds.map(lambda row: {"images": [os.path.join(root, p) for p in row["images"]]})
        list_of = getattr(datasets, "List", None) or datasets.Sequence  # List is datasets >= 4
        ds = ds.cast_column("images", list_of(datasets.Image()))
    return ds
