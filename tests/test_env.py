"""`vtcr env`: what vtcr finds on this machine, checked against the machine itself; absent tools and
data are reported as absent, never raised."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vtcr
from vtcr.env import PACKAGES, collect_builtin_models, collect_env, collect_shared_data, collect_tools, format_env

TOP_KEYS = {"vtcr", "python", "packages", "torch", "cpu", "processor", "tools", "shared_data", "builtin_models", "environment"}
ISSUE_PACKAGES = {"torch", "transformers", "tokenizers", "peft", "accelerate", "datasets", "math-verify", "numpy",
                  "pillow", "reportlab", "pypdfium2"}  # fmt: skip


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.fixture(scope="module")
def env_json() -> dict:
    """`vtcr env --json` as a user runs it, in its own process."""
    proc = subprocess.run([sys.executable, "-m", "vtcr.cli", "env", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_env_json_keys_and_values_match_this_machine(env_json):
    info = env_json
    assert set(info) == TOP_KEYS
    assert info["vtcr"] == {"version": vtcr.__version__, "path": str(Path(vtcr.__file__).resolve().parent)}
    assert info["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert ISSUE_PACKAGES <= set(info["packages"]) == set(PACKAGES)
    assert info["packages"] == {name: _installed(name) for name in PACKAGES}

    import torch

    t = info["torch"]
    assert {"installed", "version", "build", "cuda_available", "devices", "threads"} <= set(t)
    assert t["version"] == torch.__version__
    assert t["build"] == (f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU")
    assert t["cuda_available"] == torch.cuda.is_available()
    assert len(t["devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    for d in t["devices"]:
        assert {"index", "name", "memory_bytes", "capability"} <= set(d) and d["memory_bytes"] > 0

    assert info["cpu"]["count"] == os.cpu_count()
    if hasattr(os, "sched_getaffinity"):
        assert info["cpu"]["affinity"] == sorted(os.sched_getaffinity(0)) and info["cpu"]["usable"] >= 1

    from vtcr.models.processor import torchvision_available

    assert info["processor"]["torchvision_imports"] == torchvision_available()
    assert ("AutoProcessor" in info["processor"]["path"]) == torchvision_available()

    assert set(info["tools"]) == {"pdftoppm", "chromium", "tesseract"}
    for name, tool in info["tools"].items():
        assert {"found", "path", "version"} <= set(tool)
        assert tool["found"] == (tool["path"] is not None)
    assert info["tools"]["pdftoppm"]["path"] == shutil.which("pdftoppm")
    if shutil.which("pdftoppm"):  # installed on this project's machines (install.sh)
        assert info["tools"]["pdftoppm"]["version"]

    from vtcr._io import find_shared_data

    found = find_shared_data(required=False)
    assert info["shared_data"]["found"] == (found is not None)
    assert info["shared_data"]["path"] == (str(found) if found else None)

    b = info["builtin_models"]
    assert b["installed"] and b["status"] == "ok", b  # the weights ship inside the package
    assert set(b["models"]) == {"vtc", "standard"} and all(m["ok"] for m in b["models"].values())


def test_tesseract_languages_are_listed_when_it_is_installed(env_json):
    tess = env_json["tools"]["tesseract"]
    if not tess["found"]:
        pytest.skip("tesseract is not installed")
    proc = subprocess.run([tess["path"], "--list-langs"], capture_output=True, text=True)
    listed = proc.stdout + proc.stderr
    assert tess["languages"] and all(lang in listed for lang in tess["languages"])


def test_absent_tools_are_reported_as_absent_not_as_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no tool can be found
    tools = collect_tools()
    for name, tool in tools.items():
        assert tool["found"] is False and tool["path"] is None and tool["version"] is None, name
    assert tools["tesseract"]["languages"] is None
    text = format_env({**collect_env(), "tools": tools})
    assert "pdftoppm   not found (looked for pdftoppm on PATH)" in text
    assert "chromium   not found" in text and "tesseract  not found" in text


def test_a_tool_that_fails_is_reported_without_a_version_not_raised(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    broken = bin_dir / "pdftoppm"
    broken.write_text("#!/bin/sh\necho 'segmentation fault' >&2\nexit 139\n", encoding="utf-8")
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    tool = collect_tools()["pdftoppm"]
    assert tool == {"found": True, "path": str(broken), "version": None}


def test_absent_shared_data_says_how_to_point_at_it(tmp_path, monkeypatch):
    monkeypatch.setenv("VTCR_DATA", str(tmp_path / "nowhere"))
    data = collect_shared_data()
    assert data["found"] is False and data["path"] is None
    assert "VTCR_DATA" in data["hint"] and str(tmp_path / "nowhere") in data["hint"]


def test_damaged_builtin_weights_are_reported_naming_the_file(tmp_path, monkeypatch):
    import shutil

    import vtcr.builtin as builtin

    copy = tmp_path / "weights"
    shutil.copytree(builtin.weights_root(), copy)
    damaged = next((copy / "standard").glob("*.safetensors"))
    damaged.write_bytes(damaged.read_bytes()[:-7] + b"garbage")
    monkeypatch.setenv(builtin.WEIGHTS_ENV, str(copy))
    b = collect_builtin_models()
    assert b["status"] == "damaged" and b["models"]["vtc"]["ok"] and not b["models"]["standard"]["ok"]
    assert damaged.name in b["models"]["standard"]["error"]
    assert "damaged" in format_env(collect_env())


def test_text_form_names_every_package_and_the_torch_build(env_json):
    text = format_env(env_json)
    for name, version in env_json["packages"].items():
        assert f"{name}" in text and (version or "not installed") in text
    assert f"torch {env_json['torch']['version']}, {env_json['torch']['build']} build" in text
