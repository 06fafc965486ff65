"""`vtcr train --data DIR --model PATH --out DIR`: supervised fine-tuning (one call to vtcr.train.train)."""

from __future__ import annotations

import argparse
import dataclasses

from vtcr.train.config import TrainConfig

from ._common import add_model_render_args, default_of, shown

EPILOG = """\
examples:
  vtcr train --data vtcr_data --model Qwen/Qwen3-VL-8B-Instruct --out vtcr-qwen3vl      # the paper's recipe
  vtcr train --data vtcr_data --model ckpt --out run --lora --lr 1e-4 --epochs 2
  vtcr train --data vtcr_data --model ckpt --out baseline --mode standard                # unsegmented traces
  vtcr train --data vtcr_data --model ckpt --out run --inspect 2                          # prompts and loss spans only
  accelerate launch -m vtcr.cli train ...   /   torchrun --nproc-per-node 8 -m vtcr.cli train ... --deepspeed ds.json

Rerunning with the same flags resumes from the newest checkpoint in OUT/checkpoints. OUT is a normal
checkpoint (vtcr reason --model OUT) that records the render config and the image-size cap it was
trained with; train_log.json holds the loss history, s/step, peak memory and the truncation counts,
train_log.jsonl every logged step (the bar shows only the latest loss and learning rate).
"""


