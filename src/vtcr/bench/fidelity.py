"""Can the pages be read? Render texts with each config, read the pages back with an independent OCR
engine, and put compression beside fidelity: the compression-fidelity frontier.

    result = run_fidelity(FidelityConfig(traces="traces.jsonl.gz", limit=40), "fidelity-out")
    result["configs"]["dense"]["char_accuracy"]

Per config: compression (text tokens of the source, real Qwen3 tokenizer, / vision tokens of its
pages, per VLM family, pooled over the texts), character and word accuracy of the OCR text against
the text drawn on each page, accuracy on digits and on operators, marker handling counts, and OCR
seconds (`vtcr.bench.text_metrics` says how text is compared). With `search=True` a render search
(`vtcr.bench.render_search`) looks for the densest config within `search_margin` of `vtcr1`'s
accuracy on a small sample, confirms it on all texts, and writes it as a Glyph/VTC-R1 JSON config.

The reference of a page is the text the layout engine put on it (`vtcr.render.layout`: the fast
backend's own lines), so each page is scored on exactly what it shows; a page the OCR cannot read
at all scores 0. Readings are cached by page content and engine (`OUT/ocr/`), so an interrupted run
resumes where it stopped and configs that draw identical pages share the readings.

Outputs in OUT: `fidelity.json` (the result), `fidelity_frontier.png` (the plot) and, with the
search, `search/trials.jsonl` (every trial) and `search/searched_config.json`.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from vtcr._io import write_text_atomic
from vtcr.render import RenderConfig, get_renderer, png_bytes, preset
from vtcr.render.layout import LayoutEngine, parse_newline_markup
from vtcr.tokens import (
    BUILTIN_TOKENIZER,
    FAMILIES,
    builtin_tokenizer_path,
    compression_ratio,
    count_text_tokens,
    load_tokenizer,
    vision_tokens,
)

from .ocr import OcrEngine, make_engine
from .render_search import (
    SEARCH_PARAMS,
    SearchSpace,
    Trial,
    available_fonts,
    check_params,
    search_render_config,
)
from .text_metrics import PageScore, marked_reference, score_page

RESULT_FILE = "fidelity.json"
PLOT_FILE = "fidelity_frontier.png"
SEARCH_DIR = "search"
SEARCHED_CONFIG_FILE = "searched_config.json"
SEARCHED_NAME = "searched"
REFERENCE_PRESET = "vtcr1"  # the search keeps its accuracy within the margin of this preset's
_TEXT_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class FidelityConfig:
    """What `run_fidelity` measures. The CLI (`vtcr bench fidelity`) takes its defaults from here."""

    traces: str = ""  # JSONL (.gz) of traces, or a UTF-8 .txt file (one text)
    presets: tuple[str, ...] = ("vtcr1", "dense")
    configs: tuple[str, ...] = ()  # Glyph/VTC-R1 JSON render config files
    ocr: str = "tesseract"
    upscale: float = 2.0  # pages are upscaled this much before OCR
    limit: int | None = None  # first N texts
    max_chars: int | None = None  # each text cut to about this many characters (at a space)
    text_fields: tuple[str, ...] = ("think", "trace", "text")  # first non-empty one per row
    include_truncated: bool = False  # rows with likely_truncated=true are skipped unless set
    workers: int = 1  # pages read in parallel
    tokenizer: str = BUILTIN_TOKENIZER
    search: bool = False
    search_family: str = "qwen3-vl"  # the family whose compression the search maximises
    search_margin: float = 0.01  # accuracy the search may give up against vtcr1 (0.01 = 1 point)
    search_texts: int = 4  # sample: the first N texts ...
    search_chars: int = 2500  # ... each cut to about this many characters
    search_trials: int = 40  # OCR evaluations at most
    search_confirm: int = 3  # configs of the search path confirmed on all texts at most
    search_params: tuple[str, ...] = SEARCH_PARAMS  # which render parameters the search may change
    plot: bool = True

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.max_chars is not None and self.max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {self.max_chars}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not 0 <= self.search_margin < 1:
            raise ValueError(f"search_margin must be in [0, 1) (0.01 = one point), got {self.search_margin}")
        if self.search_family not in FAMILIES:
            raise ValueError(f"search_family {self.search_family!r}: choose one of {list(FAMILIES)}")
        check_params(self.search_params)
        for name in ("search_texts", "search_chars", "search_trials", "search_confirm"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FidelityConfig:
        data = json.loads(text)
        for key in ("presets", "configs", "text_fields", "search_params"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


# ---- texts ---------------------------------------------------------------------------------------

def cut_text(text: str, max_chars: int | None) -> str:
    """The text's first ~max_chars characters, cut at the last whitespace before the limit."""
    if max_chars is None or len(text) <= max_chars:
        return text
    head = text[:max_chars]
    space = max(head.rfind(" "), head.rfind("\n"))
    return head[:space] if space > max_chars // 2 else head


