"""vtcr's built-in models: two tiny Qwen3-VL checkpoints shipped inside the package.

Both are trained by vtcr's own builder and trainer (`vtcr.builtin.recipe`, `vtcr builtin rebuild`) on
the built-in task of `vtcr.data.synthetic` (Fibonacci mod 10 with an accumulator, one line per step):

- ``vtc``: optical-memory samples (the question and the pages of earlier rounds -> the next 6
  lines); used for the ``vtc``, ``text`` and ``no-memory`` engine modes;
- ``standard``: whole traces (the question -> every line at once); used for ``standard`` mode.

The weights live in ``vtcr/builtin/weights/{vtc,standard}/`` with ``manifest.json`` (the recipe,
the figures of the training run, and the sha256 of every file). Nothing is trained on first use:
`model_dir` verifies the files and raises `BuiltinWeightsError` (naming the file and
``vtcr builtin rebuild``) when one is missing or corrupted. See MODEL_CARD.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vtcr.data.synthetic import (
    LINES_PER_SEGMENT,
    SUPPORTED_LENGTHS,
    TRAIN_LENGTHS,
    parse_question,
    problems_of_length,
)

from .recipe import MANIFEST_FILE, MODES_TRAINED, BuiltinRecipe, builtin_render_config, rebuild, sha256_file

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_ENV = "VTCR_BUILTIN_WEIGHTS"  # another folder of built-in weights (e.g. one made by `vtcr builtin rebuild --out`)
ROUND_TOKENS = 320  # 6 lines of 48 tokens, then </think> and the answer
EXAMPLE_QUESTION = problems_of_length(20)[0].question()

TASK_HELP = (
    "vtcr's built-in models only solve the built-in task (Fibonacci mod 10 with an accumulator), questions like\n"
    f"  {EXAMPLE_QUESTION}\n"
    f"whose start reaches y=1 s=0 in {SUPPORTED_LENGTHS[0]}-{SUPPORTED_LENGTHS[1]} steps. "
    "For any other question point vtcr at a real checkpoint: --model PATH (a local folder or hub id), "
    "or --server URL --served-model NAME (vllm serve, SGLang, vtcr serve)."
)


class BuiltinWeightsError(FileNotFoundError):
    """The shipped weights are missing or do not match their manifest."""


def weights_root(root: str | os.PathLike | None = None) -> Path:
    """The folder of built-in weights: `root`, else $VTCR_BUILTIN_WEIGHTS, else the package's own."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env).expanduser() if env else WEIGHTS_DIR


def _fix_hint() -> str:
    return "run `vtcr builtin rebuild` (about 70 minutes on a 2-core CPU) or reinstall vtcr"


