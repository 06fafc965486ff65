"""VTC-R1 training data: trace sources, lossless segmentation, rendered SFT samples.

    from vtcr.data import BuildConfig, SourceConfig, build_dataset
    report = build_dataset(BuildConfig(SourceConfig("traces.jsonl.gz", trace_field="r1_style")), "out/")

Modules: `sources` (OpenR1-Math-220K and generic JSONL rows -> problems), `segment` (split a
`<think>` trace into token-bounded segments), `samples` (sample k = question + pages of segments
0..k-1 -> segment k), `records` (the resumable per-problem record file), `outputs` (sharegpt JSON,
HF parquet, stats), `plots`, `build` (the pipeline).

The shared Sky-T1 traces are written on benchmark test problems: they test this builder; a model
trained on a set built from them must not be evaluated on those benchmarks.
"""

from vtcr.data.build import BuildConfig, BuildReport, build_dataset
from vtcr.data.outputs import load_sft_dataset
from vtcr.data.segment import assistant_turns, normalize_trace, split_reasoning, split_trace
from vtcr.data.sources import REJECT_REASONS, SourceConfig, iter_source

__all__ = [
    "REJECT_REASONS",
    "BuildConfig",
    "BuildReport",
    "SourceConfig",
    "assistant_turns",
    "build_dataset",
    "iter_source",
    "load_sft_dataset",
    "normalize_trace",
    "split_reasoning",
    "split_trace",
]
