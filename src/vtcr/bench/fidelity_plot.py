"""The compression-fidelity frontier as a PNG: compression for one VLM family (x) against OCR character
accuracy (y). Configs measured on all texts are labelled points joined by their Pareto frontier; the
render search's trials (accuracy measured on its smaller sample) are small markers, its accepted path a line.
Agg backend, no timestamps: the same figures give the same bytes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

_METADATA = {"Software": None}


def pareto(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both compression and accuracy, by compression."""
    best: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not best or y > best[-1][1]:
            best.append((x, y))
    return sorted(best)


def plot_frontier(report: dict[str, Any], trials: Sequence[Any], path: Path, family: str = "qwen3-vl",
                  margin: float | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    configs = {n: c for n, c in report["configs"].items()
               if c["compression"].get(family) is not None and c["char_accuracy"] is not None}
    with plt.rc_context({"font.size": 9}):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        if trials:
            xs = [t.compression for t in trials if t.accuracy is not None]
            ys = [100 * t.accuracy for t in trials if t.accuracy is not None]
            ax.scatter(xs, ys, s=14, color="#BBBBBB", label="search trials (accuracy on the sample)", zorder=1)
            acc = [(t.compression, 100 * t.accuracy) for t in trials if t.accepted and t.accuracy is not None]
            if acc:
                ax.plot(*zip(*acc), color="#999999", lw=0.8, ls="--", label="search path (sample)", zorder=1)
        pts = [(c["compression"][family], 100 * c["char_accuracy"]) for c in configs.values()]
        if len(pts) > 1:
            ax.plot(*zip(*pareto(pts)), color="#4C72B0", lw=1.2, label="frontier (all texts)", zorder=2)
        for name, c in configs.items():
            x, y = c["compression"][family], 100 * c["char_accuracy"]
            ax.scatter([x], [y], s=40, color="#DD8452" if name == "searched" else "#4C72B0", zorder=3)
            ax.annotate(f"{name} ({x:.2f}x, {y:.1f}%)", (x, y), textcoords="offset points", xytext=(5, 4))
        ref = report.get("search", {}).get("reference_char_accuracy")
        if ref is None and "vtcr1" in configs:
            ref = configs["vtcr1"]["char_accuracy"]
        if ref is not None and margin is not None:
            ax.axhline(100 * (ref - margin), color="#C44E52", lw=0.8, ls=":",
                       label=f"vtcr1 - {100 * margin:g} point(s) (all texts)")
        xs_all = [p[0] for p in pts] + [t.compression for t in trials]
        if xs_all:  # room on the right for the labels
            ax.set_xlim(min(0.0, min(xs_all)), max(xs_all) * 1.25)
        ax.set_xlabel(f"compression, {family} (text tokens / vision tokens)")
        ax.set_ylabel("OCR character accuracy (%)")
        ax.set_title("Compression vs OCR fidelity of rendered pages")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left", fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
        fig.savefig(tmp, dpi=110, metadata=_METADATA)
        os.replace(tmp, path)
        plt.close(fig)
    return path
