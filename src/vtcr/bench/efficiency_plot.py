"""Plots of `vtcr bench efficiency`: cost against trace length, one figure per batch size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"standard": "tab:red", "vtc": "tab:blue", "vtc_no_reuse": "tab:cyan", "text": "tab:orange"}


def plot_efficiency(report: dict[str, Any], out_dir: str | Path) -> list[str]:
    """efficiency_b{B}.png per batch size: measured total seconds, peak KV cache and the cost
    model's predicted speed-up over standard of the real sizes on an H100, against trace length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    written = []
    for batch, rows in report["by_batch"].items():
        rows = sorted(rows, key=lambda r: r["tokens"])
        x = [r["tokens"] for r in rows]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for mode in rows[0]["modes"]:
            style = dict(marker="o", color=COLORS.get(mode), label=mode)
            axes[0].plot(x, [r["modes"][mode]["total_s"] for r in rows], **style)
            axes[1].plot(x, [r["modes"][mode]["peak_kv_bytes"] / 1024**2 for r in rows], **style)
        axes[0].set(title=f"measured total time, batch {batch}", xlabel="trace tokens", ylabel="s")
        axes[1].set(title="peak KV cache", xlabel="trace tokens", ylabel="MiB")
        for size, real in report["cost_model"]["real"].items():
            g = real["batch_sizes"].get(batch, {}).get("h100")
            if not g:
                continue
            for mode, v in g["modes"].items():
                if mode == "standard":
                    continue
                ts = sorted(v["traces"], key=lambda t: t["tokens"])
                axes[2].plot([t["tokens"] for t in ts], [t["speedup_vs_standard"] for t in ts], marker="o",
                             linestyle="-" if size == "8b" else "--", color=COLORS.get(mode), label=f"{size} {mode}")
        axes[2].axhline(1.0, color="grey", linewidth=0.8)
        axes[2].set(title="cost model: speed-up vs standard, H100 bf16", xlabel="trace tokens", ylabel="x")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"efficiency_b{batch}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path))
    return written
