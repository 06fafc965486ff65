"""`train(config)`: supervised fine-tuning of a VLM on a vtcr build with transformers' Trainer.

The output folder is a normal vtcr checkpoint (it loads in `vtcr reason` / the engine unchanged),
plus what the run leaves behind:

    OUT/config.json, model*.safetensors, tokenizer*, processor_config.json, chat_template.jinja
    OUT/vtcr.json            arch, the render config of the data's pages, max_image_pixels used in training
    OUT/train_config.json    the TrainConfig (written first: a rerun with it resumes)
    OUT/train_log.json       data plan (truncation counts), loss history, s/step, peak memory
    OUT/train_log.jsonl      every logging step's dict (loss, grad_norm, lr, epoch), appended as it comes
    OUT/loss.png             the loss curve
    OUT/checkpoints/         Trainer checkpoints (checkpoint-N); the newest complete one resumes
    OUT/adapter/             with LoRA: the peft adapter (PeftModel.from_pretrained(base, OUT/adapter))

Loss: cross-entropy over the assistant tokens only, averaged over every supervised token of an
optimizer step (all accumulation micro-batches together). Logits are computed only at positions
whose next token is supervised: a 32k-token prompt of page images never materialises
32k x vocab logits.

Multi-GPU and DeepSpeed: launch the same command with `accelerate launch` / `torchrun` /
`deepspeed` (`--deepspeed ds_config.json`); Trainer picks the environment up. Only the main
process writes the final folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vtcr._io import atomic_open, write_text_atomic

from .config import CONFIG_FILE, TrainConfig
from .data import IGNORE_INDEX, BuildInfo, Collator, EncodedDataset, Sample, SampleEncoder, load_samples, read_build
from .progress import STEP_LOG_FILE, make_progress_callback

LOG_FILE = "train_log.json"
PLOT_FILE = "loss.png"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
_STATE_FILE = "trainer_state.json"  # Trainer writes it last: a checkpoint with it is complete


@dataclass(frozen=True)
class TrainResult:
    """What `train` did. `log` is the content of train_log.json."""

    out_dir: Path
    global_step: int
    resumed_from: str | None
    log: dict[str, Any]


# --- output folder -------------------------------------------------------------------------------


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete Trainer checkpoint (`checkpoint-N` holding trainer_state.json), if any."""
    if not checkpoints.is_dir():
        return None
    found = []
    for entry in checkpoints.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", entry.name)
        if m and entry.is_dir() and (entry / _STATE_FILE).is_file():
            found.append((int(m.group(1)), entry))
    return max(found)[1] if found else None


def prepare_out_dir(config: TrainConfig, overwrite: bool = False) -> Path | None:
    """Make `config.out` ready; returns the checkpoint to resume from (None: a fresh run).

    A folder holding an unfinished run with the same settings resumes; different settings, a
    finished run, or a folder that is not a training run are refused unless `overwrite`.
    """
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if overwrite and out.exists():
        shutil.rmtree(out)
    config_file = out / CONFIG_FILE
    if config_file.is_file():
        previous = TrainConfig.from_json(config_file)
        diffs = previous.resume_diffs(config)
        if diffs:
            raise ValueError(
                f"{out} holds a run with different settings ({'; '.join(diffs)}); rerun with the same flags to resume, "
                "pass --overwrite to start over, or use a new --out"
            )
        log_file = out / LOG_FILE
        if log_file.is_file() and json.loads(log_file.read_text(encoding="utf-8")).get("finished"):
            raise ValueError(f"{out} already holds a finished run; pass --overwrite to train again or use a new --out")
        return last_checkpoint(out / CHECKPOINTS_DIR)
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no vtcr training run ({CONFIG_FILE}); pass --overwrite or use a new --out")
    return None


