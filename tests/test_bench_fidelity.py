"""`vtcr bench fidelity`: OCR accuracy metrics, the newline-marker rule, the OCR adapters on real pages
of the shared traces, the render search, and the CLI's JSON.

Tests that read pages need Tesseract (Debian tesseract-ocr + tesseract-ocr-eng, installed by
scripts/install.sh) and skip with that reason where it is absent; slices of a few hundred to a few
thousand characters keep each to seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rapidfuzz", reason="rapidfuzz not installed (pip install -e '.[ocr]')")

from vtcr.bench.fidelity import (
    FidelityConfig,
    PageReader,
    cut_text,
    load_texts,
    measure_config,
    run_fidelity,
)
from vtcr.bench.ocr import OcrEngineMissing, RapidOcr, TesseractOcr, make_engine
from vtcr.bench.render_search import SearchSpace, search_render_config
from vtcr.bench.text_metrics import (
    MARK,
    PageScore,
    marked_reference,
    normalise,
    score_page,
    set_aside_markers,
)
from vtcr.render import RenderConfig, Renderer, preset
from vtcr.render.layout import LINES_PER_PARAGRAPH, LayoutEngine, prepare_text

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _have_tesseract() -> bool:
    if shutil.which("tesseract") is None:
        return False
    out = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True)
    return "eng" in (out.stdout + out.stderr).split()


needs_tesseract = pytest.mark.skipif(
    not _have_tesseract(),
    reason="Tesseract OCR not installed: apt-get install tesseract-ocr tesseract-ocr-eng (scripts/install.sh does it as root)")


# ---- the metric: known edit cases --------------------------------------------------------------------

EDIT_CASES = [
    # (reference, OCR text, char errors, word errors)
    ("abc def", "abc def", 0, 0),
    ("abc def", "abd def", 1, 1),  # one substitution
    ("abc def", "ab def", 1, 1),  # one deletion
    ("abc def", "abcc def", 1, 1),  # one insertion
    ("abc def", "abcdef", 1, 2),  # a lost space: 1 char, but both words are wrong
    ("abc def", "  abc\n\n def \n", 0, 0),  # whitespace and line breaks are layout, not content
    ("x = 3", "", 5, 3),  # nothing read: every character is an error
    ("ab", "a completely different and much longer reading", 2, 1),  # capped at the reference length
    ('say "hi" - now', "say \u201chi\u201d \u2014 now", 0, 0),  # quote and dash shapes are folded
    ("x \u2212 1", "x - 1", 0, 0),  # the minus sign and the hyphen draw alike
    ("x\u00b2 + y\u00b2", "x2 + y2", 2, 2),  # superscripts are NOT folded: x2 is not x squared
    ("\u03b8 = \u03c0/2", "6 = n/2", 2, 2),  # neither are Greek letters read as Latin ones
    ("the cat sat", "the bat sat", 1, 1),
]


@pytest.mark.parametrize("ref, ocr, char_errors, word_errors", EDIT_CASES)
def test_char_and_word_errors(ref, ocr, char_errors, word_errors):
    score = score_page(normalise(ref), ocr)
    assert (score.char_errors, score.word_errors) == (char_errors, word_errors)
    assert score.chars == len(normalise(ref)) and score.words == len(ref.split())
    assert score.char_accuracy == pytest.approx(max(0.0, 1 - char_errors / score.chars))


CLASS_CASES = [
    # (reference, OCR, digits, digit errors, operators, operator errors)
    ("x = 31 + 4", "x = 31 + 4", 3, 0, 2, 0),
    ("x = 31 + 4", "x = 37 + 4", 3, 1, 2, 0),  # a digit misread
    ("x = 31 + 4", "x = 3 + 4", 3, 1, 2, 0),  # a digit lost
    ("x = 31 + 4", "x = 31 - 4", 3, 0, 2, 1),  # an operator misread as another one counts once
    ("x = 31 + 4", "x = 31 4", 3, 0, 2, 1),  # an operator lost
    ("I saw 1 cat", "l saw 11 cat", 1, 1, 0, 0),  # an invented digit next to a real one
    ("total 10", "total 10 + 7", 2, 1, 0, 1),  # invented digits and operators count too
]


@pytest.mark.parametrize("ref, ocr, digits, digit_errors, operators, operator_errors", CLASS_CASES)
def test_digit_and_operator_errors(ref, ocr, digits, digit_errors, operators, operator_errors):
    s = score_page(normalise(ref), ocr)
    assert (s.digits, s.digit_errors, s.operators, s.operator_errors) == (digits, digit_errors, operators, operator_errors)


def test_scores_add_up_and_accuracy_never_goes_below_zero():
    a = score_page("one two", "one two")
    b = score_page("abc", "")
    total = a + b
    assert (total.chars, total.char_errors, total.pages, total.unreadable_pages) == (10, 3, 2, 1)
    assert total.char_accuracy == pytest.approx(0.7)
    assert score_page("total 1", "total 1 2 3 4 5 6").digit_accuracy == 0.0  # 5 invented digits, 1 real
    assert PageScore().char_accuracy is None  # no text: undefined, not 100%


# ---- the newline marker: neither an error nor a hiding place ----------------------------------------

M = f" {MARK} "
MARKER_CASES = [
    # (reference with markers, OCR text, char errors) -- the marker's misreadings cost nothing ...
    (f"x = 3{M}y = 4", "x = 3 # y = 4", 0),
    (f"x = 3{M}y = 4", "x = 3 + y = 4", 0),
    (f"x = 3{M}y = 4", "x = 3 \u00ab y = 4", 0),
    (f"x = 3{M}y = 4", "x = 3 | y = 4", 0),
    (f"x = 3{M}y = 4", "x = 3 y = 4", 0),  # the marker not read at all
    (f"x = 3{M}y = 4", "x = 3y = 4", 0),  # ... nor the spaces around it: it still separates words
    (f"x = 3{M}y = 4", "x = 3#y = 4", 0),
    (f"a{M}{MARK} b", "a #+ b", 0),  # a blank line: two markers
    (f"a{M}{MARK} b", "a # # b", 0),
    # ... and real errors next to a marker are counted, exactly
    (f"x = 3{M}y = 4", "x = 8 # y = 4", 1),  # a digit misread right before the marker
    (f"x = 3{M}y = 4", "x = 3 # y = 47", 1),
    (f"a + b{M}c", "a b # c", 2),  # a real '+' lost before the marker (and its space)
    (f"a + b{M}c", "a # b + c", 1),  # the real '+' read as '#', the marker as '+': one error
    (f"x = 3{M}y", "x = 3 4 y", 2),  # a digit where the marker is: not a marker reading
    (f"x = 3{M}y", "x = 3 #+* y", 2),  # three symbols: the marker takes two, one is an error
    ("x = 3 y", "x = 3 # y", 2),  # no marker on the page: a '#' is an error like any other
    ("a + b", "a # b", 1),  # a real '+' misread as '#' away from markers
]


@pytest.mark.parametrize("ref, ocr, char_errors", MARKER_CASES)
def test_marker_misreads_are_not_errors_and_hide_none(ref, ocr, char_errors):
    score = score_page(normalise(ref), ocr)
    assert score.char_errors == char_errors
    assert score.chars == len(normalise(ref.replace(MARK, " ")))  # markers are not content characters


def test_marker_counts():
    _, counts = set_aside_markers(normalise(f"a{M}b{M}c{M}d"), "a # b c x d")
    assert counts == (1, 1, 1)  # read as "#" (1 char set aside); unread (nothing there); "x" is not a reading
    ref = marked_reference(["x = 3 \u21b5 y", "\u21b5 z"], "\u21b5")
    assert ref == f"x = 3{M}y {MARK} z"
    assert marked_reference(["a", "b"], None) == "a b"


# ---- page references are the text the layout drew -------------------------------------------------

@pytest.mark.parametrize("name", ["vtcr1", "dense"])
def test_page_references_are_the_source_text(finished_traces, name):
    """Concatenated, the pages' references minus markers give the source back (whitespace aside)."""
    cfg = preset(name)
    text = finished_traces[3]["think"] or finished_traces[3]["trace"]
    pages = list(LayoutEngine(cfg).pages(text))
    assert len(pages) == len(Renderer(cfg).render(text)) >= 1
    marker = None if name == "vtcr1" else "\u21b5"
    joined = " ".join(marked_reference(p.text_lines(), marker) for p in pages)
    assert normalise(joined.replace(MARK, " ")) == normalise(prepare_text(text))
    if marker:  # each newline is a marker, except where the reference starts a new 30-line Paragraph
        lines = text.count("\n") + 1
        assert joined.count(MARK) == text.count("\n") - (-(-lines // LINES_PER_PARAGRAPH) - 1)


def test_cut_text_and_loading(tmp_path, shared_data):
    assert cut_text("alpha beta gamma", 12) == "alpha beta"
    assert cut_text("short", 100) == "short"
    rows = load_texts(FidelityConfig(traces=str(shared_data / "traces" / "sky_t1_traces.jsonl.gz"), limit=3,
                                     max_chars=500))
    assert len(rows) == 3 and all(len(t) <= 500 for _, t in rows)
    with pytest.raises(FileNotFoundError, match="traces file not found"):
        load_texts(FidelityConfig(traces=str(tmp_path / "nope.jsonl")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "other": "x"}\n')
    with pytest.raises(ValueError, match="line 1: none of the text fields"):
        load_texts(FidelityConfig(traces=str(bad)))


# ---- OCR engines -----------------------------------------------------------------------------------

def test_missing_tesseract_names_the_packages():
    with pytest.raises(OcrEngineMissing, match="tesseract-ocr tesseract-ocr-eng"):
        TesseractOcr(binary="/nonexistent/bin/tesseract")
    assert issubclass(OcrEngineMissing, FileNotFoundError)  # the CLI reports it without a traceback


def test_missing_rapidocr_names_the_packages(monkeypatch):
    monkeypatch.setitem(sys.modules, "rapidocr", None)  # as if not installed
    with pytest.raises(OcrEngineMissing, match="rapidocr onnxruntime"):
        RapidOcr()
    with pytest.raises(ValueError, match="unknown OCR engine 'easyocr'"):
        make_engine("easyocr")


@needs_tesseract
def test_missing_language_model_names_its_package():
    with pytest.raises(OcrEngineMissing, match="tesseract-ocr-xxx"):
        TesseractOcr(lang="xxx")


@pytest.fixture(scope="module")
def tesseract():
    if not _have_tesseract():
        pytest.skip("Tesseract OCR not installed: apt-get install tesseract-ocr tesseract-ocr-eng")
    return TesseractOcr(upscale=2.0)


@pytest.fixture(scope="module")
def slices(finished_traces):
    return [cut_text(t["think"] or t["trace"], 600) for t in finished_traces[5:7]]


@needs_tesseract
def test_real_pages_read_back(tesseract, slices):
    """Real pages of two shared traces, both presets: Tesseract reads nearly every character."""
    reader = PageReader(tesseract, None)
    tokens = [300, 300]
    for name in ("vtcr1", "dense"):
        res = measure_config(name, preset(name), slices, tokens, reader)
        assert res.score.pages >= 2 and res.score.unreadable_pages == 0
        assert res.score.char_accuracy > 0.9, (name, res.score)
        assert res.score.word_accuracy > 0.6
        assert res.ocr_seconds > 0
        if name == "dense":
            assert res.score.markers == sum(t.count("\n") for t in slices)
            assert res.score.markers_read + res.score.markers_unread > 0.8 * res.score.markers
        else:
            assert res.score.markers == 0


@needs_tesseract
def test_unreadable_pages_score_zero_not_an_error(tesseract, slices):
    invisible = preset("dense").replace(font_color="#FFFFFF", name="invisible")  # white on white
    res = measure_config("invisible", invisible, slices, [300, 300], PageReader(tesseract, None))
    assert res.score.pages >= 2
    assert res.score.unreadable_pages == res.score.pages
    assert res.score.char_accuracy == 0.0 and res.score.word_accuracy == 0.0
    assert res.to_json("t")["char_accuracy"] == 0.0


@needs_tesseract
def test_readings_are_cached_by_page_content(tmp_path, tesseract, slices):
    reader = PageReader(tesseract, tmp_path / "ocr")
    first = measure_config("dense", preset("dense"), slices[:1], [300], reader)
    files = sorted((tmp_path / "ocr").rglob("*.json"))
    assert len(files) == first.score.pages
    again = measure_config("dense", preset("dense"), slices[:1], [300], reader)
    assert again.score == first.score and sorted((tmp_path / "ocr").rglob("*.json")) == files


@needs_tesseract
def test_a_config_that_renders_nothing(tmp_path, qwen3_tokenizer_dir):
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n \n", encoding="utf-8")
    report = run_fidelity(FidelityConfig(traces=str(blank), presets=("dense",), plot=True,
                                         tokenizer=str(qwen3_tokenizer_dir)), tmp_path / "out")
    entry = report["configs"]["dense"]
    assert entry["pages"] == 0 and "no pages" in entry["note"]
    assert entry["compression"]["qwen3-vl"] is None and entry["char_accuracy"] is None
    assert (tmp_path / "out" / "fidelity.json").is_file()


def test_configs_the_fast_backend_refuses_fail_before_any_ocr(tmp_path, shared_data):
    cfg = tmp_path / "spaced.json"
    cfg.write_text(json.dumps({"space-before": 4}))
    config = FidelityConfig(traces=str(shared_data / "traces" / "sky_t1_traces.jsonl.gz"), presets=(),
                            configs=(str(cfg),), limit=1)
    with pytest.raises(ValueError, match="space-before"):
        run_fidelity(config, tmp_path / "out")


# ---- the search, on a known objective (no OCR) --------------------------------------------------------

def _toy_measures():
    """Compression grows as glyphs shrink and squeeze; accuracy falls once the glyph's pixel
    width (font size x dpi/72 x horizontal scale) drops below 8 px, and with margins not at all."""
    def width(cfg):
        return cfg.font_size * cfg.dpi / 72 * cfg.horizontal_scale

    def compression(cfg):
        area = width(cfg) * cfg.leading * cfg.dpi / 72
        return 1000 / area * (1 + (10 - cfg.margin_x) / 100)

    def accuracy(cfg):
        return 0.99 - max(0.0, 8 - width(cfg)) * 0.02 - max(0.0, 1 - (cfg.leading - cfg.font_size)) * 0.004

    return compression, accuracy


def test_search_is_bounded_deterministic_and_stays_above_the_threshold():
    compression, accuracy = _toy_measures()
    space = SearchSpace()
    calls = []

    def counted(cfg):
        calls.append(cfg.to_json())
        return accuracy(cfg)

    result = search_render_config(preset("dense"), 0.98, compression, counted, space, max_trials=40)
    assert accuracy(result.best) >= 0.98
    assert compression(result.best) > compression(preset("dense")) * 1.1
    comps = [compression(c) for c in result.path]
    assert comps == sorted(comps) and len(set(comps)) == len(comps)  # every accepted step compresses more
    assert len(calls) == len(result.trials) <= 40 and len(set(calls)) == len(calls)  # each config measured once
    assert result.best.margin_x == 0.0  # the free move is taken
    again = search_render_config(preset("dense"), 0.98, compression, accuracy, space, max_trials=40)
    assert again.best == result.best and [t.to_json() for t in again.trials] == [t.to_json() for t in result.trials]
    short = search_render_config(preset("dense"), 0.98, compression, accuracy, space, max_trials=3)
    assert len(short.trials) == 3 and "budget" in short.stopped
    RenderConfig.from_dict(result.best.to_dict())  # a loadable Glyph config
    LayoutEngine(result.best)  # that the fast backend draws
    with pytest.raises(ValueError, match="below the threshold"):
        search_render_config(preset("dense"), 0.999, compression, accuracy, space)


# ---- the CLI: JSON shape, and the searched config everywhere a render config goes --------------------

@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, finished_traces):
    if not _have_tesseract():
        pytest.skip("Tesseract OCR not installed: apt-get install tesseract-ocr tesseract-ocr-eng")
    tmp = tmp_path_factory.mktemp("fid")
    traces = tmp / "traces.jsonl"
    traces.write_text("".join(json.dumps({"id": t["id"], "think": t["think"], "trace": t["trace"]}) + "\n"
                              for t in finished_traces[:2]), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "vtcr.cli", "bench", "fidelity", "--traces", str(traces), "--limit", "2",
           "--max-chars", "500", "--search", "--search-texts", "1", "--search-chars", "300", "--search-trials", "2",
           "--search-confirm", "1", "--search-params", "margin,horizontal_scale", "--out", str(tmp / "out"), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp, json.loads(proc.stdout)


def test_cli_json_shape(cli_run):
    tmp, report = cli_run
    assert set(report) == {"configs", "search"}
    assert set(report["configs"]) == {"vtcr1", "dense", "searched"}
    for entry in report["configs"].values():
        assert set(entry["compression"]) >= {"qwen3-vl", "qwen2.5-vl", "glm-4.1v"}
        for key in ("char_accuracy", "word_accuracy", "digit_accuracy", "operator_accuracy"):
            assert 0.0 <= entry[key] <= 1.0
        assert entry["pages"] >= 1 and entry["ocr_seconds"] > 0
    c = report["configs"]
    assert c["dense"]["compression"]["qwen3-vl"] > c["vtcr1"]["compression"]["qwen3-vl"]
    search = report["search"]
    assert search["compression"] == c["searched"]["compression"]
    assert search["char_accuracy"] == c["searched"]["char_accuracy"]
    assert 1 <= search["trials"] <= 2 and search["reference"] == "vtcr1"
    assert RenderConfig.from_dict(search["config"]).to_dict() == search["config"]
    assert (tmp / "out" / "fidelity_frontier.png").stat().st_size > 1000
    assert len((tmp / "out" / "search" / "trials.jsonl").read_text().splitlines()) == search["trials"]


def test_searched_config_renders_everywhere(cli_run, finished_traces, tmp_path):
    """The written config loads with RenderConfig.from_json, renders with `vtcr render --config`,
    resolves as every stage resolves a render config (build-data --config, the engine's render_config)."""
    from vtcr.engine import EngineConfig, GenerationResult, reason
    from vtcr.render import render_config

    tmp, report = cli_run
    path = tmp / "out" / "search" / "searched_config.json"
    cfg = RenderConfig.from_json(path)
    assert cfg.to_dict() == report["search"]["config"]
    assert render_config(str(path)).to_dict() == cfg.to_dict()
    text = cut_text(finished_traces[0]["think"] or finished_traces[0]["trace"], 1500)
    src = tmp_path / "t.txt"
    src.write_text(text, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "vtcr.cli", "render", str(src), "-o", str(tmp_path / "p"),
                           "--config", str(path), "--json"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["pages"] == len(Renderer(cfg).render(text)) >= 1

    class TwoRounds:  # a minimal Backend: one unfinished round, then an answer
        name = "two-rounds"

        def __init__(self):
            self.calls = 0

        def generate(self, request):
            self.calls += 1
            out = text if self.calls == 1 else "</think>\n<answer>3</answer>"
            return GenerationResult(text=out, generated_tokens=10, prompt_tokens=10, prefill_tokens=10,
                                    vision_tokens=0, finish_reason="stop", seconds=0.0)

        def release(self, prefix_key):
            pass

    record = reason("What is 1 + 2?", TwoRounds(), EngineConfig(render_config=str(path), max_rounds=3))
    assert record.finished and record.answer == "3"
    assert record.rounds[0].pages == len(Renderer(cfg).render(text))


def test_text_tokens_without_transformers_are_the_same_counts(finished_traces, qwen3_tokenizer_dir):
    from vtcr.bench.fidelity import text_tokenizer
    from vtcr.tokens import count_text_tokens, load_tokenizer

    texts = [t["think"] or t["trace"] for t in finished_traces[:5]]
    fast = text_tokenizer(str(qwen3_tokenizer_dir))
    assert type(fast).__module__.startswith("tokenizers")
    assert count_text_tokens(texts, fast) == count_text_tokens(texts, load_tokenizer(qwen3_tokenizer_dir))


@pytest.mark.skipif(__import__("importlib").util.find_spec("rapidocr") is None,
                    reason="RapidOCR not installed (pip install -e '.[rapidocr]')")
def test_rapidocr_reads_real_pages(slices):
    engine = make_engine("rapidocr", upscale=2.0)
    assert engine.describe().startswith("rapidocr ")
    res = measure_config("dense", preset("dense"), slices[:1], [300], PageReader(engine, None))
    assert res.score.pages >= 1 and res.score.char_accuracy > 0.9, res.score


def test_config_round_trips_and_gives_the_cli_its_defaults():
    import argparse

    from vtcr.commands import bench_fidelity

    cfg = FidelityConfig(traces="t.jsonl", presets=("dense",), configs=("a.json",), limit=5, search=True,
                         search_params=("margin", "dpi"))
    assert FidelityConfig.from_json(cfg.to_json()) == cfg
    parser = argparse.ArgumentParser()
    bench_fidelity.register(parser.add_subparsers())
    args = parser.parse_args(["fidelity", "--traces", "t.jsonl"])
    defaults = FidelityConfig()
    for name in ("presets", "configs", "ocr", "upscale", "limit", "max_chars", "text_fields", "workers", "tokenizer",
                 "search_margin", "search_family", "search_texts", "search_chars", "search_trials", "search_confirm",
                 "search_params"):
        assert getattr(args, name) == getattr(defaults, name), name
    with pytest.raises(ValueError, match="unknown search parameter"):
        FidelityConfig(search_params=("colour",))
    with pytest.raises(ValueError, match="search_margin"):
        FidelityConfig(search_margin=5)


def test_cli_without_tesseract_says_which_package(tmp_path, shared_data):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src"), "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.run([sys.executable, "-m", "vtcr.cli", "bench", "fidelity", "--traces",
                           str(shared_data / "traces" / "sky_t1_traces.jsonl.gz"), "--limit", "1",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert "tesseract-ocr tesseract-ocr-eng" in proc.stderr and "Traceback" not in proc.stderr
