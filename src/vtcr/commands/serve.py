"""`vtcr serve`: an OpenAI-compatible /v1/chat/completions server over the transformers backend."""

from __future__ import annotations

import argparse
import dataclasses

from vtcr.engine.server import ServerConfig

from ._common import default_of, shown


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a checkpoint as an OpenAI-compatible chat-completions API (no vLLM needed)",
        description=(
            "Serve one VLM checkpoint over HTTP: GET /v1/models, POST /v1/chat/completions (non-streaming; "
            "images as base64 data URLs only, never fetched from the network), GET /health. Requests are "
            "generated one at a time. Prints the listening URL once the model is loaded; stops on Ctrl-C "
            "or SIGTERM. Point `vtcr reason --server URL --served-model NAME` (or any OpenAI client) at it."
        ),
    )
    parser.add_argument(
        "--model", required=True, help="checkpoint folder (vtcr init-model, training, or a HF download)"
    )
    D = {f.name: default_of(ServerConfig, f.name) for f in dataclasses.fields(ServerConfig)}
    parser.add_argument("--host", default=D["host"], help=f"address to bind (default {D['host']}: this machine only)")
    parser.add_argument("--port", type=int, default=D["port"], help=f"port (default {D['port']}; 0 picks a free port and prints it)")
    parser.add_argument(
        "--served-model-name", default=None, help="model name clients must use (default: --model as given, like vLLM)"
    )
    mb = D["max_request_bytes"] / 2**20
    parser.add_argument("--max-request-mb", type=float, default=mb,
                        help=f"largest request body in MiB; larger gets 413 (default {shown(mb)})")
    parser.add_argument("--default-max-tokens", type=int, default=D["default_max_tokens"],
                        help=f"max_tokens when a request gives none (default {D['default_max_tokens']})")
    parser.add_argument("--max-queue", type=int, default=D["max_queue"],
                        help=f"requests allowed to wait; more get 503 (default {D['max_queue']})")
    parser.add_argument(
        "--max-image-pixels", type=int, default=None,
        help="cap on each image's resized area; larger images are downscaled (default: the checkpoint's vtcr.json "
        "value, else the model family's processor maximum)",
    )  # fmt: skip
    parser.add_argument(
        "--no-prefix-cache", action="store_true",
        help="prefill every prompt in full (default: reuse the KV of a conversation's earlier prompt)",
    )  # fmt: skip
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default cuda when available)")
    parser.add_argument("--dtype", default=None, help="fp32 | bf16 | fp16 (default bf16 on CUDA, fp32 on CPU)")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if not args.max_request_mb > 0:
        raise ValueError(f"--max-request-mb must be positive, got {args.max_request_mb}")
    if args.max_image_pixels is not None and args.max_image_pixels < 1:
        raise ValueError(f"--max-image-pixels must be positive, got {args.max_image_pixels}")
    if args.default_max_tokens < 1 or args.max_queue < 1:
        raise ValueError("--default-max-tokens and --max-queue must be at least 1")
    return ServerConfig(
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name or args.model,
        max_request_bytes=int(args.max_request_mb * 2**20),
        default_max_tokens=args.default_max_tokens,
        max_queue=args.max_queue,
        prefix_cache=not args.no_prefix_cache,
    )


def run(args: argparse.Namespace) -> int:
    from vtcr.engine.server import serve

    serve(args.model, config_from_args(args), device=args.device, dtype=args.dtype, max_image_pixels=args.max_image_pixels)
    return 0
