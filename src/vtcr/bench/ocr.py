"""Independent OCR engines that read rendered pages back: one small adapter per engine, one interface.

    engine = make_engine("tesseract", upscale=2.0)
    text = engine.read(page)            # PIL image -> the text the engine sees ("" when it sees none)

tesseract  the Tesseract 5 LSTM engine, Debian packages `tesseract-ocr` + `tesseract-ocr-eng` (its
           English model ships in the package; scripts/install.sh installs both when run as root).
           Run as a subprocess per page, one thread each (OMP_THREAD_LIMIT=1).
rapidocr   RapidOCR (PP-OCR detection + recognition on onnxruntime), PyPI `rapidocr` + `onnxruntime`
           (`pip install 'vtcr[rapidocr]'`; the wheel ships its ONNX models, nothing is downloaded).

Pages are upscaled by `upscale` (Lanczos) before reading: both engines are trained on text larger
than a 9 pt glyph at 72 dpi (about 7 px high), and upscaling adds no information the page lacks.
A missing engine raises `OcrEngineMissing` (a FileNotFoundError) naming the package to install.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import threading

from PIL import Image

TESSERACT_PACKAGES = "tesseract-ocr tesseract-ocr-eng"
RAPIDOCR_PACKAGES = "rapidocr onnxruntime"


class OcrEngineMissing(FileNotFoundError):
    """The OCR engine (binary, language model or Python package) is not installed."""


class OcrEngine:
    """Base adapter: `read(image) -> str`. Subclasses implement `_recognise(image)`."""

    name = "ocr"

    def __init__(self, upscale: float = 2.0):
        if not upscale > 0:
            raise ValueError(f"OCR upscale must be a positive factor, got {upscale!r}")
        self.upscale = float(upscale)

    def prepare(self, image: Image.Image) -> Image.Image:
        """Greyscale, upscaled by `upscale` (the image the engine actually reads)."""
        gray = image.convert("L")
        if self.upscale == 1.0:
            return gray
        size = (max(1, round(gray.width * self.upscale)), max(1, round(gray.height * self.upscale)))
        return gray.resize(size, Image.LANCZOS)

    def read(self, image: Image.Image) -> str:
        """The engine's reading of one page; "" when it finds no text (a blank or unreadable page)."""
        return self._recognise(self.prepare(image))

    def _recognise(self, image: Image.Image) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        """Engine, version and settings, as a report shows them (also the cache key of readings)."""
        return f"{self.name}, pages upscaled {self.upscale:g}x"


class TesseractOcr(OcrEngine):
    """Tesseract through its command line: `tesseract stdin stdout -l LANG --psm PSM`."""

    name = "tesseract"

    def __init__(self, upscale: float = 2.0, binary: str = "tesseract", lang: str = "eng", psm: int = 3,
                 timeout: float = 300.0):
        super().__init__(upscale)
        path = shutil.which(binary)
        if path is None:
            raise OcrEngineMissing(
                f"the Tesseract OCR binary {binary!r} was not found: install the Debian packages "
                f"{TESSERACT_PACKAGES} (`apt-get install {TESSERACT_PACKAGES}`; scripts/install.sh does it when "
                "run as root), or choose another engine with --ocr rapidocr")
        self.binary, self.lang, self.psm, self.timeout = path, lang, int(psm), timeout
        out, err = self._run(["--list-langs"])
        langs = [line.strip() for line in (out or err).splitlines()[1:] if line.strip()]  # after the header
        if lang not in langs:
            raise OcrEngineMissing(
                f"Tesseract has no {lang!r} language model (installed: {', '.join(langs) or 'none'}): install the "
                f"Debian package tesseract-ocr-{lang}")
        out, err = self._run(["--version"])  # Tesseract 5 prints it on stdout, 4 on stderr
        first = (out or err).splitlines()
        self.version = first[0].split()[-1] if first else "?"

    def _run(self, args: list[str], data: bytes | None = None) -> tuple[str, str]:
        """(stdout, stderr) of one Tesseract call; a failed call raises, naming the call."""
        # one thread per process: pages are read in parallel by the caller, not inside Tesseract
        env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
        proc = subprocess.run([self.binary, *args], input=data, capture_output=True, timeout=self.timeout, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.binary} {' '.join(args)} failed (exit {proc.returncode}): "
                               f"{proc.stderr.decode(errors='replace').strip()[-500:]}")
        return proc.stdout.decode("utf-8", errors="replace"), proc.stderr.decode("utf-8", errors="replace")

    def _recognise(self, image: Image.Image) -> str:
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1)
        text, _ = self._run(["stdin", "stdout", "-l", self.lang, "--psm", str(self.psm)], buf.getvalue())
        return text

    def describe(self) -> str:
        return f"tesseract {self.version} ({self.lang}, psm {self.psm}), pages upscaled {self.upscale:g}x"


class RapidOcr(OcrEngine):
    """RapidOCR in-process; its text lines come back top to bottom and are joined by newlines."""

    name = "rapidocr"

    def __init__(self, upscale: float = 2.0, threads: int = 1):
        super().__init__(upscale)
        try:
            import rapidocr
            from rapidocr import RapidOCR
        except ImportError:
            raise OcrEngineMissing(
                f"RapidOCR is not installed: pip install 'vtcr[rapidocr]' (the PyPI packages {RAPIDOCR_PACKAGES}), "
                "or choose another engine with --ocr tesseract") from None
        params = {"Global.log_level": "error",
                  # pages are bigger than its default 2000 px cap once upscaled; never shrink them back
                  "Global.max_side_len": 100_000,
                  "EngineConfig.onnxruntime.intra_op_num_threads": int(threads),
                  "EngineConfig.onnxruntime.inter_op_num_threads": 1}
        self._engine = RapidOCR(params=params)
        self._lock = threading.Lock()  # one onnxruntime session: one page at a time
        self.version = getattr(rapidocr, "__version__", None) or _dist_version("rapidocr")

    def _recognise(self, image: Image.Image) -> str:
        import numpy as np

        with self._lock:
            result = self._engine(np.asarray(image.convert("RGB")))
        return "\n".join(getattr(result, "txts", None) or ())

    def describe(self) -> str:
        return f"rapidocr {self.version}, pages upscaled {self.upscale:g}x"


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


ENGINES: dict[str, type[OcrEngine]] = {"tesseract": TesseractOcr, "rapidocr": RapidOcr}


def make_engine(name: str, upscale: float = 2.0, **options) -> OcrEngine:
    """An OCR engine by name (`ENGINES`); options go to its adapter."""
    try:
        cls = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown OCR engine {name!r}; choose one of {sorted(ENGINES)}") from None
    return cls(upscale=upscale, **options)
