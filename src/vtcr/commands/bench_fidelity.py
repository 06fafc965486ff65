"""`vtcr bench fidelity --traces FILE`: read rendered pages back with an independent OCR engine and report
compression beside fidelity per render config (one call to vtcr.bench.fidelity.run_fidelity)."""

from __future__ import annotations

import argparse
import json

from vtcr.bench.fidelity import FidelityConfig

from ._common import comma_list, shown

_D = FidelityConfig()  # every flag's default and the default shown in its help come from here

EPILOG = """\
examples:
  vtcr bench fidelity --traces ../shared/data/traces/sky_t1_traces.jsonl.gz --limit 20
  vtcr bench fidelity --traces traces.jsonl.gz --presets vtcr1,dense --configs mine.json --search --out fid/

Pages are upscaled before OCR (--upscale). Readings are cached in OUT/ocr/, so a rerun resumes.
The searched config is written to OUT/search/searched_config.json (vtcr render --config FILE).
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fidelity", help="OCR the rendered pages: compression vs readability, and a render search",
        description="Render texts, read the pages back with an independent OCR engine, and report compression "
                    "(text tokens / vision tokens per VLM family) beside character, word, digit and operator accuracy.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--traces", required=True, metavar="FILE",
                   help="JSONL(.gz) of traces (text from the first of --text-fields) or a .txt file")
    p.add_argument("--presets", type=comma_list, default=_D.presets, metavar="LIST",
                   help=f"comma-separated render presets (default {shown(_D.presets)})")
    p.add_argument("--configs", type=comma_list, default=_D.configs, metavar="FILES",
                   help="comma-separated Glyph/VTC-R1 render config JSON files")
    p.add_argument("--ocr", choices=("tesseract", "rapidocr"), default=_D.ocr, help=f"OCR engine (default {_D.ocr})")
    p.add_argument("--upscale", type=float, default=_D.upscale, help=f"page upscale before OCR (default {shown(_D.upscale)})")
    p.add_argument("--limit", type=int, default=_D.limit, help="first N texts (default: all)")
    p.add_argument("--max-chars", type=int, default=_D.max_chars, help="cut each text to about N characters")
    p.add_argument("--text-fields", type=comma_list, default=_D.text_fields, metavar="LIST",
                   help=f"JSONL fields holding the text, first non-empty wins (default {shown(_D.text_fields)})")
    p.add_argument("--include-truncated", action="store_true", default=_D.include_truncated,
                   help="also use rows with likely_truncated=true")
    p.add_argument("--workers", type=int, default=_D.workers, help=f"pages read in parallel (default {_D.workers})")
    p.add_argument("--tokenizer", default=_D.tokenizer, help=f"text tokenizer (default {_D.tokenizer})")
    s = p.add_argument_group("render search")
    s.add_argument("--search", action="store_true", default=_D.search,
                   help="search for the densest config within --search-margin of vtcr1's accuracy")
    s.add_argument("--search-margin", type=float, default=_D.search_margin,
                   help=f"accuracy the search may give up (default {shown(_D.search_margin)} = 1 point)")
    s.add_argument("--search-family", default=_D.search_family, help=f"family whose compression is maximised "
                   f"(default {_D.search_family})")
    s.add_argument("--search-texts", type=int, default=_D.search_texts, help=f"sample texts (default {_D.search_texts})")
    s.add_argument("--search-chars", type=int, default=_D.search_chars,
                   help=f"characters per sample text (default {_D.search_chars})")
    s.add_argument("--search-trials", type=int, default=_D.search_trials,
                   help=f"OCR evaluations at most (default {_D.search_trials})")
    s.add_argument("--search-params", type=comma_list, default=_D.search_params, metavar="LIST",
                   help=f"render parameters to search (default all: {shown(_D.search_params)})")
    s.add_argument("--search-confirm", type=int, default=_D.search_confirm,
                   help=f"search-path configs confirmed on all texts at most (default {_D.search_confirm})")
    p.add_argument("--out", default="fidelity-out", help="output folder (default fidelity-out; rerun to resume)")
    p.add_argument("--no-plot", action="store_true", help="skip the frontier plot")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help='print {"configs": {NAME: {...}}, "search": {...}}')
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> FidelityConfig:
    return FidelityConfig(
        traces=args.traces, presets=args.presets, configs=args.configs, ocr=args.ocr, upscale=args.upscale,
        limit=args.limit, max_chars=args.max_chars, text_fields=args.text_fields,
        include_truncated=args.include_truncated, workers=args.workers, tokenizer=args.tokenizer,
        search=args.search, search_family=args.search_family, search_margin=args.search_margin,
        search_texts=args.search_texts, search_chars=args.search_chars, search_trials=args.search_trials,
        search_confirm=args.search_confirm, search_params=args.search_params, plot=not args.no_plot,
    )


def run(args: argparse.Namespace) -> int:
    from vtcr.bench.fidelity import PLOT_FILE, RESULT_FILE, run_fidelity

    config = config_from_args(args)
    report = run_fidelity(config, args.out, progress=not (args.no_progress or args.json))
    if args.json:
        print(json.dumps(report))
        return 0
    print(format_report(report, config.search_family))
    print(f"\nwritten: {args.out}/{RESULT_FILE}" + ("" if args.no_plot else f", {args.out}/{PLOT_FILE}"))
    return 0


def _pct(x) -> str:
    return "   n/a" if x is None else f"{100 * x:6.2f}"


def format_report(report: dict, family: str) -> str:
    any_cfg = next(iter(report["configs"].values()))
    families = list(any_cfg["compression"])
    w = max(10, *(len(n) + 2 for n in report["configs"]))
    lines = [f"OCR: {any_cfg['ocr']}",
             f"{'config':<{w}}{'pages':>6}" + "".join(f"{f:>12}" for f in families)
             + f"{'char %':>8}{'word %':>8}{'digit %':>9}{'oper %':>8}{'OCR s':>8}"]
    for name, c in report["configs"].items():
        comp = "".join("n/a".rjust(12) if c["compression"][f] is None else f"{c['compression'][f]:>11.2f}x"
                       for f in families)
        lines.append(f"{name:<{w}}{c['pages']:>6}{comp}{_pct(c['char_accuracy']):>8}{_pct(c['word_accuracy']):>8}"
                     f"{_pct(c['digit_accuracy']):>9}{_pct(c['operator_accuracy']):>8}{c['ocr_seconds']:>8.1f}")
        if c.get("note"):
            lines.append(f"{'':<{w}}{c['note']}")
        if c["unreadable_pages"]:
            lines.append(f"{'':<{w}}{c['unreadable_pages']} page(s) the OCR read no text from (scored 0)")
    s = report.get("search")
    if s:
        verdict = "within" if s["within_margin"] else "NOT within"
        lines += ["", f"search: {s['trials']} trials on {s['sample']['texts']} sample texts ({s['stopped']}); "
                      f"the result is {verdict} {100 * s['margin']:g} point(s) of {s['reference']} on all texts "
                      f"({family} {s['compression'][family]:.2f}x, char {_pct(s['char_accuracy']).strip()}% vs "
                      f"{_pct(s['reference_char_accuracy']).strip()}%)",
                  f"searched config: {s['file']}"]
    return "\n".join(lines)