def normalized(config: TrainConfig) -> TrainConfig:
    """Local paths made absolute (so a resumed run compares equal from any working directory)."""

    def absolute(p: str) -> str:
        path = Path(p).expanduser()
        return str(path.resolve()) if path.exists() or p.startswith((".", "/", "~")) else p

    model = absolute(config.model)
    deepspeed = str(Path(config.deepspeed).expanduser().resolve()) if config.deepspeed else None
    return replace(config, data=absolute(config.data), out=str(Path(config.out).expanduser().resolve()),
                   model=model, deepspeed=deepspeed)  # fmt: skip


# --- model ---------------------------------------------------------------------------------------


def recorded_render_config(config: TrainConfig, build: BuildInfo, start: Any):
    """The render config the trained checkpoint records: --render-preset / --render-config, else the
    pages of the data build; for `standard` (no pages are trained on), the starting model's."""
    from vtcr.render import render_config

    given = render_config(config.render_config or config.render_preset)
    if given is not None:
        return given
    if config.mode == "standard":
        return start.render()
    return build.render_config


def lora_target_regex(model: Any) -> str:
    """peft `target_modules` regex: every nn.Linear of the language model (never the vision tower)."""
    import torch.nn as nn

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    lm = inner.model.language_model
    prefix = next(name for name, module in inner.named_modules() if module is lm)
    leaves = sorted({name.rsplit(".", 1)[-1] for name, m in lm.named_modules() if isinstance(m, nn.Linear)})
    if not leaves:
        raise ValueError(f"{type(inner).__name__}: no linear layer in the language model to put LoRA on")
    return rf"{re.escape(prefix)}\..*\.({'|'.join(map(re.escape, leaves))})"


def freeze_vision(model: Any) -> int:
    """Freeze the vision tower and its projector (the merger lives inside `visual` in every family)."""
    visual = model.model.visual
    visual.requires_grad_(False)
    return sum(p.numel() for p in visual.parameters())


def _dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _saved_dtype(model_path: Path):
    """The dtype the starting checkpoint is stored in (the trained one is saved the same way)."""
    import torch

    data = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    name = data.get("dtype") or data.get("torch_dtype") or (data.get("text_config") or {}).get("dtype") or "float32"
    return getattr(torch, str(name), torch.float32)


def _checkpointing_kwargs(enabled: bool) -> dict[str, Any]:
    """Activation checkpointing arguments under the name this transformers version uses."""
    if not enabled:
        return {}
    import inspect

    from transformers import TrainingArguments

    name = "activation_checkpointing" if "activation_checkpointing" in inspect.signature(TrainingArguments).parameters else "gradient_checkpointing"
    return {name: True, f"{name}_kwargs": {"use_reentrant": False}}


class LengthBatches:
    """Sampler whose consecutive runs of `batch` indexes hold samples of similar length, a fresh
    order each epoch seeded by `seed` and the epoch (the trainer calls `set_epoch` at every epoch,
    a resumed run too; the global RNG is never used). Each epoch: a random permutation, cut into
    mega-batches of 50 batches, each sorted by length and cut into batches; then the batches are
    shuffled, so that an epoch does not run from long samples to short ones. (transformers' own
    grouping keeps each mega-batch in length order, and on a set under 200 batches makes its
    mega-batches a quarter of the set.) The one short batch, if any, comes last."""

    MEGA = 50

    def __init__(self, lengths: list[int], batch: int, seed: int):
        self.lengths, self.batch, self.seed, self.epoch = list(lengths), int(batch), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        size = self.MEGA * self.batch
        batches = []
        for start in range(0, len(order), size):
            mega = sorted(order[start : start + size], key=lambda i: self.lengths[i])
            batches += [mega[k : k + self.batch] for k in range(0, len(mega), self.batch)]
        tail = [batches.pop()] if batches and len(batches[-1]) < self.batch else []
        shuffled = [batches[k] for k in torch.randperm(len(batches), generator=generator).tolist()]
        return iter([i for b in shuffled + tail for i in b])


