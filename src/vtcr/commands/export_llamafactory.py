"""`vtcr export-llamafactory --data DIR --model PATH --out DIR`: the VTC-R1 recipe as a LLaMA-Factory run."""

from __future__ import annotations

import argparse

from vtcr.train.llamafactory import export_llamafactory

from ._common import add_model_render_args, param_default, shown


def register(subparsers) -> None:
    D = {name: param_default(export_llamafactory, name) for name in ("cutoff_len", "lr", "epochs", "batch_size", "grad_accum")}
    p = subparsers.add_parser(
        "export-llamafactory",
        help="write a LLaMA-Factory SFT config (the paper's recipe) for a vtcr build",
        description=(
            f"Write OUT/vtcr_sft.yaml (full SFT of the language model, vision frozen, lr {shown(D['lr'])}, cosine, "
            f"warm-up 0.1, {shown(D['epochs'])} epoch, cutoff {D['cutoff_len']}, bf16, DeepSpeed ZeRO-3), "
            "OUT/vtcr_sft.json (the samples, absolute image paths), OUT/dataset_info.json, OUT/ds_z3_config.json and "
            "OUT/vtcr.json. Training images keep the size inference uses (the paper shrank them to 262,144 pixels). "
            "The LLaMA-Factory template is the one whose prompt matches the model's chat template (checked)."
        ),
    )
    p.add_argument("--data", required=True, metavar="DIR", help="a `vtcr build-data` output folder")
    p.add_argument("--model", required=True, metavar="PATH_OR_ID", help="checkpoint folder (or hub id, online only)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the config files")
    p.add_argument("--max-image-pixels", type=int, default=None, metavar="P",
                   help="image cap inference will use (default: the model's vtcr.json cap, else full pages); a cap "
                        "writes OUT/model/, the model as symlinks with its processor set to the cap")
    for flag, name, kind, text in (
        ("--cutoff-len", "cutoff_len", int, "LLaMA-Factory cutoff_len"), ("--lr", "lr", float, "learning rate"),
        ("--epochs", "epochs", float, "epochs"), ("--batch-size", "batch_size", int, "per-device batch size"),
        ("--grad-accum", "grad_accum", int, "gradient accumulation steps"),
    ):  # fmt: skip
        p.add_argument(flag, type=kind, default=D[name], help=f"{text} (default {shown(D[name])})")
    p.add_argument("--output-dir", default=None, metavar="DIR", help="where LLaMA-Factory saves (default OUT/saves)")
    add_model_render_args(p, "the render config of the data's pages")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = export_llamafactory(
        args.data, args.model, args.out, max_image_pixels=args.max_image_pixels, cutoff_len=args.cutoff_len,
        lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum,
        output_dir=args.output_dir, render_preset=args.render_preset, render_config=args.render_config,
        overwrite=args.overwrite,
    )  # fmt: skip
    print(f"wrote {result.yaml}")
    print(f"  template {result.template}, dataset {result.dataset} ({result.samples} samples, {result.pages} pages) "
          f"in {result.dataset_file}")
    cap = result.max_image_pixels
    print(f"  image_max_pixels {result.image_max_pixels} (pages reach the processor untouched); inference cap "
          f"{cap if cap is not None else 'none (full pages)'}")
    for warning in result.warnings:
        print(f"  warning: {warning}")
    print(f"run: llamafactory-cli train {result.yaml}")
    print(f"then copy {result.meta} into the LLaMA-Factory output folder")
    return 0
