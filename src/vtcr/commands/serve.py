"""`vtcr serve`: an OpenAI-compatible /v1/chat/completions server over the transformers backend."""

from __future__ import annotations

import argparse


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
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free port and prints it)")
    parser.add_argument(
        "--served-model-name", default=None, help="model name clients must use (default: --model as given, like vLLM)"
    )
    parser.add_argument(
        "--max-request-mb", type=float, default=32.0, help="largest request body in MiB; larger gets 413 (default 32)"
    )
    parser.add_argument(
        "--default-max-tokens", type=int, default=1024, help="max_tokens when a request gives none (default 1024)"
    )
    parser.add_argument("--max-queue", type=int, default=64, help="requests allowed to wait; more get 503 (default 64)")
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


def run(args: argparse.Namespace) -> int:
    from vtcr.engine.server import ServerConfig, serve

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if not args.max_request_mb > 0:
        raise ValueError(f"--max-request-mb must be positive, got {args.max_request_mb}")
    if args.max_image_pixels is not None and args.max_image_pixels < 1:
        raise ValueError(f"--max-image-pixels must be positive, got {args.max_image_pixels}")
    if args.default_max_tokens < 1 or args.max_queue < 1:
        raise ValueError("--default-max-tokens and --max-queue must be at least 1")
    config = ServerConfig(
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name or args.model,
        max_request_bytes=int(args.max_request_mb * 2**20),
        default_max_tokens=args.default_max_tokens,
        max_queue=args.max_queue,
        prefix_cache=not args.no_prefix_cache,
    )
    serve(args.model, config, device=args.device, dtype=args.dtype, max_image_pixels=args.max_image_pixels)
    return 0
