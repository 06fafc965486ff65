"""The human-facing outputs of an eval folder, recomputed from results.jsonl alone.

`write_reports(DIR)` writes summary.json (`vtcr.evaluate.metrics`), report.md (one table per
benchmark, a row per mode), plots/*.png and index.html (`vtcr.evaluate.viewer`).

No question text appears in any of them: report and summary hold ids, letters and numbers; the
viewer shows questions and model text for unprotected benchmarks only (`results.is_protected`).
Plots use matplotlib's object API with the Agg canvas (no pyplot, no global backend switch) and
carry no timestamps, so the same results give the same bytes.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from vtcr.evaluate.figures import GROUP_COLUMNS, format_group
from vtcr.evaluate.metrics import BASELINE_MODE, run_rounds
from vtcr._io import atomic_open, write_text_atomic
from vtcr.evaluate.results import is_protected, load_rows_with_batches, summarize_dir
from vtcr.evaluate.viewer import write_viewer

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
ACCURACY_PLOT = "accuracy_vs_tokens.png"
LATENCY_PLOT = "latency.png"
ROUNDS_PLOT = "rounds.png"
_DPI = 100
_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def write_reports(out_dir: str | os.PathLike, expected_runs: int | None = None) -> dict[str, Any]:
    """summary.json, report.md, plots and index.html of an eval folder; returns the summary."""
    out = Path(out_dir)
    summary = summarize_dir(out, expected_runs)
    rows = load_rows_with_batches(out)
    write_text_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    plots = write_plots(out / PLOTS_DIR, rows, summary)
    write_text_atomic(out / REPORT_FILE, render_report(summary, rows, [p.relative_to(out).as_posix() for p in plots]))
    write_viewer(out, rows, summary)
    return summary


# ------------------------------------------------------------------------------------------------
# report.md
# ------------------------------------------------------------------------------------------------


def _table(groups: list[dict[str, Any]]) -> list[str]:
    """A markdown table, a row per group, its figures as `vtcr.evaluate.figures` writes them (the viewer too)."""
    lines = ["| " + " | ".join(h for h, _, _ in GROUP_COLUMNS) + " |", "|" + "|".join("---" for _ in GROUP_COLUMNS) + "|"]
    for g in groups:
        shown = format_group(g)
        lines.append("| " + " | ".join(shown[k] for _, k, _ in GROUP_COLUMNS) + " |")
    return lines


def _render_used(rows: list[dict[str, Any]]) -> str:
    """The render configs the `vtc` runs used, as their records say (a preset name, or "custom")."""
    used = Counter()
    for r in rows:
        config = r.get("config") or {}
        if r.get("mode") == "vtc" and config.get("render_config") is not None:
            used[config.get("render_preset") or "a custom render config"] += 1
    return ", ".join(f"`{name}` ({n} runs)" for name, n in sorted(used.items())) or "no vtc runs yet"


def render_report(summary: dict[str, Any], rows: list[dict[str, Any]], plots: list[str]) -> str:
    """report.md: settings, a table per benchmark (a row per mode), plots, errors by id."""
    cfg = summary["config"]
    eng = cfg["engine"]
    who = cfg["model"] if cfg.get("server") is None else f"{cfg['served_model']} at {cfg['server']}"
    samples = cfg["samples"] if cfg["samples"] is not None else "benchmark default (16 for aime25/amc23, else 1)"
    done = f"{summary['runs']}" + (f" of {summary['expected_runs']}" if summary.get("expected_runs") is not None else "")
    lines = [
        "# vtcr evaluation",
        "",
        f"- model: `{who}`",
        f"- modes: {', '.join(cfg['modes'])}; samples per problem: {samples}; limit: {cfg['limit'] or 'none'}",
        f"- up to {eng['max_rounds']} rounds x {eng['round_tokens']} new tokens (`standard`: one round of "
        f"{eng['max_rounds'] * eng['round_tokens']}); temperature {eng['temperature']}, top_p {eng['top_p']}, "
        f"base seed {eng['seed']} (each problem x sample draws from a seed derived from it, the same in every mode)",
        f"- optical memory rendered with: {_render_used(rows)}",
        f"- runs: {done}" + ("" if summary.get("complete") in (None, True) else " (incomplete: resume with --resume)"),
        "",
        "avg@K: mean accuracy over the K samples of a problem, averaged over problems; pass@K: a problem "
        "counts when any sample is right. Tokens and rounds are means per run; vision tokens: the largest "
        "image-token count of a round's prompt (the optical memory a run ended with); peak context: the "
        "largest round's prompt + generated tokens. Latency/problem: a "
        "run's wall time from its first request to its answer, rendering included; amortised: batch wall "
        f"time / runs in the batch. Speed-up: `{BASELINE_MODE}` latency / mode latency. Lines right (generated "
        "benchmarks): runs that wrote every step of the gold trace right and the answer right.",
    ]
    by_bench: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for g in summary["groups"]:
        by_bench[g["benchmark"]].append(g)
    for bench, groups in by_bench.items():
        lines += ["", f"## {bench}", ""] + _table(groups)
        wrong = [g for g in groups if g.get("first_wrong")]
        if wrong:  # generated benchmarks: where the runs that left the gold trace did so first
            lines += ["", "First wrong line (runs that left the gold trace): read = a round's state copied wrong "
                      "from its last page; compute = a step computed wrong; stopped = fewer lines than the trace.", ""]
            lines += [f"- {g['mode']}: " + ", ".join(f"{kind} {n}" for kind, n in g["first_wrong"].items()) for g in wrong]
        timeouts = sum(g["grade_timeouts"] for g in groups)
        if timeouts:
            lines += ["", f"{timeouts} answer(s) hit the grading time limit and count as wrong."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    failed = [r for r in rows if r.get("error")]
    if failed:
        lines += ["", "## Runs with errors", ""]
        for r in failed:
            # Error text may echo a prompt: for protected benchmarks only the id is shown.
            msg = "" if is_protected(r["benchmark"]) else f": {str(r['error'])[:200]}"
            lines.append(f"- {r['benchmark']} `{r['id']}` {r['mode']} sample {r['sample']}{msg}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=_DPI, metadata={"Software": None})
    return path


def _style(items: list[str], palette: tuple) -> dict[str, Any]:
    return {item: palette[i % len(palette)] for i, item in enumerate(items)}


def write_plots(plots_dir: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> list[Path]:
    """accuracy vs mean generated tokens, latency distributions, rounds histogram (PNG)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    groups = summary["groups"]
    if not groups:
        return []
    benches = list(dict.fromkeys(g["benchmark"] for g in groups))
    modes = list(dict.fromkeys(g["mode"] for g in groups))
    color, marker = _style(modes, _COLORS), _style(benches, _MARKERS)
    paths = []

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for g in groups:
        if g["avg_at_k"] is None or g["generated_tokens"] is None:
            continue
        ax.scatter(g["generated_tokens"], 100 * g["avg_at_k"], color=color[g["mode"]], marker=marker[g["benchmark"]], s=60)
        ax.annotate(g["benchmark"], (g["generated_tokens"], 100 * g["avg_at_k"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    for m in modes:
        ax.scatter([], [], color=color[m], label=m)
    ax.legend(title="mode", fontsize=8)
    ax.set_xlabel("mean generated tokens per run")
    ax.set_ylabel("accuracy avg@K (%)")
    ax.set_title("Accuracy vs generated tokens")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(_save(fig, plots_dir / ACCURACY_PLOT))

    latencies: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r.get("latency_s") is not None:
            latencies[(r["benchmark"], r["mode"])].append(float(r["latency_s"]))
    keys = [(g["benchmark"], g["mode"]) for g in groups if latencies.get((g["benchmark"], g["mode"]))]
    fig = Figure(figsize=(max(5, 1.1 * len(keys) + 2), 4.5))
    ax = fig.add_subplot()
    if keys:
        box = ax.boxplot([latencies[k] for k in keys], patch_artist=True, showfliers=True)
        for patch, k in zip(box["boxes"], keys):
            patch.set_facecolor(color[k[1]])
            patch.set_alpha(0.6)
        ax.set_xticks(range(1, len(keys) + 1), [f"{b}\n{m}" for b, m in keys], fontsize=7)
    ax.set_ylabel("latency per problem (s)")
    ax.set_title("Latency distribution")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(_save(fig, plots_dir / LATENCY_PLOT))

    counts = {m: Counter(run_rounds(r) for r in rows if r["mode"] == m) for m in modes}
    seen = [n for c in counts.values() for n in c]
    xs = list(range(min(seen + [1]), max(seen + [1]) + 1))  # 0 rounds only for runs that failed at once
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    width = 0.8 / max(len(modes), 1)
    for i, m in enumerate(modes):
        ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], [counts[m].get(x, 0) for x in xs], width=width,
               color=color[m], label=m)  # fmt: skip
    ax.set_xticks(xs)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("rounds per run")
    ax.set_ylabel("runs")
    ax.set_title("Rounds per run")
    ax.legend(title="mode", fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, plots_dir / ROUNDS_PLOT))
    return paths
