"""Renderer: config round trip, reference-exact layout, pixel parity across backends, bad input."""

from __future__ import annotations

import io
import json
import random
import re
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from vtcr.render import (
    BACKENDS, RenderConfig, Renderer, png_bytes, preset, save_pages,
)
from vtcr.render.fonts import load_font
from vtcr.render.layout import LINES_PER_PARAGRAPH, LayoutEngine
from vtcr.render.pdf import _markup_lines, have_pdftoppm, paragraph_style

REFERENCE_CONFIG = {  # the paper's evaluation/config_en.json, key for key
    "page-size": "595,842", "dpi": 72, "margin-x": 10, "margin-y": 10,
    "font-path": "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "font-size": 9, "line-height": 10,
    "font-color": "#000000", "alignment": "LEFT", "horizontal-scale": 1.0, "first-line-indent": 0,
    "left-indent": 0, "right-indent": 0, "space-after": 0, "space-before": 0, "border-width": 0,
    "border-padding": 0, "page-bg-color": "#FFFFFF", "para-bg-color": "#FFFFFF",
    "auto-crop-width": True, "auto-crop-last-page": True,
}


def reportlab_drawn_lines(text: str, cfg: RenderConfig) -> list[list[str]]:
    """Ground truth: the lines reportlab itself draws on each page for the reference story."""
    from reportlab.platypus import Paragraph, SimpleDocTemplate

    font = load_font(cfg.resolved_font_path())
    style = paragraph_style(cfg, font.name, bool(re.search(r"[\u4E00-\u9FFF]", text)))
    drawn: dict[int, list[str]] = {}

    class Recording(Paragraph):
        def draw(self):
            bl = self.blPara
            for line in bl.lines:
                words = " ".join(line[1]) if bl.kind == 0 else "".join(getattr(f, "text", "") for f in line.words)
                drawn.setdefault(self.canv.getPageNumber(), []).append(words.strip(" "))
            super().draw()

    parts = _markup_lines(text)
    story = [Recording(cfg.newline_markup.join(parts[i:i + LINES_PER_PARAGRAPH]), style)
             for i in range(0, len(parts), LINES_PER_PARAGRAPH)]
    w, h = cfg.page_size
    SimpleDocTemplate(io.BytesIO(), pagesize=(w, h), leftMargin=cfg.margin_x, rightMargin=cfg.margin_x,
                      topMargin=cfg.margin_y, bottomMargin=cfg.margin_y).build(story)
    return [drawn.get(i, []) for i in range(1, max(drawn, default=0) + 1)]


def fast_lines(text: str, cfg: RenderConfig) -> list[list[str]]:
    return [[line.text.strip(" ") for line in page.lines] for page in LayoutEngine(cfg).pages(text)]


def fuzz_text(rng: random.Random) -> str:
    """Text shaped like reasoning traces, with the layout's hard cases mixed in."""
    vocab = ["the", "answer", "is", "$x^2+1$", "\\frac{a}{b}", "=", "so", "Let's", "check:", "42,", "(3,", "4)",
             "therefore", "\\boxed{7}", "Wait,", "α", "→", "≤", "x" * rng.randint(20, 120)]
    lines = []
    for _ in range(rng.randint(1, 140)):
        kind = rng.random()
        if kind < 0.25:
            lines.append("")
        elif kind < 0.3:
            lines.append(" " * rng.randint(1, 6))
        else:
            words = [rng.choice(vocab) for _ in range(rng.randint(1, 60))]
            sep = [rng.choice([" ", " ", " ", "  ", "\t", "   "]) for _ in words]
            lines.append(rng.choice(["", " ", "    "]) + "".join(w + s for w, s in zip(words, sep)))
    if rng.random() < 0.2:
        lines.append("y" * rng.randint(600, 2500))  # wider than a line: reportlab splits it
    return "\n".join(lines) + rng.choice(["", "\n", "\n\n"])


# ---- configuration ------------------------------------------------------------------------------

def test_reference_config_loads_and_matches_vtcr1_preset():
    cfg = RenderConfig.from_dict(REFERENCE_CONFIG)
    # the OS font path is absent here: it resolves to the bundled copy of the same font file
    assert cfg.resolved_font_path().name == "DejaVuSans.ttf"
    ref = preset("vtcr1")
    for attr in ("page_size", "dpi", "margin_x", "margin_y", "font_size", "leading", "alignment",
                 "auto_crop_width", "auto_crop_last_page", "newline_markup", "horizontal_scale"):
        assert getattr(cfg, attr) == getattr(ref, attr), attr


