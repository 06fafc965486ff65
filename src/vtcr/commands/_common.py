"""Argument helpers shared by several verbs: defaults read from the library's dataclasses, the render
config flags, the engine flags, text input.

A flag's default and its help text come from the dataclass field it sets (`default_of`), so the CLI
can never drift from the library (tests/test_cli_defaults.py checks every verb).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any


def comma_list(text: str) -> tuple[str, ...]:
    """An argparse type: `a, b,c` -> ("a", "b", "c") (blank items dropped)."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


def comma_ints(text: str) -> tuple[int, ...]:
    """An argparse type: `1,8,32` -> (1, 8, 32); anything else is a usage error naming the value."""
    try:
        return tuple(int(p) for p in comma_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def default_of(cls: type, name: str) -> Any:
    """The default of dataclass field `name` of `cls`."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise ValueError(f"{cls.__name__}.{name} has no default")
    raise ValueError(f"{cls.__name__} has no field {name!r}")


def param_default(func: Any, name: str) -> Any:
    """The default of keyword parameter `name` of a library function (runtime-only choices that
    are arguments, not config fields)."""
    import inspect

    default = inspect.signature(func).parameters[name].default
    if default is inspect.Parameter.empty:
        raise ValueError(f"{func.__name__}() has no default for {name!r}")
    return default


def shown(value: Any) -> str:
    """A default as help text shows it."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


# ---- render configs ----------------------------------------------------------------------------


def add_render_config_args(parser: argparse.ArgumentParser) -> None:
    """`--preset NAME | --config FILE`: the render config of the verbs that render text."""
    from vtcr.render import DEFAULT_PRESET, PRESETS

    group = parser.add_mutually_exclusive_group()
    group.add_argument("--preset", default=None, metavar="NAME",
                       help=f"render preset: {', '.join(sorted(PRESETS))} (default {DEFAULT_PRESET}; vtcr1 is the paper's)")  # fmt: skip
    group.add_argument("--config", default=None, metavar="FILE",
                       help="render config JSON with the Glyph/VTC-R1 keys (page-size, font-size, ...)")


def render_config_from_args(args: argparse.Namespace):
    from vtcr.render import DEFAULT_PRESET, render_config

    return render_config(render_choice(args) or DEFAULT_PRESET)


def render_choice(args: argparse.Namespace) -> str | None:
    """What --preset / --config asked for (None: neither)."""
    return args.config or args.preset


def add_model_render_args(parser: argparse.ArgumentParser, default_text: str) -> None:
    """`--render-preset NAME | --render-config FILE`: the pages a model reads (default_text says
    what is used when neither is given)."""
    from vtcr.render import PRESETS

    group = parser.add_mutually_exclusive_group()
    group.add_argument("--render-preset", default=None, metavar="NAME",
                       help=f"render preset of the optical memory: {', '.join(sorted(PRESETS))} (default: {default_text})")  # fmt: skip
    group.add_argument("--render-config", default=None, metavar="FILE",
                       help="a Glyph/VTC-R1 render config JSON instead of a preset")


def render_spec(args: argparse.Namespace) -> str | None:
    """What --render-preset / --render-config asked for (None: neither)."""
    return args.render_config or args.render_preset


# ---- the engine's settings ---------------------------------------------------------------------

# flag -> EngineConfig field; each flag's default is None ("the base config's"), shown from the base
_ENGINE_FLAGS = (
    ("--max-rounds", "max_rounds", int, "N", "most rounds per problem"),
    ("--round-tokens", "round_tokens", int, "N", "most new tokens per round"),
    ("--temperature", "temperature", float, "T", "sampling temperature (0: greedy)"),
    ("--top-p", "top_p", float, "P", "nucleus sampling mass"),
    ("--seed", "seed", int, "S", "sampling seed"),
)


def add_engine_args(parser: argparse.ArgumentParser, base: Any = None, *, seed_help: str | None = None) -> None:
    """The engine flags, with help showing `base`'s values (default: EngineConfig())."""
    from vtcr.engine.modes import EngineConfig

    base = base or EngineConfig()
    for flag, name, kind, metavar, text in _ENGINE_FLAGS:
        if name == "seed" and seed_help:
            text = seed_help
        parser.add_argument(flag, type=kind, default=None, metavar=metavar, dest=name,
                            help=f"{text} (default {shown(getattr(base, name))})")  # fmt: skip
    parser.add_argument("--no-boxed-final", action="store_true",
                        help="only <answer> tags end a run (default: a \\boxed{} after </think> does too)")
    add_model_render_args(parser, "the model's own, from its vtcr.json or its server; else vtcr1 with a warning")


def engine_config_from_args(args: argparse.Namespace, base: Any = None):
    """`base` (default EngineConfig()) with every engine flag the user gave."""
    from vtcr.engine.modes import EngineConfig

    base = base or EngineConfig()
    given = {name: getattr(args, name) for _, name, *_ in _ENGINE_FLAGS if getattr(args, name, None) is not None}
    if getattr(args, "no_boxed_final", False):
        given["boxed_counts_as_final"] = False
    if args.render_config is not None:
        given["render_config"], given["render_preset"] = args.render_config, None
    elif args.render_preset is not None:
        given["render_preset"], given["render_config"] = args.render_preset, None
    return dataclasses.replace(base, **given)


# ---- output listings ---------------------------------------------------------------------------


def file_listing(paths: list, noun: str = "page") -> str:
    """What was written, each name once: `DIR/page_001.png`, or `DIR/page_001.png … page_012.png (12 pages)`."""
    if not paths:
        return f"no {noun}s"
    first, last = Path(paths[0]), Path(paths[-1])
    if len(paths) == 1:
        return str(first)
    return f"{first} … {last.name} ({len(paths)} {noun}s)"


# ---- text input --------------------------------------------------------------------------------


def read_text_input(path: str) -> str:
    """INPUT is a UTF-8 text file, or '-' for standard input."""
    if path == "-":
        return sys.stdin.read()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"input file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