def load_texts(config: FidelityConfig) -> list[tuple[str, str]]:
    """(id, text) pairs from `config.traces`, in file order, `limit` and `max_chars` applied."""
    path = Path(config.traces).expanduser()
    if not config.traces:
        raise ValueError("no traces: pass --traces FILE (JSONL/.jsonl.gz of traces, or a .txt file)")
    if not path.is_file():
        raise FileNotFoundError(f"traces file not found: {config.traces}")
    texts: list[tuple[str, str]] = []
    if path.suffix.lower() in _TEXT_SUFFIXES:
        texts.append((path.stem, path.read_text(encoding="utf-8")))
    else:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"traces file {path}, line {n}: not JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"traces file {path}, line {n}: expected a JSON object")
                if row.get("likely_truncated") and not config.include_truncated:
                    continue
                text = next((row[f] for f in config.text_fields if isinstance(row.get(f), str) and row[f].strip()), None)
                if text is None:
                    raise ValueError(f"traces file {path}, line {n}: none of the text fields "
                                     f"{list(config.text_fields)} holds a non-empty string")
                texts.append((str(row.get("id", n)), text))
                if config.limit is not None and len(texts) >= config.limit:
                    break
    if not texts:
        raise ValueError(f"traces file {path}: no texts (all rows truncated? pass --include-truncated)")
    return [(tid, cut_text(t, config.max_chars)) for tid, t in texts[: config.limit]]


def resolve_configs(config: FidelityConfig) -> dict[str, RenderConfig]:
    """Named render configs to measure: the presets, then each JSON file (named by its stem)."""
    out: dict[str, RenderConfig] = {}
    for name in config.presets:
        out[name] = preset(name)
    for file in config.configs:
        path = Path(file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"render config not found: {file}")
        cfg = RenderConfig.from_json(path)
        name = cfg.name
        while name in out or name == SEARCHED_NAME:
            name += "'"
        out[name] = cfg.replace(name=name)
    if not out:
        raise ValueError("nothing to measure: give --presets and/or --configs")
    return out


# ---- reading pages, with a content-addressed cache -----------------------------------------------