def _make_trainer_class():
    from transformers import Trainer

    class SFTTrainer(Trainer):
        """Trainer whose loss covers the labelled tokens only and computes logits only there."""

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            # Let Trainer count the supervised tokens of a whole optimizer step (num_items_in_batch):
            # VLM classes opt out of loss kwargs, but this compute_loss takes them itself.
            self.model_accepts_loss_kwargs = True

        def create_optimizer(self, *args: Any, **kwargs: Any):
            """Trainer's optimizer, with the vision tower's parameter groups at `vision_lr_scale`
            times the learning rate (the scheduler scales every group alike)."""
            scale = float(getattr(self, "vision_lr_scale", 1.0))
            if self.optimizer is not None or scale == 1.0:
                return super().create_optimizer(*args, **kwargs)
            opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, self.model)
            lr = opt_kwargs.pop("lr", self.args.learning_rate)
            decay = set(self.get_decay_parameter_names(self.model))
            vision = {id(p) for p in self.model.model.visual.parameters()}
            groups: dict[tuple[bool, bool], list[Any]] = {}
            for name, param in self.model.named_parameters():
                if param.requires_grad:
                    groups.setdefault((id(param) in vision, name in decay), []).append(param)
            self.optimizer = opt_cls(
                [{"params": ps, "lr": lr * (scale if is_vision else 1.0), "weight_decay": self.args.weight_decay if decays else 0.0}
                 for (is_vision, decays), ps in sorted(groups.items())],
                lr=lr, **opt_kwargs,
            )  # fmt: skip
            return self.optimizer

        def _get_train_sampler(self, train_dataset=None):
            lengths = getattr(self, "group_lengths", None)
            if lengths is None:
                return super()._get_train_sampler(train_dataset)
            return LengthBatches(lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps, self.args.seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch
            import torch.nn.functional as F

            labels = inputs.pop("labels")
            # Position t predicts token t + 1: keep exactly the positions whose next token is labelled
            # (a boolean mask: the model flattens the kept hidden states to (n, hidden)).
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
            targets = labels[:, 1:][keep[:, :-1]]
            if targets.numel() == 0:  # nothing supervised in this micro-batch (planning prevents it)
                keep[0, 0] = True
                targets = torch.full((1,), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
            outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
            logits = outputs.logits.float().reshape(-1, outputs.logits.shape[-1])
            loss = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
            if num_items_in_batch is None:  # fall back to this micro-batch's own mean
                self.loss_is_scaled_for_ga = False
                loss = loss / (targets != IGNORE_INDEX).sum().clamp(min=1)
            else:
                self.loss_is_scaled_for_ga = True
                loss = loss / num_items_in_batch
                if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                    loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
            return (loss, outputs) if return_outputs else loss

    return SFTTrainer


def _make_timer_callback():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of every optimizer step of this process (data loading included)."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._start)

    return StepTimer()


@contextmanager
def _no_transformers_bars():
    """Hide transformers' own bars (checkpoint "Writing model shards", ...) while training: the run
    shows one bar, vtcr's. Restored afterwards."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def peak_memory() -> dict[str, Any]:
    """Peak memory of this process: CUDA allocator peak when on GPU, and the peak resident set."""
    import resource
    import sys

    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out: dict[str, Any] = {"peak_rss_bytes": int(rss if sys.platform == "darwin" else rss * 1024)}
    if torch.cuda.is_available():
        out["peak_cuda_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        out["peak_cuda_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
    return out


def _step_stats(seconds: list[float]) -> dict[str, Any]:
    timed = seconds[1:] if len(seconds) > 1 else seconds  # the first step pays for warm-up
    if not timed:
        return {"steps_timed": 0, "seconds_per_step": None, "median_seconds_per_step": None}
    ordered = sorted(timed)
    return {
        "steps_timed": len(timed),
        "seconds_per_step": round(sum(timed) / len(timed), 4),
        "median_seconds_per_step": round(ordered[len(ordered) // 2], 4),
        "first_step_seconds": round(seconds[0], 4),
    }


def plot_loss(history: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 60 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (assistant tokens)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return path


# --- the run -------------------------------------------------------------------------------------


def inspect_training(config: TrainConfig, n: int = 3) -> list[dict[str, str]]:
    """The first `n` samples (in the build's order, before shuffling) that `train(config)` trains on,
    without training: for each, its id, the prompt and the loss span decoded (``{"id", "prompt",
    "target"}``), as LLaMA-Factory prints its first example. Samples the truncation rule drops are
    skipped; a truncated target is shown truncated. The prompt's image placeholder runs are shown as
    ``<|image_pad|>*494`` (one per image)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"--inspect N must be a positive int, got {n!r}")
    config = normalized(config)
    build = read_build(config.data)
    from vtcr.models import resolve_model_path
    from vtcr.models.checkpoint import read_meta
    from vtcr.models.processor import load_processor

    model_path = resolve_model_path(config.model)
    processor = load_processor(model_path)
    cap = config.max_image_pixels if config.max_image_pixels is not None else read_meta(model_path).max_image_pixels
    encoder = SampleEncoder(processor, config.cutoff_len, cap)
    samples = load_samples(build, config.mode)
    chosen: list[int] = []
    for start in range(0, len(samples), 64):  # plan only as far as needed: a build can hold 100k samples
        chosen += [start + i for i in encoder.plan(samples[start : start + 64]).kept]
        if len(chosen) >= n:
            break
    out = []
    for index in chosen[:n]:
        sample = samples[index]
        enc = encoder.encode(sample)
        n_prompt = sum(1 for label in enc["labels"] if label == IGNORE_INDEX)
        prompt_ids = enc["input_ids"][:n_prompt]
        out.append({
            "id": sample.id,
            "prompt": _decode_collapsed(prompt_ids, encoder.image_token_id, encoder.image_token, processor.tokenizer),
            "target": processor.tokenizer.decode(enc["input_ids"][n_prompt:], skip_special_tokens=False),
        })  # fmt: skip
    return out


def _decode_collapsed(ids: list[int], image_token_id: int, image_token: str, tokenizer: Any) -> str:
    """`ids` decoded, each run of image placeholder tokens written as `TOKEN*length`."""
    pieces, start = [], 0
    i = 0
    while i < len(ids):
        if ids[i] == image_token_id:
            j = i
            while j < len(ids) and ids[j] == image_token_id:
                j += 1
            pieces.append(tokenizer.decode(ids[start:i], skip_special_tokens=False))
            pieces.append(f"{image_token}*{j - i}")
            start = i = j
        else:
            i += 1
    pieces.append(tokenizer.decode(ids[start:], skip_special_tokens=False))
    return "".join(pieces)


def train(config: TrainConfig, *, overwrite: bool = False, callbacks: tuple = (), samples: list[Sample] | None = None) -> TrainResult:
    """Fine-tune `config.model` on the build `config.data`; the trained checkpoint is `config.out`.

    `samples`: train on these instead of the build's `config.mode` samples (the same encoding; the
    build still gives the render config recorded in the checkpoint). The built-in recipe's reading
    stage uses it; a resumed run must pass the same samples.

    Resumes from the newest complete checkpoint under OUT/checkpoints when OUT holds an unfinished
    run with the same settings. Raises FileNotFoundError / ValueError naming the bad input (no
    build folder, missing images, no processor, unsupported architecture, no trainable sample).
    """
    config = normalized(config)
    build = read_build(config.data)  # cheap checks first: no torch import yet
    from vtcr.models import resolve_model_path
    from vtcr.models.checkpoint import ModelMeta, read_meta
    from vtcr.models.processor import load_processor

    model_path = resolve_model_path(config.model)
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"--model {config.model} is not a model folder: config.json is missing")
    processor = load_processor(model_path)  # FileNotFoundError (no processor) / ValueError (unsupported arch)
    start_meta = read_meta(model_path)
    cap = config.max_image_pixels if config.max_image_pixels is not None else start_meta.max_image_pixels
    render = recorded_render_config(config, build, start_meta)
    if samples is None:
        samples = load_samples(build, config.mode)  # FileNotFoundError naming missing images
    elif not samples:
        raise ValueError("no training sample given")
    encoder = SampleEncoder(processor, config.cutoff_len, cap)
    plan = encoder.plan(samples, progress=config.progress)
    if not plan.kept:
        raise ValueError(
            f"no sample fits cutoff_len {config.cutoff_len}: all {plan.samples} prompts are longer "
            "(raise --cutoff-len or lower --max-image-pixels)"
        )
    out = Path(config.out)

    import torch
    from transformers import AutoModelForImageTextToText, PrinterCallback, ProgressCallback, TrainingArguments

    threads, workers = config.resources()
    torch.set_num_threads(threads)  # sized to this process's cores: no oversubscription beside other work

    cuda = torch.cuda.is_available()
    mixed = cuda and config.dtype in ("auto", "bf16") and torch.cuda.is_bf16_supported()
    args = TrainingArguments(
        output_dir=str(out / CHECKPOINTS_DIR),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        num_train_epochs=float(config.epochs),
        max_steps=config.max_steps if config.max_steps is not None else -1,
        lr_scheduler_type=config.scheduler,
        warmup_steps=config.warmup_ratio,  # < 1: a fraction of the run (transformers 5)
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        bf16=mixed,
        fp16=cuda and config.dtype == "fp16",
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        dataloader_num_workers=workers,
        dataloader_pin_memory=cuda,
        deepspeed=config.deepspeed,
        report_to="none",
        disable_tqdm=not config.progress,
        **_checkpointing_kwargs(config.gradient_checkpointing),
    )  # fmt: skip
    # Several processes (torchrun, accelerate, deepspeed): the main one sets the folder up first;
    # the others then find its train_config.json and make the same resume decision.
    with args.main_process_first(desc="prepare the output folder"):
        resume = prepare_out_dir(config, overwrite and args.process_index == 0)
        if args.process_index == 0:
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / CONFIG_FILE, config.to_json())
    # Weights: fp32 for full fine-tuning (bf16 autocast on CUDA keeps fp32 master weights); a
    # frozen bf16 base is enough under LoRA.
    if config.dtype != "auto":
        load_dtype = _dtype(config.dtype)
    else:
        load_dtype = torch.bfloat16 if (config.lora and mixed) else torch.float32
    with nullcontext() if config.progress else _no_transformers_bars():  # --no-progress: no loading bar either
        model = AutoModelForImageTextToText.from_pretrained(str(model_path), dtype=load_dtype)
    frozen = freeze_vision(model) if config.freeze_vision else 0
    if config.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=lora_target_regex(model), bias="none",
        )  # fmt: skip
        model = get_peft_model(model, lora)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    dataset = EncodedDataset(samples, encoder, plan.kept)
    pad_id = processor.tokenizer.pad_token_id
    collator = Collator(pad_id if pad_id is not None else processor.tokenizer.eos_token_id, encoder.image_token_id)
    timer = _make_timer_callback()
    trainer = _make_trainer_class()(
        model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[timer, *callbacks]
    )
    trainer.vision_lr_scale = config.vision_lr_scale
    trainer.group_lengths = plan.lengths if config.group_by_length else None
    # vtcr's bar (loss and lr on it) and step log instead of transformers' bar / printed log dicts
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(make_progress_callback(out / STEP_LOG_FILE, show=config.progress))
    meta = ModelMeta(
        arch=start_meta.arch, size=start_meta.size, created_by="vtcr train", max_image_pixels=cap, seed=config.seed,
    ).with_render(render)  # fmt: skip
    with _no_transformers_bars():
        started = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        train_seconds = time.perf_counter() - started
        _save_final(trainer, processor, meta, config, model_path, cap)  # every process: sharded weights are gathered
    log: dict[str, Any] = {}
    if trainer.args.should_save:
        history = [h for h in trainer.state.log_history if "loss" in h]
        log = {
            "finished": True,
            "config": config.to_dict(),
            "model": str(model_path),
            "mode": config.mode,
            "render_preset": meta.render_preset,
            "render_config": meta.render_config,
            "max_image_pixels": cap,
            "resumed_from": resume.name if resume else None,
            "global_step": int(trainer.state.global_step),
            "epochs_done": trainer.state.epoch,
            "data": plan.summary(config.cutoff_len),
            "parameters": {"total": int(total), "trainable": int(trainable), "vision_frozen": int(frozen)},
            "precision": {"weights": str(load_dtype).removeprefix("torch."), "bf16_autocast": mixed},
            "device": "cuda" if cuda else "cpu",
            "timing": {"train_seconds": round(train_seconds, 3), **_step_stats(timer.seconds), "threads": threads, "workers": workers},
            "memory": peak_memory(),
            "final_train_loss": round(float(output.training_loss), 6) if output.training_loss is not None else None,
            "loss_history": [
                {k: h[k] for k in ("step", "epoch", "loss", "learning_rate", "grad_norm") if k in h} for h in history
            ],
        }
        plot_loss(history, out / PLOT_FILE, f"vtcr train ({config.mode}) {Path(config.model).name}")
        write_text_atomic(out / LOG_FILE, json.dumps(log, indent=2) + "\n")
    return TrainResult(out_dir=out, global_step=int(trainer.state.global_step),
                       resumed_from=resume.name if resume else None, log=log)  # fmt: skip