@pytest.mark.parametrize("name", ["vtcr1", "dense"])
def test_config_json_round_trip(tmp_path, name):
    cfg = preset(name)
    path = tmp_path / "cfg.json"
    cfg.to_json(path)
    data = json.loads(path.read_text())
    assert data["page-size"] == "595,842" and data["font-size"] == 9.0
    assert RenderConfig.from_json(path) == cfg


@pytest.mark.parametrize("data, message", [
    ({"font-sise": 9}, "font-sise"),
    ({"font-size": "9"}, "'font-size'"),
    ({"dpi": 72.5}, "'dpi'"),
    ({"auto-crop-width": "yes"}, "'auto-crop-width'"),
    ({"alignment": "MIDDLE"}, "'alignment'"),
    ({"font-color": "black"}, "'font-color'"),
    ({"page-size": "595"}, "'page-size'"),
    ({"font-size": -1}, "'font-size'"),
])
def test_bad_config_values_name_the_key(data, message):
    with pytest.raises(ValueError, match=message):
        RenderConfig.from_dict(data)


def test_config_file_errors(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        RenderConfig.from_json(bad_json)
    with pytest.raises(ValueError, match="unknown render preset 'nope'"):
        preset("nope")


def test_unreadable_and_missing_font_files(tmp_path):
    garbage = tmp_path / "garbage.ttf"
    garbage.write_bytes(b"definitely not a font" * 10)
    with pytest.raises(ValueError, match="garbage.ttf"):
        Renderer(preset("vtcr1").replace(font_path=str(garbage)))
    with pytest.raises(FileNotFoundError, match="missing.ttf"):
        Renderer(preset("vtcr1").replace(font_path=str(tmp_path / "missing.ttf")))


def test_any_ttf_path_is_accepted(tmp_path):
    import matplotlib

    mpl_font = __import__("pathlib").Path(matplotlib.__file__).parent / "mpl-data/fonts/ttf/DejaVuSerif.ttf"
    pages = Renderer(preset("vtcr1").replace(font_path=str(mpl_font))).render("Serif text renders.")
    assert len(pages) == 1 and pages[0].width < 300


# ---- layout parity with reportlab -----------------------------------------------------------------

@pytest.mark.parametrize("name, count", [("vtcr1", 30), ("dense", 12)])
def test_fast_layout_equals_reportlab_on_shared_traces(shared_traces, name, count):
    cfg = preset(name)
    rng = random.Random(7)
    for record in rng.sample(shared_traces, count):
        assert fast_lines(record["trace"], cfg) == reportlab_drawn_lines(record["trace"], cfg), record["id"]


MARKER_VARIANTS = {  # inline newline markers the layout engine must flow exactly like reportlab
    "red marker": ' <font color="#FF0000">\u21b5</font> ',
    "glued marker": "\u00b6",
    "left-glued marker": " //",
}


@pytest.mark.parametrize("name", ["vtcr1", "dense", *MARKER_VARIANTS])
def test_fast_layout_equals_reportlab_on_fuzzed_text(name):
    cfg = preset(name) if name in ("vtcr1", "dense") else preset("dense").replace(newline_markup=MARKER_VARIANTS[name])
    rng = random.Random(1234)
    for case in range(30 if name in ("vtcr1", "dense") else 8):
        text = fuzz_text(rng)
        assert fast_lines(text, cfg) == reportlab_drawn_lines(text, cfg), f"fuzz case {case}"


# ---- pixels ---------------------------------------------------------------------------------------

def _assert_same_pages(a: list[Image.Image], b: list[Image.Image], label: str) -> None:
    assert len(a) == len(b), f"{label}: {len(a)} pages vs {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        assert abs(x.width - y.width) <= 1 and abs(x.height - y.height) <= 1, f"{label} page {i}: {x.size} vs {y.size}"


def test_backends_produce_the_reference_pages_for_vtcr1(finished_traces):
    cfg = preset("vtcr1")
    backends = ["fast", "reportlab"] + (["reference"] if have_pdftoppm() else [])
    renderers = {b: Renderer(cfg, b) for b in backends}
    for record in random.Random(3).sample(finished_traces, 6):
        pages = {b: r.render(record["trace"]) for b, r in renderers.items()}
        truth = pages.get("reference", pages["reportlab"])
        assert pages["fast"][0].mode == "RGB"
        for b in backends:
            _assert_same_pages(pages[b], truth, f"{record['id']} {b}")
    if not have_pdftoppm():
        pytest.skip("pdftoppm absent: compared with the in-process reportlab backend only")


def test_fast_page_pixels_match_pdfium_closely(finished_traces):
    import numpy as np

    text = finished_traces[0]["trace"]
    fast = Renderer(preset("vtcr1"), "fast").render(text)[0]
    ref = Renderer(preset("vtcr1"), "reportlab").render(text)[0]
    h, w = min(fast.height, ref.height), min(fast.width, ref.width)
    a = np.asarray(fast.convert("L"), float)[:h, :w]
    b = np.asarray(ref.convert("L"), float)[:h, :w]

    def best_shift(pa, pb):  # the offset (pixels) that best aligns two ink profiles
        return min(range(-3, 4), key=lambda k: np.abs(np.roll(pa, k) - pb).sum())

    ink_a, ink_b = 255 - a, 255 - b
    assert best_shift(ink_a.sum(axis=1), ink_b.sum(axis=1)) == 0  # same baselines
    assert best_shift(ink_a.sum(axis=0), ink_b.sum(axis=0)) == 0  # same glyph positions
    assert np.abs(a - b).mean() < 6  # same glyphs in the same places (anti-aliasing differs slightly)


def test_coloured_marker_is_drawn_in_its_colour(finished_traces):
    import numpy as np

    cfg = preset("dense").replace(newline_markup=MARKER_VARIANTS["red marker"])
    text = finished_traces[0]["trace"]
    fast = Renderer(cfg, "fast").render(text)
    slow = Renderer(cfg, "reportlab").render(text)
    _assert_same_pages(fast, slow, "red marker")
    rgb = np.asarray(fast[0]).astype(int)
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)
    assert red.sum() > 50  # markers are red, text stays black