class PageReader:
    """OCR of page images through `engine`, cached under `cache_dir` by page content, read by
    `workers` threads (each Tesseract page is its own process)."""

    def __init__(self, engine: OcrEngine, cache_dir: Path | None, workers: int = 1):
        self.engine = engine
        self.workers = workers
        key = hashlib.sha256(engine.describe().encode()).hexdigest()[:16]
        self.cache_dir = None if cache_dir is None else Path(cache_dir) / f"{engine.name}-{key}"
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.cache_dir / "engine.txt", engine.describe() + "\n")

    def _read_one(self, image, digest: str) -> tuple[str, float]:
        path = None if self.cache_dir is None else self.cache_dir / f"{digest[:40]}.json"
        if path is not None and path.is_file():
            try:
                cached = json.loads(path.read_text(encoding="utf-8"))
                return cached["text"], float(cached["seconds"])
            except (ValueError, KeyError):
                pass  # a damaged entry is read again
        start = time.perf_counter()
        text = self.engine.read(image)
        seconds = time.perf_counter() - start
        if path is not None:
            write_text_atomic(path, json.dumps({"text": text, "seconds": round(seconds, 4)}, ensure_ascii=False))
        return text, seconds

    def read_all(self, items: Iterator[tuple[Any, Any]]) -> Iterator[tuple[Any, str, float]]:
        """(tag, image) pairs -> (tag, text, seconds) in the same order; a bounded number in flight."""
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            window: deque = deque()
            for tag, image in items:
                window.append((tag, pool.submit(self._read_one, image, page_digest(image))))
                if len(window) >= 2 * self.workers:
                    tag0, fut = window.popleft()
                    yield (tag0, *fut.result())
            while window:
                tag0, fut = window.popleft()
                yield (tag0, *fut.result())


def page_digest(image) -> str:
    """sha256 of the page's deterministic PNG bytes: the cache key of its reading."""
    return hashlib.sha256(png_bytes(image)).hexdigest()


# ---- measuring one config ------------------------------------------------------------------------

@dataclass
class ConfigResult:
    name: str
    config: RenderConfig
    texts: int
    text_tokens: int
    vision_tokens: dict[str, int]
    score: PageScore = field(default_factory=PageScore)
    ocr_seconds: float = 0.0
    render_seconds: float = 0.0

    @property
    def compression(self) -> dict[str, float]:
        return {f: compression_ratio(self.text_tokens, v) for f, v in self.vision_tokens.items()}

    def to_json(self, ocr: str) -> dict[str, Any]:
        s = self.score
        r = lambda x: None if x is None or x != x else round(x, 6)  # noqa: E731  (NaN / None -> null)
        out = {
            "compression": {f: r(v) for f, v in self.compression.items()},
            "char_accuracy": r(s.char_accuracy), "word_accuracy": r(s.word_accuracy),
            "digit_accuracy": r(s.digit_accuracy), "operator_accuracy": r(s.operator_accuracy),
            "ocr_seconds": round(self.ocr_seconds, 3), "render_seconds": round(self.render_seconds, 3),
            "texts": self.texts, "pages": s.pages, "unreadable_pages": s.unreadable_pages,
            "chars": s.chars, "words": s.words, "digits": s.digits, "operators": s.operators,
            "text_tokens": self.text_tokens, "vision_tokens": dict(self.vision_tokens),
            "markers": {"count": s.markers, "read_as_symbols": s.markers_read, "unread": s.markers_unread,
                        "chars_set_aside": s.marker_chars},
            "ocr": ocr, "render": self.config.to_dict(),
        }
        if s.pages == 0:
            out["note"] = "the config rendered no pages for these texts (nothing to draw)"
        return out


def measure_config(name: str, cfg: RenderConfig, texts: list[str], text_tokens: list[int], reader: PageReader,
                   progress: bool = False) -> ConfigResult:
    """Render every text with `cfg` (fast backend), OCR every page, score it against its own lines."""
    from tqdm.auto import tqdm

    layout = LayoutEngine(cfg)  # the fast backend's layout: refuses what it cannot draw, naming it
    nl = parse_newline_markup(cfg.newline_markup)
    marker = None if nl.is_break else nl.marker
    renderer = get_renderer(cfg)  # shared: the search renders the same candidate for compression and OCR
    result = ConfigResult(name, cfg, len(texts), sum(text_tokens), dict.fromkeys(FAMILIES, 0))

    def pages() -> Iterator[tuple[str, Any]]:
        for text in tqdm(texts, desc=f"fidelity {name}", unit="text", disable=not progress, leave=False):
            start = time.perf_counter()
            images = renderer.render(text)
            result.render_seconds += time.perf_counter() - start
            lines = [page.text_lines() for page in layout.pages(text)]
            if len(lines) != len(images):  # the layout is the renderer's own: this cannot differ
                raise RuntimeError(f"config {name}: {len(images)} pages drawn but {len(lines)} laid out")
            for image, page_lines in zip(images, lines):
                for family in FAMILIES:
                    result.vision_tokens[family] += vision_tokens(image.size, family)
                yield marked_reference(page_lines, marker), image

    for reference, ocr_text, seconds in reader.read_all(pages()):
        result.score = result.score + score_page(reference, ocr_text)
        result.ocr_seconds += seconds
    return result


