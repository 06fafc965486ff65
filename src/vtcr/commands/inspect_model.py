"""`vtcr inspect-model PATH_OR_ID [--json]`: what vtcr reads from a checkpoint and will do with it."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect-model",
        help="show a checkpoint's family, template conventions, image budget, stop ids and vtcr's plan",
        description=(
            "Read a checkpoint folder (or only its metadata files: config.json, the chat template, "
            "generation_config.json, preprocessor_config.json, tokenizer_config.json, vtcr.json) and print its "
            "family; the template's conventions (whether the generation prompt opens <think>, the default system "
            "prompt, the image placeholder and its ids, the end of turn); the image budget and the vision tokens "
            "of an A4 page at 72 dpi; the stop ids; the render config; and what vtcr will do with it (prompts, "
            "training targets, stop rule, pages). Offline for a local folder; a hub id fetches its metadata files."
        ),
    )
    parser.add_argument("model", metavar="PATH_OR_ID", help="checkpoint or metadata folder, or a hub id (online only)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vtcr.models.inspection import inspect_model

    report = inspect_model(args.model)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        print("\n".join(report.lines()))
    return 0
