"""`vtcr builtin info | rebuild`: the built-in models shipped inside the package."""

from __future__ import annotations

import argparse
import json

from vtcr.builtin import BuiltinRecipe, info, rebuild, weights_root
from vtcr.builtin.recipe import MIX_TARGETS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("builtin", help="the built-in models: where they are, and the recipe that rebuilds them",
                              description="vtcr's two built-in models (vtc and standard) and their recipe (MODEL_CARD.md).")
    sub = p.add_subparsers(dest="builtin_command", required=True, metavar="{info,rebuild}")
    i = sub.add_parser("info", help="where the built-in weights are and whether they verify (sha256 manifest)")
    i.add_argument("--weights", metavar="DIR", help="a weights folder (default: the package's own, or $VTCR_BUILTIN_WEIGHTS)")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=run_info)
    r = sub.add_parser("rebuild", help="train both built-in models with the documented recipe and publish them",
                       description="Tokenizer, random-weight tiny Qwen3-VL, the task's training set by vtcr's builder, "
                                   "then vtcr's trainer twice (vtc and standard samples), published with a sha256 "
                                   "manifest in one step. A killed rebuild resumes where it stopped.")
    defaults = BuiltinRecipe()
    r.add_argument("--out", metavar="DIR", help="weights folder to publish into (default: the package's own)")
    r.add_argument("--steps", type=int, default=defaults.max_steps, help=f"optimizer steps per model (default {defaults.max_steps})")
    r.add_argument("--problems", type=int, default=defaults.problems, help=f"training problems (default {defaults.problems})")
    r.add_argument("--model-seed", type=int, default=None,
                   help="seed of the models' random start and data order, the training problems unchanged "
                        "(default: the recipe's seed, as shipped); several seeds measure one recipe's spread")
    r.add_argument("--reading-mix", type=int, default=defaults.vtc_reading_mix, metavar="N",
                   help=f"fresh reading samples (pages of random task lines -> the last state) mixed into the vtc "
                        f"model's fine-tuning set (default {defaults.vtc_reading_mix})")
    r.add_argument("--reading-mix-pages", type=_page_range, default=defaults.vtc_reading_mix_pages, metavar="MIN:MAX",
                   help="pages per mixed reading sample (default "
                        f"{':'.join(map(str, defaults.vtc_reading_mix_pages or defaults.reading_pages))}; "
                        f"the reading stage's are {':'.join(map(str, defaults.reading_pages))})")
    r.add_argument("--reading-mix-target", choices=MIX_TARGETS, default=defaults.vtc_reading_mix_target,
                   help="what a mixed reading sample answers: the last page's state, or the whole line that follows "
                        f"it (the state copied, then one step computed; default {defaults.vtc_reading_mix_target})")
    r.add_argument("--standard-line-mix", type=int, default=defaults.standard_line_mix, metavar="N",
                   help="text drills (random task lines -> the line that follows) mixed into the standard model's "
                        f"fine-tuning set: the counterpart of --reading-mix-target line (default {defaults.standard_line_mix})")
    r.add_argument("--modes", default=",".join(defaults.modes),
                   help=f"models to train, comma-separated (default {','.join(defaults.modes)})")
    r.add_argument("--threads", type=int, default=None, help="torch threads per model (default: the cores this process may use, split between the two models when they train side by side)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=run_rebuild)


def _page_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition(":")
    try:
        pages = (int(lo), int(hi if sep else lo))
    except ValueError:
        pages = (0, 0)
    if not 1 <= pages[0] <= pages[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: expected MIN:MAX pages with 1 <= MIN <= MAX, e.g. 1:7")
    return pages


def run_info(args: argparse.Namespace) -> int:
    found = info(args.weights)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    print(f"built-in weights: {found['weights']}")
    for name, m in found["models"].items():
        state = "ok" if m.get("ok") else f"NOT OK: {m.get('error')}"
        size = f", {m['bytes'] / 1e6:.1f} MB" if m.get("bytes") else ""
        print(f"  {name}: {m['path']} ({state}{size})")
    if found.get("recipe_key"):
        print(f"recipe {found['recipe_key']}: {json.dumps(found['recipe'])}")
    return 0 if all(m.get("ok") for m in found["models"].values()) else 1


def run_rebuild(args: argparse.Namespace) -> int:
    from dataclasses import replace

    recipe = replace(BuiltinRecipe(), max_steps=args.steps, problems=args.problems, model_seed=args.model_seed,
                     vtc_reading_mix=args.reading_mix, vtc_reading_mix_pages=args.reading_mix_pages,
                     vtc_reading_mix_target=args.reading_mix_target, standard_line_mix=args.standard_line_mix, modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()))
    manifest = rebuild(weights_root(args.out), recipe, progress=not args.quiet, threads=args.threads)
    print(f"published the built-in models to {weights_root(args.out)} (recipe {manifest['recipe_key']})")
    return 0
