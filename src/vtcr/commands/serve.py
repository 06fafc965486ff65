"""`vtcr serve`: an OpenAI-compatible /v1/chat/completions server over the transformers backend."""

from __future__ import annotations

import argparse
import dataclasses
import os

from vtcr.engine.server import ServerConfig

from ._common import default_of, shown


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a checkpoint as an OpenAI-compatible chat-completions API (no vLLM needed)",
        description=(
            "Serve one VLM checkpoint over HTTP: GET /v1/models[/ID], POST /v1/chat/completions (streaming or not; "
            "stop, n, logprobs, seed, top_k, repetition_penalty; unsupported parameters get 400; images as base64 "
            "data URLs only, never fetched from the network), GET /health. Concurrent requests reach the backend "
            "concurrently; a client that disconnects has its generation cancelled. Prints the listening URL once "
            "the model is loaded; stops on Ctrl-C or SIGTERM after in-flight requests finish (or are cancelled "
            "after --shutdown-grace). Point `vtcr reason --server URL --served-model NAME` (or any OpenAI client) at it."
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
                        help="max_tokens when a request gives none (default: what is left of the context)")
    parser.add_argument("--max-model-len", type=int, default=D["max_model_len"],
                        help="context length, prompt + output; longer prompts get 400 (default: the model's)")
    parser.add_argument("--max-images", type=int, default=D["max_images"],
                        help=f"images per request; more get 400 (default {D['max_images']})")
    parser.add_argument("--max-queue", type=int, default=D["max_queue"],
                        help=f"completions running or waiting; more get 503 with Retry-After (default {D['max_queue']})")
    parser.add_argument("--max-concurrency", type=int, default=D["max_concurrency"],
                        help="requests generated at once, decoded together as one batch (default: the transformers backend's "
                        "batch size, 8; 1 serves one at a time)")
    parser.add_argument("--request-timeout", dest="request_timeout_s", type=float, default=D["request_timeout_s"],
                        help=f"seconds a request may take; then 504 and its generation stops (default {shown(D['request_timeout_s'])})")
    parser.add_argument("--shutdown-grace", dest="shutdown_grace_s", type=float, default=D["shutdown_grace_s"],
                        help=f"on SIGTERM, seconds in-flight requests may finish before they are cancelled "
                        f"(default {shown(D['shutdown_grace_s'])})")
    parser.add_argument("--api-key", default=D["api_key"],
                        help="require 'Authorization: Bearer KEY' on /v1 requests (default: $VTCR_API_KEY, else none)")
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
    for flag in ("default_max_tokens", "max_model_len", "max_concurrency"):
        value = getattr(args, flag)
        if value is not None and value < (2 if flag == "max_model_len" else 1):
            raise ValueError(f"--{flag.replace('_', '-')} must be at least {2 if flag == 'max_model_len' else 1}, got {value}")
    if args.max_queue < 1 or args.max_images < 0:
        raise ValueError("--max-queue must be at least 1 and --max-images at least 0")
    if not args.request_timeout_s > 0 or args.shutdown_grace_s < 0:
        raise ValueError("--request-timeout must be positive and --shutdown-grace at least 0")
    return ServerConfig(
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name or args.model,
        max_request_bytes=int(args.max_request_mb * 2**20),
        default_max_tokens=args.default_max_tokens,
        max_model_len=args.max_model_len,
        max_images=args.max_images,
        max_queue=args.max_queue,
        max_concurrency=args.max_concurrency,
        request_timeout_s=args.request_timeout_s,
        shutdown_grace_s=args.shutdown_grace_s,
        prefix_cache=not args.no_prefix_cache,
        api_key=args.api_key or os.environ.get("VTCR_API_KEY") or None,
    )


def run(args: argparse.Namespace) -> int:
    from vtcr.engine.server import serve

    serve(args.model, config_from_args(args), device=args.device, dtype=args.dtype, max_image_pixels=args.max_image_pixels)
    return 0
