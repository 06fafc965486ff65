"""PNG plots of a build: samples per segment index (the paper's Figure 3), compression per vision
family, and length histograms. Drawn from stats only, with the Agg backend and no timestamps, so the
same stats give the same bytes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from vtcr._io import atomic_open

SAMPLES_PLOT = "samples_per_segment_index.png"
COMPRESSION_PLOT = "compression.png"
LENGTHS_PLOT = "lengths.png"
_DPI = 100
_METADATA = {"Software": None}


def _save(fig, path: Path) -> None:
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=_DPI, metadata=_METADATA)


def _bars(ax, counts: Counter, title: str, xlabel: str, bins: int | None = None) -> None:
    """Discrete counts as bars, or (with `bins`) as a weighted histogram of a wide range."""
    from matplotlib.ticker import MaxNLocator

    if counts:
        xs = sorted(counts)
        if bins:
            ax.hist(xs, bins=min(bins, len(xs)), weights=[counts[x] for x in xs], color="#4C72B0")
        else:
            ax.bar(xs, [counts[x] for x in xs], width=0.9, color="#4C72B0")
            if len(xs) <= 12:
                ax.set_xticks(xs)
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")


def write_plots(plots_dir: Path, stats: dict[str, Any], histograms: dict[str, Counter]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    paths = []
    with plt.rc_context({"font.size": 9}):
        # Figure 3: how many samples have segment k as their target.
        fig, ax = plt.subplots(figsize=(6, 3.5))
        per_index = stats["samples_per_segment_index"]
        ax.bar(range(len(per_index)), per_index, color="#4C72B0")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("segment index k (sample carries the pages of segments 0..k-1)")
        ax.set_ylabel("samples")
        ax.set_title(f"Samples per segment index ({stats['samples']} samples, {stats['problems']} problems)")
        fig.tight_layout()
        _save(fig, plots_dir / SAMPLES_PLOT)
        plt.close(fig)
        paths.append(plots_dir / SAMPLES_PLOT)

        # Text tokens replaced vs vision tokens spent, per family.
        comp = stats["compression"]
        families = [k for k, v in comp.items() if isinstance(v, dict)]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs = range(len(families))
        text = [comp[f]["text_tokens_replaced"] for f in families]
        vision = [comp[f]["vision_tokens"] for f in families]
        ax.bar([x - 0.2 for x in xs], text, width=0.4, label="text tokens replaced", color="#DD8452")
        ax.bar([x + 0.2 for x in xs], vision, width=0.4, label="vision tokens spent", color="#4C72B0")
        for x, f in zip(xs, families):
            r = comp[f]["ratio"]
            ax.annotate("n/a" if r is None else f"{r:.2f}x", (x, max(text[x], vision[x])), ha="center", va="bottom")
        ax.set_xticks(list(xs), families)
        ax.set_ylabel("tokens")
        ax.set_title("Optical-memory compression")
        ax.set_ylim(0, 1.35 * max(text + vision + [1]))
        ax.legend(loc="upper center", ncol=2)
        fig.tight_layout()
        _save(fig, plots_dir / COMPRESSION_PLOT)
        plt.close(fig)
        paths.append(plots_dir / COMPRESSION_PLOT)

        # Length histograms.
        fig, axes = plt.subplots(2, 2, figsize=(9, 6))
        _bars(axes[0][0], histograms["turn_tokens"], "Tokens per segment (assistant turn)", "tokens", bins=40)
        _bars(axes[0][1], histograms["trace_tokens"], "Tokens per problem (all turns)", "tokens", bins=40)
        _bars(axes[1][0], histograms["pages_per_segment"], "Pages per rendered segment", "pages")
        _bars(axes[1][1], histograms["images_per_sample"], "Images per sample", "images")
        fig.tight_layout()
        _save(fig, plots_dir / LENGTHS_PLOT)
        plt.close(fig)
        paths.append(plots_dir / LENGTHS_PLOT)
    return paths
