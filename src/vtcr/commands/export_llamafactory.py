"""`vtcr export-llamafactory --data DIR --model PATH --out DIR`: the VTC-R1 recipe as a LLaMA-Factory run."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export-llamafactory",
        help="write a LLaMA-Factory SFT config (the paper's recipe) for a vtcr build",
        description=(
            "Write OUT/vtcr_sft.yaml (full SFT of the language model, vision frozen, lr 1e-5, cosine, warm-up 0.1, "
            "1 epoch, cutoff 32768, bf16, DeepSpeed ZeRO-3), OUT/dataset_info.json, OUT/ds_z3_config.json and "
            "OUT/vtcr.json. Training images keep the size inference uses (the paper shrank them to 262,144 pixels)."
        ),
    )
    p.add_argument("--data", required=True, metavar="DIR", help="a `vtcr build-data` output folder")
    p.add_argument("--model", required=True, metavar="PATH_OR_ID", help="checkpoint folder (or hub id, online only)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the config files")
    p.add_argument("--max-image-pixels", type=int, default=None, metavar="P",
                   help="image cap inference will use (default: the model's vtcr.json cap, else full pages); a cap "
                        "writes OUT/model/, the model as symlinks with its processor set to the cap")
    p.add_argument("--cutoff-len", type=int, default=32768, metavar="L", help="LLaMA-Factory cutoff_len (default 32768)")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate (default 1e-5)")
    p.add_argument("--epochs", type=float, default=1.0, help="epochs (default 1)")
    p.add_argument("--batch-size", type=int, default=1, help="per-device batch size (default 1)")
    p.add_argument("--grad-accum", type=int, default=8, help="gradient accumulation steps (default 8)")
    p.add_argument("--output-dir", default=None, metavar="DIR", help="where LLaMA-Factory saves (default OUT/saves)")
    p.add_argument("--render-preset", default=None, help="render preset recorded in OUT/vtcr.json (default: the data's)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vtcr.train import export_llamafactory

    result = export_llamafactory(
        args.data, args.model, args.out, max_image_pixels=args.max_image_pixels, cutoff_len=args.cutoff_len,
        lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum,
        output_dir=args.output_dir, render_preset=args.render_preset, overwrite=args.overwrite,
    )  # fmt: skip
    print(f"wrote {result.yaml}")
    print(f"  template {result.template}, dataset {result.dataset} ({result.samples} samples, {result.pages} pages)")
    cap = result.max_image_pixels
    print(f"  image_max_pixels {result.image_max_pixels} (pages reach the processor untouched); inference cap "
          f"{cap if cap is not None else 'none (full pages)'}")
    for warning in result.warnings:
        print(f"  warning: {warning}")
    print(f"run: llamafactory-cli train {result.yaml}")
    print(f"then copy {result.meta} into the LLaMA-Factory output folder")
    return 0