def _publish(tmp: Path, out: Path) -> None:
    """Move every entry of `tmp` into `out` (replacing same-named ones), vtcr.json last."""
    from vtcr.models.checkpoint import META_FILE

    entries = sorted(tmp.iterdir(), key=lambda p: p.name == META_FILE)
    for entry in entries:
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    shutil.rmtree(tmp, ignore_errors=True)


def _save_final(trainer: Any, processor: Any, meta: Any, config: TrainConfig, model_path: Path, cap: int | None) -> None:
    """Write the engine-loadable checkpoint into OUT: weights (LoRA merged), capped processor, vtcr.json.

    Called by every process (gathering sharded weights needs them all); only the main one writes.
    """
    from vtcr.models.checkpoint import save_checkpoint, write_meta
    from vtcr.models.processor import image_size_budget

    out = Path(config.out)
    main = trainer.args.should_save
    staging = out / ".final-staging"  # the same path in every process
    if main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if cap is not None:
            # The saved processor resizes exactly as training did, even for a reader that ignores vtcr.json.
            processor.image_processor.size = image_size_budget(processor, cap)
    trainer.accelerator.wait_for_everyone()
    save_dtype = _saved_dtype(model_path)
    final = staging / "checkpoint"
    sharded = trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled
    try:
        if config.lora:
            trainer.save_model(str(staging / ADAPTER_DIR))  # the adapter only
            if main:
                # Merge from what is on disk: base + saved adapter (the documented reload path).
                import torch
                from peft import PeftModel
                from transformers import AutoModelForImageTextToText

                base = AutoModelForImageTextToText.from_pretrained(str(model_path), dtype=save_dtype)
                with torch.no_grad():
                    merged = PeftModel.from_pretrained(base, str(staging / ADAPTER_DIR)).merge_and_unload()
                save_checkpoint(merged.eval(), processor, final, meta)
                os.replace(staging / ADAPTER_DIR, final / ADAPTER_DIR)
        elif sharded:
            trainer.save_model(str(final))  # gathers the shards; written by the main process
            if main:
                processor.save_pretrained(str(final))
                write_meta(final, meta)
        elif main:
            model = trainer.accelerator.unwrap_model(trainer.model).to(save_dtype).eval()
            save_checkpoint(model, processor, final, meta)
        if main:
            _publish(final, out)
    finally:
        if main:
            shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()


__all__ = ["TrainResult", "inspect_training", "last_checkpoint", "prepare_out_dir", "train"]
