"""An analytic cost model of one replay: FLOPs and bytes moved per prefill and per decode step, per
mode, from a model's config.json -- so a user can predict on a GPU they do not have what the CPU
replay measured.

    shape = ModelShape.from_config(json.load(open(".../Qwen__Qwen3-VL-8B-Instruct/config.json")))
    shape.kv_bytes_per_token(2)        # 147456 = 144 KiB: 2 (K, V) x 36 layers x 8 KV heads x 128 x 2 bytes
    cost = schedule_cost(shape, rounds, batch=8, dtype_bytes=2)   # rounds: what the replay did
    predict_seconds(cost, H100)        # roofline time of every forward, summed

What is counted (one sequence; a batch of B multiplies activations and KV, not the weights read):

- linear layers: 2 FLOPs per weight per token (attention projections, MLP; the LM head once per
  forward for the last position only, as prefill keeps one logit row and decode one per row);
- attention: 4 x layers x heads x head_dim FLOPs per (query, key) pair (QK^T and AV), causal: a
  prefill of n new tokens after c cached ones has n*c + n(n+1)/2 pairs;
- the vision tower: 2 FLOPs per weight per patch, plus 4 x depth x hidden per (patch, patch) pair
  inside each image (full attention; Qwen2.5-VL's windowed blocks make this an upper bound), then
  the patch merger;
- bytes: every forward reads all weights of the text model once per batch (decode is bound by it),
  reads the KV cache of every row (2 x layers x KV heads x head_dim x dtype bytes per token) and
  writes the new tokens' KV; prefill also reads the vision weights when it has images.

A forward costs max(FLOPs / peak FLOP/s, bytes / bandwidth) (a roofline), plus a fixed launch
overhead per forward that the CPU calibration measures (`calibrate_cpu`). The model ignores
activation traffic, kernel efficiency below peak and Python time -- exactly what the CPU figures
beside it show the size of.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

KIB = 1024


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a VLM that its cost depends on, read from a config.json dict."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tie_embeddings: bool
    vision_depth: int
    vision_hidden: int
    vision_intermediate: int
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    vision_out: int
    source: str = ""

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str = "") -> ModelShape:
        """From a config.json dict (Qwen2.5-VL, Qwen3-VL, GLM-4.1V: `text_config` / `vision_config`;
        a config without `text_config` keeps the text fields at the top level, as Qwen2.5-VL's does)."""
        text = config.get("text_config") or config
        vision = config.get("vision_config") or {}
        where = source or "config"

        def need(d: dict, key: str, what: str) -> int:
            if d.get(key) is None:
                raise ValueError(f"{where}: {what} has no {key!r}")
            return int(d[key])

        hidden = need(text, "hidden_size", "text_config")
        heads = need(text, "num_attention_heads", "text_config")
        head_dim = int(text.get("head_dim") or hidden // heads)
        tie = config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
        v_hidden = int(vision.get("hidden_size") or 0)
        return cls(
            layers=need(text, "num_hidden_layers", "text_config"), hidden=hidden, heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads), head_dim=head_dim,
            intermediate=need(text, "intermediate_size", "text_config"), vocab=need(text, "vocab_size", "text_config"),
            tie_embeddings=bool(tie), vision_depth=int(vision.get("depth") or 0), vision_hidden=v_hidden,
            vision_intermediate=int(vision.get("intermediate_size") or 4 * v_hidden),
            patch_size=int(vision.get("patch_size") or 14), merge_size=int(vision.get("spatial_merge_size") or 2),
            temporal_patch_size=int(vision.get("temporal_patch_size") or 2),
            vision_out=int(vision.get("out_hidden_size") or hidden), source=source,
        )  # fmt: skip

    @classmethod
    def from_file(cls, path: str | Path) -> ModelShape:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the cost model reads a checkpoint's config.json")
        return cls.from_config(json.loads(path.read_text(encoding="utf-8")), source=str(path))

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """KV-cache bytes per token of one sequence: 2 (K, V) x layers x KV heads x head_dim x dtype."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    # ---- parameters ------------------------------------------------------------------------

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer (q, k, v, o projections; gated MLP)."""
        attn = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        return attn + 3 * self.hidden * self.intermediate

    @property
    def text_params(self) -> int:
        """Weights a text forward reads: decoder layers + LM head (the embedding lookup reads one row)."""
        return self.layers * self.layer_params + self.vocab * self.hidden

    @property
    def vision_params(self) -> int:
        if not self.vision_depth:
            return 0
        v = self.vision_hidden
        block = 4 * v * v + 2 * v * self.vision_intermediate
        embed = 3 * self.temporal_patch_size * self.patch_size**2 * v
        merged = v * self.merge_size**2
        merger = merged * merged + merged * self.vision_out
        return self.vision_depth * block + embed + merger

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Device:
    """Peak compute and memory bandwidth of a device (the roofline), and a per-forward overhead."""

    name: str
    flops_per_s: float
    bytes_per_s: float
    forward_overhead_s: float = 0.0


# Dense bf16 tensor-core peaks and HBM bandwidth from the vendors' data sheets (SXM parts).
H100 = Device("H100 SXM (bf16)", 989e12, 3.35e12, 0.0)
H200 = Device("H200 SXM (bf16)", 989e12, 4.8e12, 0.0)
A100 = Device("A100 SXM (bf16)", 312e12, 2.04e12, 0.0)
DEVICES = {"h100": H100, "h200": H200, "a100": A100}


@dataclass(frozen=True)
class Round:
    """One round of a replay as the cost model needs it: the KV already cached when the prompt's
    uncached part is prefilled, that part's length, the patches of every image in it (per image,
    before merging), and the decode steps that follow (each adds one token to the context)."""

    cached: int
    prefill: int
    image_patches: tuple[int, ...]
    decode_steps: int

    def to_dict(self) -> dict[str, Any]:
        return {"cached": self.cached, "prefill": self.prefill, "image_patches": list(self.image_patches),
                "decode_steps": self.decode_steps}  # fmt: skip


def attention_pairs(cached: int, new: int) -> int:
    """Causal (query, key) pairs of `new` tokens after `cached` ones."""
    return new * cached + new * (new + 1) // 2


def prefill_cost(shape: ModelShape, cached: int, new: int, image_patches: Iterable[int], batch: int = 1,
                 dtype_bytes: int = 2) -> dict[str, float]:
    """FLOPs and bytes of one prefill forward of `batch` identical-shape rows."""
    patches = list(image_patches)
    lin = 2 * shape.layers * shape.layer_params * new + 2 * shape.vocab * shape.hidden
    attn = 4 * shape.layers * shape.heads * shape.head_dim * attention_pairs(cached, new)
    v = shape.vision_hidden
    vis_lin = 2 * (shape.vision_params - shape.vision_out * v * shape.merge_size**2) * sum(patches)
    vis_attn = 4 * shape.vision_depth * v * sum(p * p for p in patches)
    flops = batch * (lin + attn + vis_lin + vis_attn)
    kv = shape.kv_bytes_per_token(dtype_bytes)
    weights = (shape.text_params + (shape.vision_params if patches else 0)) * dtype_bytes
    moved = weights + batch * kv * (cached + new)  # read the cached KV, write the new
    return {"flops": float(flops), "bytes": float(moved), "attention_flops": float(batch * attn),
            "vision_flops": float(batch * (vis_lin + vis_attn))}  # fmt: skip


def decode_step_cost(shape: ModelShape, context: int, batch: int = 1, dtype_bytes: int = 2) -> dict[str, float]:
    """FLOPs and bytes of one decode step at `context` tokens already cached, `batch` rows."""
    lin = 2 * shape.text_params
    attn = 4 * shape.layers * shape.heads * shape.head_dim * (context + 1)
    kv = shape.kv_bytes_per_token(dtype_bytes)
    moved = shape.text_params * dtype_bytes + batch * kv * (context + 1)
    return {"flops": float(batch * (lin + attn)), "bytes": float(moved),
            "kv_bytes": float(batch * kv * (context + 1))}  # fmt: skip


def _roof(flops: float, moved: float, device: Device) -> float:
    return max(flops / device.flops_per_s, moved / device.bytes_per_s) + device.forward_overhead_s


def schedule_cost(shape: ModelShape, rounds: Iterable[Round], batch: int = 1, dtype_bytes: int = 2,
                  device: Device | None = None) -> dict[str, float]:
    """Totals over a replay's rounds: prefill and decode FLOPs and bytes, peak KV bytes and, with a
    `device`, the roofline seconds of prefill and decode. Decode steps are summed in closed form
    (FLOPs and bytes are linear in the context; a step is bound by whichever of the two dominates,
    which can switch once along a round, so the time sums the steps exactly in two pieces)."""
    out = {"prefill_flops": 0.0, "prefill_bytes": 0.0, "decode_flops": 0.0, "decode_bytes": 0.0,
           "decode_steps": 0, "peak_kv_bytes": 0.0, "prefill_tokens": 0, "prefill_s": 0.0, "decode_s": 0.0}  # fmt: skip
    kv = shape.kv_bytes_per_token(dtype_bytes)
    a = 4 * shape.layers * shape.heads * shape.head_dim
    for r in rounds:
        p = prefill_cost(shape, r.cached, r.prefill, r.image_patches, batch, dtype_bytes)
        out["prefill_flops"] += p["flops"]
        out["prefill_bytes"] += p["bytes"]
        out["prefill_tokens"] += r.prefill
        start = r.cached + r.prefill  # context of the first decode step
        n = r.decode_steps
        ctx_sum = n * start + n * (n - 1) // 2 + n  # sum of (context + 1) over the steps
        out["decode_flops"] += batch * (n * 2 * shape.text_params + a * ctx_sum)
        out["decode_bytes"] += n * shape.text_params * dtype_bytes + batch * kv * ctx_sum
        out["decode_steps"] += n
        out["peak_kv_bytes"] = max(out["peak_kv_bytes"], batch * kv * (start + max(n, 0)))
        if device is not None:
            out["prefill_s"] += _roof(p["flops"], p["bytes"], device)
            out["decode_s"] += _decode_seconds(shape, start, n, batch, dtype_bytes, device)
    out["total_flops"] = out["prefill_flops"] + out["decode_flops"]
    out["total_bytes"] = out["prefill_bytes"] + out["decode_bytes"]
    if device is None:
        for key in ("prefill_s", "decode_s"):
            out.pop(key)
    else:
        out["total_s"] = out["prefill_s"] + out["decode_s"]
    return out


def _decode_seconds(shape: ModelShape, start: int, n: int, batch: int, dtype_bytes: int, device: Device) -> float:
    """Sum over the `n` decode steps from context `start` of each step's roofline time (exact)."""
    import numpy as np

    if n <= 0:
        return 0.0
    a = 4 * shape.layers * shape.heads * shape.head_dim
    kv = shape.kv_bytes_per_token(dtype_bytes)
    c = np.arange(start + 1, start + 1 + n, dtype=np.float64)  # keys each step attends to
    compute = batch * (2 * shape.text_params + a * c) / device.flops_per_s
    memory = (shape.text_params * dtype_bytes + batch * kv * c) / device.bytes_per_s
    return float(np.maximum(compute, memory).sum()) + n * device.forward_overhead_s


def decode_step_seconds(shape: ModelShape, context: int, batch: int, dtype_bytes: int, device: Device) -> float:
    """Roofline seconds of one decode step at `context` cached tokens (without the fixed overhead)."""
    c = decode_step_cost(shape, context, batch, dtype_bytes)
    return max(c["flops"] / device.flops_per_s, c["bytes"] / device.bytes_per_s)


def calibrate_cpu(threads: int, seconds: float = 0.4) -> Device:
    """This CPU as a roofline: the FLOP/s of a float32 matmul, the bytes/s of a large copy, and the
    fixed cost of a tiny forward-sized op chain, measured now with `threads` torch threads."""
    import time

    import torch

    torch.set_num_threads(threads)
    n = 512
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds / 2:
        a @ b
        reps += 1
    flops = 2 * n**3 * reps / (time.perf_counter() - t0)
    src = torch.empty(32 * 1024 * 1024 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds / 2:
        dst.copy_(src)
        reps += 1
    bandwidth = 2 * src.numel() * 4 * reps / (time.perf_counter() - t0)
    return Device(f"this CPU ({threads} thread(s), fp32, measured)", flops, bandwidth, 0.0)


def with_overhead(device: Device, overhead_s: float) -> Device:
    """`device` with a fixed cost per forward (Python and framework time the roofline does not see)."""
    return Device(device.name, device.flops_per_s, device.bytes_per_s,
                  max(0.0, overhead_s))
