"""`vtcr train --data DIR --model PATH --out DIR`: supervised fine-tuning (one call to vtcr.train.train)."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  vtcr train --data vtcr_data --model Qwen/Qwen3-VL-8B-Instruct --out vtcr-qwen3vl      # the paper's recipe
  vtcr train --data vtcr_data --model ckpt --out run --lora --lr 1e-4 --epochs 2
  vtcr train --data vtcr_data --model ckpt --out baseline --mode standard                # unsegmented traces
  accelerate launch -m vtcr.cli train ...   /   torchrun --nproc-per-node 8 -m vtcr.cli train ... --deepspeed ds.json

Rerunning with the same flags resumes from the newest checkpoint in OUT/checkpoints. OUT is a normal
checkpoint (vtcr reason --model OUT) that records the render preset and the image-size cap it was
trained with; train_log.json holds the loss history, s/step, peak memory and the truncation counts.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a VLM on a vtcr build (transformers Trainer; LoRA optional)",
        description=(
            "Supervised fine-tuning on a `vtcr build-data` folder, loss on assistant tokens only. Defaults are the "
            "VTC-R1 recipe (language model only, lr 1e-5, cosine, warm-up 0.1, 1 epoch, cutoff 32768, batch 1 x 8), "
            "with training images at the size inference uses."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, metavar="DIR", help="a `vtcr build-data` output folder")
    p.add_argument("--model", required=True, metavar="PATH_OR_ID", help="checkpoint folder (or hub id, online only)")
    p.add_argument("--out", required=True, metavar="DIR", help="output checkpoint folder (rerun to resume)")
    p.add_argument("--mode", default="vtc", choices=("vtc", "standard"),
                   help="vtc: segments with page images (default); standard: whole traces as text (the baseline)")
    p.add_argument("--epochs", type=float, default=1.0, help="epochs (default 1)")
    p.add_argument("--max-steps", type=int, default=None, metavar="N", help="optimizer steps (overrides --epochs)")
    p.add_argument("--lr", type=float, default=1e-5, help="peak learning rate (default 1e-5)")
    p.add_argument("--batch-size", type=int, default=1, metavar="B", help="samples per device per micro-batch (default 1)")
    p.add_argument("--grad-accum", type=int, default=8, metavar="G", help="gradient accumulation steps (default 8)")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="linear warm-up fraction (default 0.1)")
    p.add_argument("--scheduler", default="cosine", help="learning-rate schedule (default cosine)")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters on the language model's linear layers")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (default 32)")
    p.add_argument("--freeze-vision", action=argparse.BooleanOptionalAction, default=True,
                   help="freeze the vision tower and projector (default: frozen, as in the paper)")
    p.add_argument("--max-image-pixels", type=int, default=None, metavar="P",
                   help="cap on each image's resized area, saved into the checkpoint so inference uses the same "
                        "(default: the model's vtcr.json cap, else the processor's own maximum: full pages)")
    p.add_argument("--cutoff-len", type=int, default=32768, metavar="L",
                   help="most tokens per sample (default 32768): longer targets are cut from the right, samples "
                        "whose prompt alone reaches L are dropped; both are counted")
    p.add_argument("--seed", type=int, default=0, help="seed of weights init (LoRA), data order and dropout (default 0)")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="training weights (default auto: fp32 + bf16 autocast on CUDA; bf16 base with --lora)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    p.add_argument("--deepspeed", default=None, metavar="FILE", help="DeepSpeed config JSON (launch with deepspeed/accelerate)")
    p.add_argument("--render-preset", default=None, help="render preset recorded in the checkpoint (default: the data's)")
    p.add_argument("--save-steps", type=int, default=500, help="checkpoint every N optimizer steps (default 500)")
    p.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept (default 2)")
    p.add_argument("--logging-steps", type=int, default=1, help="log the loss every N steps (default 1)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--overwrite", action="store_true", help="delete OUT and start over instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vtcr.train import TrainConfig, train

    config = TrainConfig(
        data=args.data, model=args.model, out=args.out, mode=args.mode, epochs=args.epochs, max_steps=args.max_steps,
        lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum, warmup_ratio=args.warmup_ratio,
        scheduler=args.scheduler, lora=args.lora, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        freeze_vision=args.freeze_vision, max_image_pixels=args.max_image_pixels, cutoff_len=args.cutoff_len,
        seed=args.seed, dtype=args.dtype, gradient_checkpointing=args.gradient_checkpointing,
        deepspeed=args.deepspeed, render_preset=args.render_preset, save_steps=args.save_steps,
        save_total_limit=args.save_total_limit, logging_steps=args.logging_steps, workers=args.workers,
        progress=not args.no_progress,
    )  # fmt: skip
    result = train(config, overwrite=args.overwrite)
    log = result.log
    if log:
        data, timing = log["data"], log["timing"]
        print(f"trained {result.out_dir}: {result.global_step} steps"
              + (f" (resumed from {result.resumed_from})" if result.resumed_from else ""))
        print(f"  samples {data['kept']}/{data['samples']} (dropped {data['dropped_prompt_too_long']} whose prompt "
              f"reaches --cutoff-len, truncated {data['truncated']}: {data['target_tokens_cut']} target tokens cut)")
        spp = timing["seconds_per_step"]
        print(f"  final loss {log['final_train_loss']}, {spp if spp is not None else '-'} s/step, "
              f"peak RSS {log['memory']['peak_rss_bytes'] / 2**30:.2f} GiB")
        print(f"  render preset {log['render_preset']}, max image pixels {log['max_image_pixels'] or 'processor default'}")
    return 0
