"""`vtcr init-model`: create a randomly initialised checkpoint of a real VLM architecture."""

from __future__ import annotations

import argparse

from vtcr.models.architectures import ARCHS
from vtcr.models.checkpoint import init_model

from ._common import add_model_render_args, param_default, render_spec

def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "init-model",
        help="create a random-weight VLM checkpoint (Qwen3-VL, Qwen2.5-VL, GLM-4.1V) offline",
        description=(
            "Build a real-architecture VLM with random weights (fixed seed) and save it as a normal "
            "Hugging Face folder plus vtcr.json. Sizes: tiny (hidden 128, 2 layers; CPU tests), small "
            "(hidden 256, 4 layers; CPU training), 2b (Qwen3-VL-2B / Qwen2.5-VL-3B dimensions), 8b "
            "(Qwen3-VL-8B / Qwen2.5-VL-7B / GLM-4.1V-9B dimensions; for GPU efficiency benchmarks)."
        ),
    )
    parser.add_argument("--arch", required=True, choices=ARCHS, help="model family")
    parser.add_argument(
        "--size", required=True, help="tiny | small | 2b | 8b (also 3b/7b for qwen2.5-vl, 9b for glm-4.1v)"
    )
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder, tokenizer.json, or hub id (online only)")
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
    out = init_model(
        args.arch, args.size, args.tokenizer, args.out, seed=args.seed, render=render_spec(args) or param_default(init_model, "render"),
        device=args.device, dtype=args.dtype, overwrite=args.overwrite,
    )  # fmt: skip
    print(out)
    return 0