def register(subparsers) -> None:
    D = {f.name: default_of(TrainConfig, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in ("data", "model", "out")}
    p = subparsers.add_parser(
        "train",
        help="fine-tune a VLM on a vtcr build (transformers Trainer; LoRA optional)",
        description=(
            "Supervised fine-tuning on a `vtcr build-data` folder, loss on assistant tokens only. Defaults are the "
            f"VTC-R1 recipe (language model only, lr {shown(D['lr'])}, {D['scheduler']}, warm-up {shown(D['warmup_ratio'])}, "
            f"{shown(D['epochs'])} epoch, cutoff {D['cutoff_len']}, batch {D['batch_size']} x {D['grad_accum']}), "
            "with training images at the size inference uses."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, metavar="DIR", help="a `vtcr build-data` output folder")
    p.add_argument("--model", required=True, metavar="PATH_OR_ID", help="checkpoint folder (or hub id, online only)")
    p.add_argument("--out", required=True, metavar="DIR", help="output checkpoint folder (rerun to resume)")
    p.add_argument("--mode", default=D["mode"], choices=("vtc", "standard"),
                   help="vtc: segments with page images (default); standard: whole traces as text (the baseline)")
    p.add_argument("--epochs", type=float, default=D["epochs"], help=f"epochs (default {shown(D['epochs'])})")
    p.add_argument("--max-steps", type=int, default=D["max_steps"], metavar="N", help="optimizer steps (overrides --epochs)")
    p.add_argument("--lr", type=float, default=D["lr"], help=f"peak learning rate (default {shown(D['lr'])})")
    p.add_argument("--batch-size", type=int, default=D["batch_size"], metavar="B", help=f"samples per device per micro-batch (default {D['batch_size']})")
    p.add_argument("--grad-accum", type=int, default=D["grad_accum"], metavar="G", help=f"gradient accumulation steps (default {D['grad_accum']})")
    p.add_argument("--warmup-ratio", type=float, default=D["warmup_ratio"], help=f"linear warm-up fraction (default {shown(D['warmup_ratio'])})")
    p.add_argument("--scheduler", default=D["scheduler"], help=f"learning-rate schedule (default {D['scheduler']})")
    p.add_argument("--weight-decay", type=float, default=D["weight_decay"], help=f"AdamW weight decay (default {shown(D['weight_decay'])})")
    p.add_argument("--max-grad-norm", type=float, default=D["max_grad_norm"],
                   help=f"gradient clipping norm (default {shown(D['max_grad_norm'])})")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters on the language model's linear layers")
    p.add_argument("--lora-r", type=int, default=D["lora_r"], help=f"LoRA rank (default {D['lora_r']})")
    p.add_argument("--lora-alpha", type=int, default=D["lora_alpha"], help=f"LoRA alpha (default {D['lora_alpha']})")
    p.add_argument("--lora-dropout", type=float, default=D["lora_dropout"], help=f"LoRA dropout (default {shown(D['lora_dropout'])})")
    p.add_argument("--freeze-vision", action=argparse.BooleanOptionalAction, default=D["freeze_vision"],
                   help="freeze the vision tower and projector (default: frozen, as in the paper)")
    p.add_argument("--vision-lr-scale", type=float, default=D["vision_lr_scale"], metavar="X",
                   help=f"learning-rate multiplier of the vision tower and projector, with --no-freeze-vision (default {shown(D['vision_lr_scale'])})")
    p.add_argument("--max-image-pixels", type=int, default=D["max_image_pixels"], metavar="P",
                   help="cap on each image's resized area, saved into the checkpoint so inference uses the same "
                        "(default: the model's vtcr.json cap, else the processor's own maximum: full pages)")
    p.add_argument("--cutoff-len", type=int, default=D["cutoff_len"], metavar="L",
                   help=f"most tokens per sample (default {D['cutoff_len']}): longer targets are cut from the right, samples "
                        "whose prompt alone reaches L are dropped; both are counted")
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=D["group_by_length"],
                   help="batch samples of similar length together: fewer padding tokens a step (default: off, random batches)")
    p.add_argument("--seed", type=int, default=D["seed"], help=f"seed of weights init (LoRA), data order and dropout (default {D['seed']})")
    p.add_argument("--dtype", default=D["dtype"], choices=("auto", "fp32", "bf16", "fp16"),
                   help="training weights (default auto: fp32 + bf16 autocast on CUDA; bf16 base with --lora)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    p.add_argument("--deepspeed", default=D["deepspeed"], metavar="FILE", help="DeepSpeed config JSON (launch with deepspeed/accelerate)")
    add_model_render_args(p, "the render config of the data's pages")
    p.add_argument("--save-steps", type=int, default=D["save_steps"], help=f"checkpoint every N optimizer steps (default {D['save_steps']})")
    p.add_argument("--save-total-limit", type=int, default=D["save_total_limit"], help=f"checkpoints kept (default {D['save_total_limit']})")
    p.add_argument("--logging-steps", type=int, default=D["logging_steps"], help=f"log the loss every N steps (default {D['logging_steps']})")
    p.add_argument("--workers", type=int, default=D["workers"],
                   help="DataLoader worker processes (default: 0 on <= 2 cores, else 1 per 8 cores this process may use)")
    p.add_argument("--threads", type=int, default=D["threads"],
                   help="torch threads (default: the cores this process may use, minus the workers)")
    p.add_argument("--overwrite", action="store_true", help="delete OUT and start over instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--inspect", type=int, default=None, metavar="N",
                   help="print the first N samples' prompt and loss span decoded, then exit without training")
    p.add_argument("--json", action="store_true", help="with --inspect: print a JSON list of {id, prompt, target}")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=args.data, model=args.model, out=args.out, mode=args.mode, epochs=args.epochs, max_steps=args.max_steps,
        lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum, warmup_ratio=args.warmup_ratio,
        scheduler=args.scheduler, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, lora=args.lora,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        freeze_vision=args.freeze_vision, vision_lr_scale=args.vision_lr_scale, max_image_pixels=args.max_image_pixels, cutoff_len=args.cutoff_len, group_by_length=args.group_by_length,
        seed=args.seed, dtype=args.dtype, gradient_checkpointing=args.gradient_checkpointing,
        deepspeed=args.deepspeed, render_preset=args.render_preset, render_config=args.render_config,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit, logging_steps=args.logging_steps, workers=args.workers, threads=args.threads,
        progress=not args.no_progress,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if args.inspect is not None:
        return inspect(args)
    from vtcr.train import train

    result = train(config_from_args(args), overwrite=args.overwrite)
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
        render = log["render_preset"] or ("a custom render config" if log["render_config"] else "unknown")
        print(f"  pages: {render}, max image pixels {log['max_image_pixels'] or 'processor default'}")
    return 0


def inspect(args: argparse.Namespace) -> int:
    import json

    from vtcr.train import inspect_training

    samples = inspect_training(config_from_args(args), args.inspect)
    if args.json:
        print(json.dumps(samples, ensure_ascii=False, indent=2))
        return 0
    for sample in samples:
        print(f"=== sample {sample['id']}")
        print("--- prompt (the loss ignores it)")
        print(sample["prompt"])
        print("--- target (the loss span)")
        print(sample["target"])
    return 0