def text_tokenizer(name: str):
    """The tokenizer that counts text tokens. A tokenizer.json (the bundled Qwen3 one included) loads
    straight into `tokenizers`, the same Rust tokenizer transformers wraps (same ids, same counts),
    without importing transformers; folders and hub ids go through `vtcr.tokens.load_tokenizer`."""
    path = builtin_tokenizer_path() / "tokenizer.json" if name == BUILTIN_TOKENIZER else Path(name).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json" if (path / "tokenizer.json").is_file() else path
    if path.is_file() and path.suffix == ".json":
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path))
    return load_tokenizer(name)


def _sample(texts: list[str], n: int, chars: int) -> list[str]:
    return [cut_text(t, chars) for t in texts[:n]]


# ---- the run -------------------------------------------------------------------------------------

def run_fidelity(config: FidelityConfig, out_dir: str | os.PathLike, progress: bool = False) -> dict[str, Any]:
    """Measure every config of `config` (and search, if asked); write OUT/fidelity.json and the plot.

    Returns {"configs": {NAME: {...}}, "search": {...}} ("search" only with `config.search`)."""
    out = Path(out_dir)
    rows = load_texts(config)
    configs = resolve_configs(config)
    for name, cfg in configs.items():
        LayoutEngine(cfg)  # fail before any OCR on a config the fast backend cannot draw
    out.mkdir(parents=True, exist_ok=True)
    engine = make_engine(config.ocr, upscale=config.upscale)
    reader = PageReader(engine, out / "ocr", config.workers)
    tokenizer = text_tokenizer(config.tokenizer)
    texts = [t for _, t in rows]
    tokens = count_text_tokens(texts, tokenizer)

    results: dict[str, ConfigResult] = {}
    for name, cfg in configs.items():
        results[name] = measure_config(name, cfg, texts, tokens, reader, progress)

    report: dict[str, Any] = {"configs": {}}
    search_report = None
    trials: list[Trial] = []
    if config.search:
        search_report, trials, searched = _search(config, configs, texts, tokens, tokenizer, reader, results, out, progress)
        results[SEARCHED_NAME] = searched
    describe = engine.describe()
    report["configs"] = {name: res.to_json(describe) for name, res in results.items()}
    if search_report is not None:
        report["search"] = search_report
    write_text_atomic(out / RESULT_FILE, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if config.plot:
        from .fidelity_plot import plot_frontier

        plot_frontier(report, trials, out / PLOT_FILE, family=config.search_family, margin=config.search_margin)
    return report


def _search(config: FidelityConfig, configs: dict[str, RenderConfig], texts: list[str], tokens: list[int],
            tokenizer, reader: PageReader, results: dict[str, ConfigResult], out: Path, progress: bool):
    """The render search on a sample, its confirmation on all texts, and its written config."""
    family = config.search_family
    sample = _sample(texts, config.search_texts, config.search_chars)
    sample_tokens = count_text_tokens(sample, tokenizer)
    reference_cfg = preset(REFERENCE_PRESET)

    def on_sample(cfg: RenderConfig) -> ConfigResult:
        return measure_config("search", cfg, sample, sample_tokens, reader)

    def compression(cfg: RenderConfig) -> float:
        # on all texts, not the sample: rendering is cheap, and a few short texts would quantise the
        # ratio (a cropped page's tokens move in steps of whole 32-pixel rows)
        renderer = get_renderer(cfg)
        vt = sum(vision_tokens(img.size, family) for t in texts for img in renderer.iter_pages(t))
        return compression_ratio(sum(tokens), vt)

    def accuracy(cfg: RenderConfig) -> float | None:
        return on_sample(cfg).score.char_accuracy

    reference_sample = on_sample(reference_cfg).score.char_accuracy
    if reference_sample is None:
        raise ValueError("the search sample renders no pages (blank texts?): nothing to search on")
    threshold = reference_sample - config.search_margin
    # start from the densest measured config that passes on the sample (vtcr1 always does)
    starts = sorted(((compression(c), n) for n, c in configs.items()), reverse=True)
    start = reference_cfg
    for _, name in starts:
        acc = accuracy(configs[name])
        if acc is not None and acc >= threshold:
            start = configs[name]
            break
    trials_path = out / SEARCH_DIR / "trials.jsonl"
    trials_path.parent.mkdir(parents=True, exist_ok=True)
    log: list[str] = []

    def on_trial(trial: Trial) -> None:
        log.append(json.dumps(trial.to_json(), ensure_ascii=False))
        write_text_atomic(trials_path, "\n".join(log) + "\n")
        if progress:
            print(f"  search trial {trial.index:>3} {trial.phase:<5} {trial.param or '-':<16} "
                  f"{family} {trial.compression:6.2f}x  char acc {100 * (trial.accuracy or 0):6.2f}%"
                  f"{'  pass' if trial.feasible else ''}", flush=True)

    space = SearchSpace(fonts=available_fonts() if "fonts" in config.search_params else (None,))
    found = search_render_config(start, threshold, compression, accuracy, space, config.search_trials, on_trial,
                                 config.search_params)
    write_text_atomic(trials_path, "\n".join(json.dumps(t.to_json(), ensure_ascii=False) for t in found.trials) + "\n")

    # confirm on all texts: the result, else step back along the path
    ref_full = results.get(REFERENCE_PRESET) or measure_config(REFERENCE_PRESET, reference_cfg, texts, tokens, reader, progress)
    full_threshold = (ref_full.score.char_accuracy or 0.0) - config.search_margin
    confirmed: list[dict[str, Any]] = []
    chosen = None
    for cfg in list(reversed(found.path))[: config.search_confirm]:
        res = measure_config(SEARCHED_NAME, cfg.replace(name=SEARCHED_NAME), texts, tokens, reader, progress)
        ok = res.score.char_accuracy is not None and res.score.char_accuracy >= full_threshold
        confirmed.append({"compression": round(res.compression[family], 4),
                          "char_accuracy": round(res.score.char_accuracy or 0.0, 6), "within_margin": ok})
        if chosen is None or ok:
            chosen = res
        if ok:
            break
    chosen.config.to_json(out / SEARCH_DIR / SEARCHED_CONFIG_FILE)
    sample_trial = next((t for t in found.trials if t.config == chosen.config.to_dict()), None)
    entry = chosen.to_json(reader.engine.describe())
    report = {
        "config": chosen.config.to_dict(),
        **{k: entry[k] for k in ("compression", "char_accuracy", "word_accuracy", "digit_accuracy", "operator_accuracy")},
        "within_margin": confirmed[-1]["within_margin"] if confirmed else False,
        "reference": REFERENCE_PRESET, "reference_char_accuracy": round(ref_full.score.char_accuracy or 0.0, 6),
        "margin": config.search_margin, "family": family, "start": start.name,
        "sample": {"texts": len(sample), "chars": sum(map(len, sample)), "threshold": round(found.threshold, 6),
                   "char_accuracy": None if sample_trial is None else sample_trial.accuracy},
        "trials": len(found.trials), "stopped": found.stopped, "confirmations": confirmed,
        "path": [c.to_dict() for c in found.path],
        "file": str(out / SEARCH_DIR / SEARCHED_CONFIG_FILE),
    }
    return report, found.trials, chosen
