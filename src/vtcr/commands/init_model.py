"""`vtcr init-model`: create a randomly initialised checkpoint of a real VLM architecture."""

from __future__ import annotations

import argparse

from vtcr.models.architectures import ARCHS
from vtcr.models.checkpoint import init_model, init_model_like

from ._common import add_model_render_args, param_default, render_spec

EPILOG = """\
examples:
  vtcr init-model --arch qwen3-vl --size tiny --tokenizer builtin:qwen3 --out tiny
  vtcr init-model --like ../shared/models/Qwen__Qwen3-VL-8B-Instruct --size tiny --tokenizer builtin:qwen3 --out q3
  vtcr init-model --like ../shared/models/Qwen__Qwen3-VL-8B-Instruct \\
      --chat-template ../shared/models/Qwen__Qwen3-VL-8B-Thinking/chat_template.json --size tiny --tokenizer builtin:qwen3 --out q3t
  vtcr init-model --like ../shared/models/zai-org__GLM-4.1V-9B-Thinking --size tiny --tokenizer builtin:glm-4.1v --out glm
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "init-model",
        help="create a random-weight VLM checkpoint (Qwen3-VL, Qwen2.5-VL, GLM-4.1V) offline",
        description=(
            "Build a real-architecture VLM with random weights (fixed seed) and save it as a normal "
            "Hugging Face folder plus vtcr.json. Sizes: tiny (hidden 128, 2 layers; CPU tests), small "
            "(hidden 256, 4 layers; CPU training), 2b (Qwen3-VL-2B / Qwen2.5-VL-3B dimensions), 8b "
            "(Qwen3-VL-8B / Qwen2.5-VL-7B / GLM-4.1V-9B dimensions; for GPU efficiency benchmarks). "
            "--like DIR builds it from a real checkpoint's metadata folder instead: its config.json shrunk to the "
            "size, its chat template unchanged, its generation, image-processor and tokenizer configs."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--arch", choices=ARCHS, help="model family (vtcr's own chat template)")
    source.add_argument("--like", metavar="DIR",
                        help="a real checkpoint or metadata folder (config.json, chat template, generation_config.json, "
                             "preprocessor_config.json, tokenizer_config.json; no weights needed)")
    parser.add_argument("--chat-template", default=param_default(init_model_like, "chat_template"), metavar="FILE",
                        help="with --like: this template instead of the folder's (.jinja, or JSON with \"chat_template\")")
    parser.add_argument(
        "--size", required=True, help="tiny | small | 2b | 8b (also 3b/7b for qwen2.5-vl, 9b for glm-4.1v)"
    )
    parser.add_argument("--tokenizer", required=True,
                        help="tokenizer folder, tokenizer.json, builtin:qwen3 (the real Qwen3 files), builtin:glm-4.1v "
                             "(a stand-in carrying GLM-4.1V's tokens), or a hub id (online only)")
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty unless --overwrite)")
    D = {name: param_default(init_model, name) for name in ("seed", "render", "device")}
    parser.add_argument("--seed", type=int, default=D["seed"], help=f"weight-initialisation seed (default {D['seed']})")
    add_model_render_args(parser, f"{D['render']}; recorded in vtcr.json as the pages this model reads")
    parser.add_argument("--device", default=D["device"],
                        help=f"where to initialise the weights (cpu, cuda; default {D['device']})")
    parser.add_argument(
        "--dtype", default=None, help="fp32 | bf16 | fp16 (default fp32 for tiny/small, bf16 otherwise)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    render = render_spec(args) or param_default(init_model, "render")
    common = dict(seed=args.seed, render=render, device=args.device, dtype=args.dtype, overwrite=args.overwrite)
    if args.like:
        out = init_model_like(args.like, args.size, args.tokenizer, args.out, chat_template=args.chat_template, **common)
    elif args.chat_template:
        raise ValueError("--chat-template goes with --like (a real checkpoint's folder); --arch uses vtcr's own template")
    else:
        out = init_model(args.arch, args.size, args.tokenizer, args.out, **common)
    print(out)
    return 0
