"""What optical memory costs and saves: replay real reasoning traces through a random-weight model
of a real architecture and size in every mode, and put the measurements beside an analytic cost
model that predicts them on other hardware.

    report = run_efficiency(EfficiencyConfig(arch="qwen3-vl", size="small", limit=4), "eff-out")
    report["summary"]["batch_sizes"]["1"]["vtc"]["total_s"]

Compute does not depend on the weights' values, so a random-weight model of the published shapes
costs what the real one does. Each trace is segmented exactly as build-data segments it
(`vtcr.data.build.prepare_problem`, `segment_tokens`), and every mode decodes the same tokens
(`vtcr.bench.replay` says what each mode sends). Per trace, mode and batch size: prefill / decode /
render / preprocess / total seconds, prefill tokens, peak KV-cache bytes, peak memory, decode
tokens/s. The cost model (`vtcr.bench.cost_model`) is evaluated on the same rounds, for the model
replayed (roofline of this CPU, measured) and for the real configs of the family (config.json from
the shared models folder when it has one, else the family table) on data-sheet GPUs.

Bad input is refused before anything heavy: a trace file without a usable trace (the reason of every
row), a model that cannot fit in the memory available (estimated bytes of weights + KV cache), and
`device="cuda"` without a GPU. The CUDA path (bf16 by default there) is written for the 2b and 8b
sizes on a lent GPU; no test needs it.

Outputs in OUT: `summary.json` (the `--json` object) and `efficiency_b{B}.png` per batch size.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vtcr._io import find_shared_data, write_json_atomic

from .cost_model import DEVICES, H100, ModelShape, Round, calibrate_cpu, decode_step_seconds, schedule_cost, with_overhead
from .replay import CLOCKS, MODES, ReplayTrace, torch_threads

RESULT_FILE = "summary.json"
SHARED_TRACES = "traces/sky_t1_traces.jsonl.gz"
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# The real checkpoints whose config.json the cost model reads (folder names in the shared models folder).
REAL_FOLDERS = {
    ("qwen3-vl", "2b"): "Qwen__Qwen3-VL-2B-Instruct",
    ("qwen3-vl", "8b"): "Qwen__Qwen3-VL-8B-Instruct",
    ("qwen2.5-vl", "8b"): "Qwen__Qwen2.5-VL-7B-Instruct",
    ("glm-4.1v", "8b"): "zai-org__GLM-4.1V-9B-Thinking",
}
SELECT = ("first", "longest", "spread")
PREDICT_BATCHES = (1, 8, 32, 64)  # batch sizes the cost model predicts the real sizes at (H100)
MEMORY_HEADROOM = 0.9  # refuse when the estimate exceeds this share of the memory available


@dataclass(frozen=True)
class EfficiencyConfig:
    """What `run_efficiency` measures. The CLI (`vtcr bench efficiency`) takes its defaults from here."""

    arch: str = "qwen3-vl"
    size: str = "small"
    like: str | None = None  # a real checkpoint's metadata folder: its config.json shrunk to `size`
    traces: str = ""  # JSONL(.gz); empty: the shared traces
    limit: int | None = None  # N traces (the first N usable, or the N longest with select="longest")
    select: str = "first"  # "first" | "longest" | "spread" (evenly over the lengths of all usable traces)
    segment_tokens: int = 4096  # build-data's default
    batch_sizes: tuple[int, ...] = (1, 8)
    modes: tuple[str, ...] = MODES
    device: str = "cpu"
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    preset: str = "dense"  # render preset of the pages
    problem_field: str = "problem"
    trace_field: str = "r1_style"
    answer_field: str = "gt_answer"
    id_field: str | None = "id"
    drop_if: tuple[str, ...] = ("likely_truncated",)
    decode_stride: int = 1  # time every S-th decode step only (the others fed as untimed chunks)
    clock: str = "wall"  # "wall" | "process" (CPU time of this process: steadier on a shared CPU)
    seed: int = 0
    plot: bool = True

    def __post_init__(self) -> None:
        from vtcr.models.architectures import resolve_size

        object.__setattr__(self, "size", resolve_size(self.arch, self.size))  # ValueError naming the choices
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.select not in SELECT:
            raise ValueError(f"select must be one of {', '.join(SELECT)}, got {self.select!r}")
        if not self.batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise ValueError(f"batch sizes must be positive ints, got {self.batch_sizes!r}")
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise ValueError(f"unknown mode(s) {unknown or self.modes!r}; choose from {', '.join(MODES)}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if isinstance(self.decode_stride, bool) or not isinstance(self.decode_stride, int) or self.decode_stride < 1:
            raise ValueError(f"decode_stride must be an int >= 1, got {self.decode_stride!r}")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {self.clock!r}")
        if self.clock == "process" and self.device != "cpu":
            raise ValueError("clock 'process' measures CPU time: use it with device cpu only")
        if self.dtype is not None and self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype {self.dtype!r}: choose one of {', '.join(DTYPE_BYTES)}")
        object.__setattr__(self, "batch_sizes", tuple(self.batch_sizes))
        object.__setattr__(self, "modes", tuple(self.modes))
        object.__setattr__(self, "drop_if", tuple(self.drop_if))

    @property
    def resolved_dtype(self) -> str:
        return self.dtype or ("float32" if self.device == "cpu" else "bfloat16")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- traces --------------------------------------------------------------------------------------


def default_traces() -> Path:
    return find_shared_data() / SHARED_TRACES


def load_traces(config: EfficiencyConfig, tokenizer: Any) -> list[ReplayTrace]:
    """The traces to replay, segmented as build-data segments them with `tokenizer`. ValueError
    naming every row's reason when none is usable."""
    from vtcr.data.build import prepare_problem
    from vtcr.data.sources import Rejected, SourceConfig, iter_source
    from vtcr.tokens import count_text_tokens

    path = config.traces or str(default_traces())
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"traces file not found: {path}")
    source = SourceConfig(path, format="jsonl", problem_field=config.problem_field, trace_field=config.trace_field,
                          answer_field=config.answer_field, id_field=config.id_field, drop_if=config.drop_if)  # fmt: skip

    def count(texts):
        return count_text_tokens(list(texts), tokenizer)

    usable: list[ReplayTrace] = []
    why: list[str] = []
    for item in iter_source(source):
        if isinstance(item, Rejected):
            where = f"row {item.index}" if item.index is not None else f"file {item.file}"
            why.append(f"{where}{f' ({item.id})' if item.id else ''}: {item.reason} ({item.detail})")
            continue
        record, _ = prepare_problem(item, config.segment_tokens, 1, count)
        if record.get("kind") != "problem":
            why.append(f"row {item.index} ({item.id}): {record.get('reason')} ({record.get('detail')})")
            continue
        turns = tuple(record["turns"])
        ids = tuple(tuple(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in turns)
        usable.append(ReplayTrace(id=item.id, question=item.question, turns=turns, turn_ids=ids))
        if config.select == "first" and config.limit is not None and len(usable) >= config.limit:
            break
    if not usable:
        shown = "\n  ".join(why[:30]) + (f"\n  ... and {len(why) - 30} more" if len(why) > 30 else "")
        raise ValueError(f"{path}: no usable trace (fields problem={config.problem_field!r}, "
                         f"trace={config.trace_field!r}, answer={config.answer_field!r}); per row:\n  "
                         + (shown or "the file holds no rows"))  # fmt: skip
    if config.select == "longest":
        usable.sort(key=lambda t: (-t.tokens, t.id))
        usable = usable[: config.limit] if config.limit else usable
    elif config.select == "spread" and config.limit and config.limit < len(usable):
        usable.sort(key=lambda t: (t.tokens, t.id))  # the shortest, the longest and evenly between
        n = config.limit
        picks = sorted({round(i * (len(usable) - 1) / max(n - 1, 1)) for i in range(n)})
        usable = [usable[i] for i in picks]
    return sorted(usable, key=lambda t: (t.tokens, t.id))


# ---- the model -----------------------------------------------------------------------------------


def tokenizer_for(arch: str) -> str:
    from vtcr.models.tokenizer import GLM_STAND_IN
    from vtcr.tokens import BUILTIN_TOKENIZER

    return GLM_STAND_IN if arch == "glm-4.1v" else BUILTIN_TOKENIZER


def model_config(config: EfficiencyConfig, tokenizer: Any) -> tuple[Any, Any, str | None]:
    """(transformers config, image processor, chat template) of the model to replay; the tokenizer
    is made to speak the family's format in place."""
    from vtcr.models.architectures import dims
    from vtcr.models.chat_template import chat_template
    from vtcr.models.processor import make_image_processor
    from vtcr.models.tokenizer import prepare_tokenizer, token_ids

    arch, size = config.arch, config.size
    if config.like is None:
        ids = prepare_tokenizer(tokenizer, arch, published_vocab_size=dims(arch, size).vocab_size)
        from vtcr.models.architectures import build_config

        return build_config(arch, size, ids), make_image_processor(arch), chat_template(arch)
    from vtcr.models.metadata import read_metadata
    from vtcr.models.tokenizer import check_family_tokens

    meta = read_metadata(config.like)
    if meta.arch != arch:
        raise ValueError(f"--like {config.like} is a {meta.arch} folder, not {arch}")
    check_family_tokens(tokenizer, arch, tokenizer_for(arch))
    from vtcr.models.architectures import family

    tok_config = meta.tokenizer_config or {}
    tokenizer.eos_token = tok_config.get("eos_token") or family(arch).eos_token
    tokenizer.pad_token = tok_config.get("pad_token") or family(arch).pad_token
    tokenizer.chat_template = meta.chat_template or chat_template(arch)
    ids = token_ids(tokenizer, arch, published_vocab_size=dims(arch, size).vocab_size)
    image_processor = make_image_processor(arch, meta.preprocessor_config, where=str(meta.folder))
    return meta.config_at(size, ids), image_processor, tokenizer.chat_template


def parameter_count(model_cfg: Any) -> int:
    """Parameters of a model of `model_cfg`, counted on the meta device (nothing allocated)."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(model_cfg)
    return sum(p.numel() for p in model.parameters())


def available_memory(device: str) -> tuple[int, str]:
    """(bytes available, what they are) on `device`."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free), f"free memory of {torch.cuda.get_device_name(torch.device(device))}"
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable RAM"
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")), "free RAM"


def memory_estimate(shape: ModelShape, params: int, dtype_bytes: int, max_context: int, max_batch: int) -> dict[str, int]:
    """Bytes the replay needs at its peak: weights, the KV cache of the longest context at the
    largest batch, and one row of logits per sequence (float32)."""
    weights = params * dtype_bytes
    kv = shape.kv_bytes_per_token(dtype_bytes) * max_context * max_batch
    logits = 4 * shape.vocab * max_batch * 2
    return {"weights": weights, "kv_cache": kv, "logits": logits, "total": weights + kv + logits}


def check_fits(estimate: dict[str, int], available: int, what: str, where: str) -> None:
    gib = 1024**3
    if estimate["total"] > MEMORY_HEADROOM * available:
        raise MemoryError(
            f"{where} does not fit: it needs about {estimate['total'] / gib:.1f} GiB (weights "
            f"{estimate['weights'] / gib:.1f} GiB + KV cache {estimate['kv_cache'] / gib:.1f} GiB + logits "
            f"{estimate['logits'] / gib:.2f} GiB) but {what} is {available / gib:.1f} GiB; use a smaller --size, "
            "fewer/shorter traces (--limit), smaller --batch-sizes or another --device"
        )


def check_device(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise RuntimeError(f"--device {device}: no CUDA GPU is visible to torch {torch.__version__} ({build}); "
                               "use --device cpu")  # fmt: skip


def build_model(model_cfg: Any, device: str, dtype: str, seed: int) -> Any:
    import torch
    from transformers import AutoModelForImageTextToText

    target = torch.device(device)
    with torch.random.fork_rng(devices=[target.index or 0] if target.type == "cuda" else []):
        torch.manual_seed(seed)
        with target:
            model = AutoModelForImageTextToText.from_config(model_cfg, dtype=getattr(torch, dtype))
    return model.eval()


def shape_of(model_cfg: Any, source: str) -> ModelShape:
    return ModelShape.from_config(model_cfg.to_dict(), source=source)


def real_shapes(arch: str) -> dict[str, ModelShape]:
    """The published sizes of `arch` as cost-model shapes: config.json of the shared models folder
    when it has one, else vtcr's family table (`build_config`, said in `source`)."""
    from vtcr.models.architectures import _DIMS, build_config

    models = find_shared_data(required=False)
    models = models.parent / "models" if models is not None else None
    out: dict[str, ModelShape] = {}
    for size in ("2b", "8b"):
        if (arch, size) not in _DIMS:
            continue
        folder = REAL_FOLDERS.get((arch, size))
        path = models / folder / "config.json" if models is not None and folder else None
        if path is not None and path.is_file():
            out[size] = ModelShape.from_file(path)
        else:
            d = _DIMS[(arch, size)]
            out[size] = ModelShape.from_config(build_config(arch, size).to_dict(),
                                               source=f"vtcr family table ({d.published}; no config.json here)")  # fmt: skip
    return out


# ---- the run -------------------------------------------------------------------------------------


def run_efficiency(config: EfficiencyConfig, out_dir: str | os.PathLike | None = None, *, progress: bool = True,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Replay the traces in every mode at every batch size; write OUT/summary.json and plots."""
    check_device(config.device)
    import torch

    from vtcr.models.processor import make_processor
    from vtcr.models.tokenizer import load_family_tokenizer
    from vtcr.render import get_renderer, preset

    threads = torch_threads()
    torch.set_num_threads(threads)
    tokenizer = load_family_tokenizer(tokenizer_for(config.arch))
    model_cfg, image_processor, template = model_config(config, tokenizer)
    traces = load_traces(config, tokenizer)
    dtype = config.resolved_dtype
    dbytes = DTYPE_BYTES[dtype]
    shape = shape_of(model_cfg, f"{config.arch} {config.size}" + (f" like {config.like}" if config.like else ""))
    params = parameter_count(model_cfg)
    longest = max(t.tokens for t in traces) + 2048  # the question and the chat format
    estimate = memory_estimate(shape, params, dbytes, longest, max(config.batch_sizes))
    available, what = available_memory(config.device)
    check_fits(estimate, available, what, f"{config.arch} {config.size} ({params / 1e6:.1f}M parameters, {dtype})")

    model = build_model(model_cfg, config.device, dtype, config.seed)
    processor = make_processor(config.arch, tokenizer, template, image_processor)
    renderer = get_renderer(preset(config.preset)).warm_up()
    from .replay import Replayer

    replayer = Replayer(model, processor, renderer, decode_stride=config.decode_stride, clock=config.clock)
    # warm-up: one short round in every mode, so the first trace does not pay one-time costs
    warm = ReplayTrace(id="warm-up", question="1+1?", turns=("a b c. " * 20,) * 2,
                       turn_ids=(tuple(tokenizer("a b c. " * 20)["input_ids"]),) * 2)  # fmt: skip
    warm_runs = {mode: replayer.run(warm, mode, 1) for mode in config.modes}

    results: dict[int, list[dict[str, Any]]] = {}
    rounds: dict[tuple[int, str, str], list[Round]] = {}
    jobs = [(b, t) for b in config.batch_sizes for t in traces]
    from tqdm import tqdm

    bar = tqdm(total=len(jobs) * len(config.modes), desc="replay", unit="run", disable=not progress)
    for batch, trace in jobs:
        modes: dict[str, Any] = {}
        for mode in config.modes:
            bar.set_postfix_str(f"b{batch} {trace.tokens} tok {mode}")
            r = replayer.run(trace, mode, batch)
            modes[mode] = r.to_dict(batch)
            rounds[(batch, trace.id, mode)] = r.rounds
            bar.update()
        results.setdefault(batch, []).append({"id": trace.id, "tokens": trace.tokens, "segments": len(trace.turns),
                                              "modes": modes})  # fmt: skip
    bar.close()

    cpu = None
    if config.device == "cpu":  # this CPU's roofline, plus the fixed cost of a forward seen in the warm-up
        cpu = calibrate_cpu(threads)
        first = next(iter(warm_runs.values()))
        step = first.decode_s / max(first.decode_steps, 1)
        context = first.rounds[0].cached + first.rounds[0].prefill
        cpu = with_overhead(cpu, step - decode_step_seconds(shape, context, 1, dbytes, cpu))
    report = {
        "config": config.to_dict(),
        "model": {"arch": config.arch, "size": config.size, "like": config.like, "parameters": params, "dtype": dtype,
                  "device": config.device, "threads": threads, "shape": shape.to_dict(),
                  "kv_bytes_per_token": shape.kv_bytes_per_token(dbytes), "memory_estimate": estimate},  # fmt: skip
        "traces": results[config.batch_sizes[0]] if 1 not in results else results[1],
        "by_batch": {str(b): v for b, v in results.items()},
        "summary": summarize(results, config.modes),
        "cost_model": cost_model_report(config, shape, dbytes, traces, rounds, results, cpu),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / RESULT_FILE, report)
        if config.plot:
            from .efficiency_plot import plot_efficiency

            report["plots"] = plot_efficiency(report, out)
            write_json_atomic(out / RESULT_FILE, report)
    return report


def crossover(rows: list[dict[str, Any]], mode: str, base: str = "standard") -> int | None:
    """The shortest trace length (tokens) from which on `mode` is faster than `base` on every
    longer trace; None when it is not faster on the longest one."""
    rows = sorted(rows, key=lambda r: r["tokens"])
    found = None
    for r in reversed(rows):
        if mode not in r["modes"] or base not in r["modes"]:
            return None
        if r["modes"][mode]["total_s"] < r["modes"][base]["total_s"]:
            found = r["tokens"]
        else:
            break
    return found


def summarize(results: dict[int, list[dict[str, Any]]], modes: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"batch_sizes": {}}
    for batch, rows in results.items():
        per: dict[str, Any] = {}
        longest = max(rows, key=lambda r: r["tokens"])
        for mode in modes:
            ms = [r["modes"][mode] for r in rows]
            decode_s = sum(m["decode_s"] for m in ms)
            steps = sum(m["decode_tokens"] - m["rounds"] for m in ms)
            per[mode] = {
                "traces": len(ms),
                "prefill_s": sum(m["prefill_s"] for m in ms), "decode_s": decode_s,
                "render_s": sum(m["render_s"] for m in ms), "preprocess_s": sum(m["preprocess_s"] for m in ms),
                "total_s": sum(m["total_s"] for m in ms),
                "prefill_tokens": sum(m["prefill_tokens"] for m in ms),
                "decode_tokens": sum(m["decode_tokens"] for m in ms),
                "decode_tokens_per_s": batch * steps / decode_s if decode_s > 0 else None,
                "peak_kv_bytes": max(m["peak_kv_bytes"] for m in ms),
                "peak_memory_bytes": max((m["peak_memory_bytes"] or 0) for m in ms) or None,
                "longest_trace": {"id": longest["id"], "tokens": longest["tokens"], **{
                    k: longest["modes"][mode][k] for k in ("total_s", "prefill_s", "decode_s", "peak_kv_bytes",
                                                             "prefill_tokens")}},  # fmt: skip
            }  # fmt: skip
        if "standard" in per:
            std = per["standard"]
            for mode, m in per.items():
                lt, ls = m["longest_trace"], std["longest_trace"]
                m["speedup_vs_standard"] = std["total_s"] / m["total_s"] if m["total_s"] else None
                m["longest_speedup_vs_standard"] = ls["total_s"] / lt["total_s"] if lt["total_s"] else None
                m["longest_kv_smaller_than_standard"] = ls["peak_kv_bytes"] / lt["peak_kv_bytes"] if lt["peak_kv_bytes"] else None
                m["faster_than_standard_from_tokens"] = crossover(rows, mode) if mode != "standard" else None
        if "vtc" in per and "vtc_no_reuse" in per:
            a, b = per["vtc"], per["vtc_no_reuse"]
            out.setdefault("prefix_reuse", {})[str(batch)] = {
                "prefill_tokens_ratio": b["prefill_tokens"] / a["prefill_tokens"] if a["prefill_tokens"] else None,
                "prefill_s_ratio": (b["prefill_s"] + b["preprocess_s"]) / (a["prefill_s"] + a["preprocess_s"])
                if a["prefill_s"] else None,
            }  # fmt: skip
        out["batch_sizes"][str(batch)] = per
    return out


def cost_model_report(config: EfficiencyConfig, shape: ModelShape, dbytes: int, traces: list[ReplayTrace],
                      rounds: dict[tuple[int, str, str], list[Round]], results: dict[int, list[dict[str, Any]]],
                      cpu: Any) -> dict[str, Any]:
    """The analytic model on the replay's own rounds: for the replayed model (beside the measured
    seconds, on this CPU's measured roofline) and for the family's real sizes on data-sheet GPUs."""
    out: dict[str, Any] = {"cpu_roofline": None, "replayed": {}, "real": {}}
    if cpu is not None:
        out["cpu_roofline"] = {"name": cpu.name, "flops_per_s": cpu.flops_per_s, "bytes_per_s": cpu.bytes_per_s,
                               "forward_overhead_s": cpu.forward_overhead_s}
    reals = real_shapes(config.arch)
    for size, real in reals.items():
        out["real"][size] = {"source": real.source, "kv_bytes_per_token_bf16": real.kv_bytes_per_token(2),
                             "text_parameters": real.text_params, "vision_parameters": real.vision_params,
                             "batch_sizes": {}}  # fmt: skip
    for batch in config.batch_sizes:
        rep: dict[str, Any] = {}
        for mode in config.modes:
            all_rounds = [r for t in traces for r in rounds[(batch, t.id, mode)]]
            c = schedule_cost(shape, all_rounds, batch, dbytes, cpu)
            steps = max(c["decode_steps"], 1)
            per_prefills = max(sum(1 for r in all_rounds), 1)
            c["flops_per_prefill"] = c["prefill_flops"] / per_prefills
            c["bytes_per_prefill"] = c["prefill_bytes"] / per_prefills
            c["flops_per_decode_step"] = c["decode_flops"] / steps
            c["bytes_per_decode_step"] = c["decode_bytes"] / steps
            measured = sum(r["modes"][mode]["total_s"] for r in results[batch])
            c["measured_total_s"] = measured
            rep[mode] = c
        if "standard" in rep:
            for m in rep.values():
                if "total_s" in m:
                    m["predicted_speedup_vs_standard"] = rep["standard"]["total_s"] / m["total_s"]
                m["measured_speedup_vs_standard"] = rep["standard"]["measured_total_s"] / m["measured_total_s"]
        out["replayed"][str(batch)] = rep
        for size, real in reals.items():
            per_gpu: dict[str, Any] = {}
            for gpu_key in ("h100", "h200"):
                gpu = DEVICES[gpu_key]
                modes = {}
                for mode in config.modes:
                    per_trace = []
                    for t in traces:
                        c = schedule_cost(real, rounds[(batch, t.id, mode)], batch, 2, gpu)
                        per_trace.append({"id": t.id, "tokens": t.tokens, "total_s": c["total_s"],
                                          "prefill_s": c["prefill_s"], "decode_s": c["decode_s"],
                                          "peak_kv_bytes": c["peak_kv_bytes"]})  # fmt: skip
                    modes[mode] = {"total_s": sum(p["total_s"] for p in per_trace), "traces": per_trace}
                if "standard" in modes:
                    for m in modes.values():
                        m["speedup_vs_standard"] = modes["standard"]["total_s"] / m["total_s"]
                        for p, s in zip(m["traces"], modes["standard"]["traces"]):
                            p["speedup_vs_standard"] = s["total_s"] / p["total_s"]
                per_gpu[gpu_key] = {"device": gpu.name, "modes": modes}
            out["real"][size]["batch_sizes"][str(batch)] = per_gpu
    # the real sizes at larger batches (the rounds do not depend on the batch): where batching leads
    base = config.batch_sizes[0]
    for size, real in reals.items():
        table: dict[str, Any] = {}
        for batch in PREDICT_BATCHES:
            row: dict[str, Any] = {}
            for mode in config.modes:
                per = [schedule_cost(real, rounds[(base, t.id, mode)], batch, 2, H100) for t in traces]
                longest_i = max(range(len(traces)), key=lambda i: traces[i].tokens)
                row[mode] = {"total_s": sum(c["total_s"] for c in per),
                             "longest_total_s": per[longest_i]["total_s"],
                             "longest_peak_kv_bytes": per[longest_i]["peak_kv_bytes"],
                             "weights_bytes": 2 * (real.text_params + real.vision_params)}  # fmt: skip
            if "standard" in row:
                for v in row.values():
                    v["speedup_vs_standard"] = row["standard"]["total_s"] / v["total_s"]
                    v["longest_speedup_vs_standard"] = row["standard"]["longest_total_s"] / v["longest_total_s"]
            table[str(batch)] = row
        out["real"][size]["h100_by_batch"] = table
    return out


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report)


def _mib(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 1024**2:.1f}M"


def _x(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def format_report(report: dict[str, Any]) -> str:
    """The tables a person reads: per trace, the summary per batch size, and the cost model."""
    m = report["model"]
    lines = [f"model: {m['arch']} {m['size']}{' like ' + m['like'] if m['like'] else ''} "
             f"({m['parameters'] / 1e6:.1f}M parameters, {m['dtype']}, {m['device']}, {m['threads']} thread(s)); "
             f"KV cache {m['kv_bytes_per_token'] / 1024:.1f} KiB/token"]  # fmt: skip
    head = f"{'tokens':>7} {'mode':<13}{'prefill tok':>12}{'prefill s':>10}{'decode s':>10}{'render+pre s':>13}" \
           f"{'total s':>9}{'peak KV':>9}{'peak mem':>9}{'dec tok/s':>10}"
    for batch, rows in report["by_batch"].items():
        lines += ["", f"batch {batch}:", head]
        for r in rows:
            for mode, v in r["modes"].items():
                tps = v["decode_tokens_per_s"]
                lines.append(f"{r['tokens']:>7} {mode:<13}{v['prefill_tokens']:>12}{v['prefill_s']:>10.2f}"
                             f"{v['decode_s']:>10.2f}{v['render_s'] + v['preprocess_s']:>13.2f}{v['total_s']:>9.2f}"
                             f"{_mib(v['peak_kv_bytes']):>9}{_mib(v['peak_memory_bytes']):>9}"
                             f"{'n/a' if tps is None else f'{tps:.1f}':>10}")  # fmt: skip
    lines += ["", "summary (all traces; speed-up = standard's total s / the mode's):"]
    for batch, per in report["summary"]["batch_sizes"].items():
        for mode, v in per.items():
            cross = v.get("faster_than_standard_from_tokens")
            lines.append(f"  batch {batch:>2} {mode:<13} total {v['total_s']:8.2f} s  speed-up {_x(v.get('speedup_vs_standard'))}"
                         f"  longest trace: {_x(v.get('longest_speedup_vs_standard'))}, KV "
                         f"{_x(v.get('longest_kv_smaller_than_standard'))} smaller"
                         + ("" if mode == "standard" else
                            f"  faster from {cross} tokens on" if cross else "  never faster on the longest trace"))  # fmt: skip
    for batch, v in report["summary"].get("prefix_reuse", {}).items():
        lines.append(f"  prefix reuse, batch {batch}: vtc_no_reuse prefills {_x(v['prefill_tokens_ratio'])} the tokens "
                     f"and {_x(v['prefill_s_ratio'])} the seconds (prefill + preprocessing) of vtc")
    cm = report["cost_model"]
    lines += ["", "cost model (roofline, FLOPs and bytes of every forward of the same rounds):"]
    if cm.get("cpu_roofline"):
        c = cm["cpu_roofline"]
        lines.append(f"  {c['name']}: {c['flops_per_s'] / 1e9:.1f} GFLOP/s, {c['bytes_per_s'] / 1e9:.1f} GB/s, "
                     f"{c['forward_overhead_s'] * 1e3:.1f} ms fixed per forward (fitted on the warm-up)")
    for batch, per in cm["replayed"].items():
        for mode, v in per.items():
            pred = v.get("total_s")
            lines.append(f"  batch {batch:>2} {mode:<13} {v['flops_per_decode_step'] / 1e6:9.1f} MFLOP, "
                         f"{v['bytes_per_decode_step'] / 1e6:8.1f} MB per decode step; "
                         f"{v['flops_per_prefill'] / 1e9:8.2f} GFLOP per prefill; predicted "
                         f"{'n/a' if pred is None else f'{pred:.2f} s'} vs measured {v['measured_total_s']:.2f} s; speed-up "
                         f"predicted {_x(v.get('predicted_speedup_vs_standard'))}, measured "
                         f"{_x(v.get('measured_speedup_vs_standard'))}")  # fmt: skip
    for size, real in cm["real"].items():
        lines.append(f"  {size}: KV {real['kv_bytes_per_token_bf16'] / 1024:.0f} KiB/token bf16, "
                     f"{real['text_parameters'] / 1e9:.2f}B text parameters ({real['source']})")
        for batch, gpus in real["batch_sizes"].items():
            for key, g in gpus.items():
                modes = g["modes"]
                parts = []
                for mode, v in modes.items():
                    if mode == "standard":
                        continue
                    last = max(v["traces"], key=lambda t: t["tokens"])
                    parts.append(f"{mode} {_x(v.get('speedup_vs_standard'))} "
                                 f"(longest {_x(last.get('speedup_vs_standard'))})")
                if "standard" in modes:
                    lines.append(f"    batch {batch:>2} {g['device']}: standard {modes['standard']['total_s']:.2f} s; "
                                 + ", ".join(parts))  # fmt: skip
        by_batch = real.get("h100_by_batch", {})
        if by_batch:
            cells = []
            for batch, row in by_batch.items():
                if "vtc" in row and "standard" in row:
                    v = row["vtc"]
                    cells.append(f"b{batch} {_x(v['speedup_vs_standard'])} (longest {_x(v['longest_speedup_vs_standard'])}, "
                                 f"KV {v['longest_peak_kv_bytes'] / 1024**3:.1f} vs "
                                 f"{row['standard']['longest_peak_kv_bytes'] / 1024**3:.1f} GiB)")  # fmt: skip
            if cells:
                lines.append("    vtc vs standard on an H100 by batch: " + "; ".join(cells))
    return "\n".join(lines)
