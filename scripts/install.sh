#!/usr/bin/env bash
# Sets up everything vtcr needs on a fresh machine. Idempotent: re-running is cheap.
#   bash scripts/install.sh          # library + CLI
#   bash scripts/install.sh --test   # plus test-only packages and system tools used by the tests
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

# System packages: poppler (the reference pdftoppm pipeline, used for parity tests and benchmarks).
if ! command -v pdftoppm >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && apt-get install -y -qq poppler-utils >/dev/null
  else
    echo "install.sh: poppler-utils missing (optional: reference pipeline comparisons are skipped)" >&2
  fi
fi

# System packages: Tesseract OCR with its English model (`vtcr bench fidelity` reads rendered pages back).
if ! command -v tesseract >/dev/null 2>&1 || ! tesseract --list-langs 2>/dev/null | grep -qx eng; then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && apt-get install -y -qq tesseract-ocr tesseract-ocr-eng >/dev/null
  else
    echo "install.sh: tesseract-ocr / tesseract-ocr-eng missing (optional: vtcr bench fidelity and its tests need them)" >&2
  fi
fi

# Test-only: headless Chromium (Debian's `chromium`) loads the eval viewer (tests/test_eval_run.py).
if [[ $want_test -eq 1 ]] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "install.sh: chromium missing (optional: the HTML viewer test is skipped)" >&2
  fi
fi

# torch: keep whatever torch the user already has (e.g. a CUDA build); otherwise pin the
# release whose CPU wheel this project is tested with.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==2.13.0"
fi

extras="all"
[[ $want_test -eq 1 ]] && extras="all,test"
"$PY" -m pip install -q -e ".[${extras}]"