def test_dense_is_denser_than_vtcr1(finished_traces):
    text = finished_traces[1]["trace"]
    dense = Renderer(preset("dense")).render(text)
    sparse = Renderer(preset("vtcr1")).render(text)
    area = lambda pages: sum(p.width * p.height for p in pages)  # noqa: E731
    assert area(dense) * 2 < area(sparse)


def test_same_input_gives_byte_identical_pngs(tmp_path, finished_traces):
    text = finished_traces[2]["trace"]
    first = [png_bytes(p) for p in Renderer(preset("dense")).render(text)]
    second = [png_bytes(p) for p in Renderer(preset("dense")).render(text)]
    assert first == second and len(first) >= 1
    paths = save_pages(Renderer(preset("dense")).render(text), tmp_path / "out")
    assert [p.name for p in paths] == [f"page_{i:03d}.png" for i in range(1, len(first) + 1)]
    assert [p.read_bytes() for p in paths] == first


# ---- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["fast", "reportlab"])
def test_empty_and_blank_text_give_no_pages(backend):
    renderer = Renderer(preset("vtcr1"), backend)
    assert renderer.render("") == []
    assert renderer.render(" \n\t\n  ") == []


@pytest.mark.parametrize("label, text", [
    ("tabs", "a\tb\t\tc\n\tindented\n\t\t"),
    ("cjk", "中文字 测试 " * 120),
    ("emoji and missing glyphs", "hi 😀🚀 there 🎉 \U000e0041 \u0378 " * 40),
    ("control characters", "a\x00b\x07c\x1bd\x7fe\x85f\x9f end"),
    ("long word", "x" * 100_000),
])
def test_hard_text_renders_like_reportlab(label, text):
    fast = Renderer(preset("vtcr1"), "fast").render(text)
    slow = Renderer(preset("vtcr1"), "reportlab").render(text)
    assert fast, label
    _assert_same_pages(fast, slow, label)


def test_non_string_text_is_refused():
    with pytest.raises(ValueError, match="must be a str"):
        Renderer(preset("vtcr1")).render(b"bytes")  # type: ignore[arg-type]


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown render backend 'gpu'"):
        Renderer(preset("vtcr1"), "gpu")
    assert set(BACKENDS) == {"fast", "reportlab", "reference"}


def test_million_characters_render_page_by_page_in_bounded_memory(tmp_path):
    """Peak memory while streaming 1,000,000 characters stays near that of 100,000."""
    script = textwrap.dedent("""
        import resource, sys
        from vtcr.render import Renderer, preset
        n = int(sys.argv[1])
        unit = "Step: we compute $x^2 + y^2 = 25$, so the answer follows.\\n\\n"
        text = (unit * (n // len(unit) + 1))[:n]
        pages = 0
        for page in Renderer(preset("dense")).iter_pages(text):
            pages += 1
        print(pages, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    results = {}
    for n in (100_000, 1_000_000):
        out = subprocess.run([sys.executable, "-c", script, str(n)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        pages, rss_kb = map(int, out.stdout.split())
        results[n] = (pages, rss_kb)
    assert results[1_000_000][0] >= 9 * results[100_000][0]
    # 10x the text: the text itself (~10 MB as str + split lines) may grow memory, images must not
    assert results[1_000_000][1] - results[100_000][1] < 80_000, results