def read_manifest(root: str | os.PathLike | None = None) -> dict[str, Any]:
    path = weights_root(root) / MANIFEST_FILE
    if not path.is_file():
        raise BuiltinWeightsError(f"built-in weights: {path} is missing; {_fix_hint()}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BuiltinWeightsError(f"built-in weights: {path} is not valid JSON ({exc}); {_fix_hint()}") from None


def verify(mode_model: str | None = None, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Check the files of one built-in model (``vtc`` / ``standard``; None: both) against the
    manifest's sha256; the manifest. BuiltinWeightsError names the first bad file."""
    base = weights_root(root)
    manifest = read_manifest(root)
    names = MODES_TRAINED if mode_model is None else (mode_model,)
    for name in names:
        if name not in MODES_TRAINED:
            raise ValueError(f"unknown built-in model {name!r}; choose {' or '.join(MODES_TRAINED)}")
        entries = {k: v for k, v in manifest.get("files", {}).items() if k.split("/", 1)[0] == name}
        if not entries:
            raise BuiltinWeightsError(f"built-in weights: {base / MANIFEST_FILE} lists no file of the {name} model; {_fix_hint()}")
        for rel, entry in sorted(entries.items()):
            path = base / rel
            if not path.is_file():
                raise BuiltinWeightsError(f"built-in weights: {path} is missing; {_fix_hint()}")
            if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
                raise BuiltinWeightsError(
                    f"built-in weights: {path} is corrupted (its sha256 does not match {MANIFEST_FILE}); {_fix_hint()}"
                )
    return manifest


def model_for_mode(mode: str) -> str:
    """Which built-in model serves an engine mode: ``standard`` for standard, ``vtc`` for the others."""
    return "standard" if mode == "standard" else "vtc"


def model_dir(mode: str = "vtc", root: str | os.PathLike | None = None) -> Path:
    """The verified checkpoint folder of the built-in model for engine `mode`."""
    name = model_for_mode(mode)
    verify(name, root)
    return weights_root(root) / name


def builtin_engine_config(mode: str = "vtc", **changes: Any):
    """The engine settings the built-in models are meant for: greedy, 8 rounds of <= 256 tokens."""
    from vtcr.engine import EngineConfig

    settings: dict[str, Any] = {"mode": mode, "max_rounds": 8, "round_tokens": ROUND_TOKENS, "temperature": 0.0,
                                "answer_type": "integer"}  # fmt: skip
    settings.update(changes)
    return EngineConfig(**settings)


def off_task_warning(question: str) -> str | None:
    """None for a question of the built-in task; else the warning to show (what the built-in models
    solve and how to use a real checkpoint)."""
    problem = parse_question(question)
    if problem is not None and SUPPORTED_LENGTHS[0] <= problem.length <= SUPPORTED_LENGTHS[1]:
        return None
    if problem is not None:
        return (f"warning: this question needs {problem.length} steps; the built-in models support "
                f"{SUPPORTED_LENGTHS[0]}-{SUPPORTED_LENGTHS[1]} (trained on {TRAIN_LENGTHS[0]}-{TRAIN_LENGTHS[1]}): "
                "expect a wrong answer.\n" + TASK_HELP)  # fmt: skip
    return "warning: this question is not one of the built-in task; the answer will be meaningless.\n" + TASK_HELP


def load_backends(modes=("vtc",), root: str | os.PathLike | None = None, device: str | None = "cpu", dtype: str | None = None):
    """A mapping engine mode -> backend over the built-in models (one backend per model, shared by
    the modes it serves): what `vtcr.evaluate.run_eval(backend=...)` takes."""
    from vtcr.engine import TransformersBackend

    loaded: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for mode in modes:
        name = model_for_mode(mode)
        if name not in loaded:
            loaded[name] = TransformersBackend.from_pretrained(model_dir(mode, root), device=device, dtype=dtype,
                                                               name=f"builtin-{name}")  # fmt: skip
        out[mode] = loaded[name]
    return out


def info(root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Where the built-in weights are, whether each model verifies, and the manifest's summary."""
    base = weights_root(root)
    out: dict[str, Any] = {"weights": str(base), "models": {}}
    try:
        manifest = read_manifest(root)
    except BuiltinWeightsError as exc:
        out["error"] = str(exc)
        for name in MODES_TRAINED:
            out["models"][name] = {"path": str(base / name), "ok": False, "error": str(exc)}
        return out
    for name in MODES_TRAINED:
        entry: dict[str, Any] = {"path": str(base / name)}
        try:
            verify(name, root)
            entry["ok"] = True
        except BuiltinWeightsError as exc:
            entry.update(ok=False, error=str(exc))
        entry["bytes"] = sum(v["bytes"] for k, v in manifest.get("files", {}).items() if k.startswith(name + "/"))
        trained = (manifest.get("trained") or {}).get(name) or {}
        entry["final_train_loss"] = trained.get("final_train_loss")
        out["models"][name] = entry
    out["recipe"] = manifest.get("recipe")
    out["recipe_key"] = manifest.get("recipe_key")
    out["figures"] = manifest.get("figures")
    return out


__all__ = [
    "EXAMPLE_QUESTION", "LINES_PER_SEGMENT", "ROUND_TOKENS", "SUPPORTED_LENGTHS", "TASK_HELP", "TRAIN_LENGTHS",
    "WEIGHTS_DIR", "BuiltinRecipe", "BuiltinWeightsError", "builtin_engine_config", "builtin_render_config", "info",
    "load_backends", "model_dir", "model_for_mode", "off_task_warning", "read_manifest", "rebuild", "verify",
    "weights_root",
]  # fmt: skip


def default_notice(modes, root: str | os.PathLike | None = None) -> str:
    """What `vtcr reason` / `vtcr eval` print when no --model is given: which built-in model serves
    which mode, and how to use a real checkpoint instead."""
    base = weights_root(root)
    used = ", ".join(f"{mode}: {base / model_for_mode(mode)}" for mode in modes)
    return (f"no --model given: using vtcr's built-in models ({used}); they solve only the built-in task. "
            "Use --model PATH or --server URL for a real checkpoint.")


def eval_warning(benchmarks) -> str | None:
    """A warning when the built-in models are asked to run benchmarks other than `builtin`."""
    other = [b for b in benchmarks if b != "builtin"]
    if not other:
        return None
    return (f"warning: the built-in models only solve the builtin benchmark; {', '.join(other)} will score ~0. "
            "Give --model PATH or --server URL to evaluate a real checkpoint.")


__all__ += ["default_notice", "eval_warning"]
