"""Where a built-in fine-tuning step spends its time (issue 11: the rebuild's hour).

    python -m perf.builtin_step_profile [--steps 8] [--threads 1] [--modes vtc,standard] [--work DIR]

Builds the built-in training set with the real builder (the recipe's problems, tokenizer and pages;
kept in `--work` and reused), loads the shipped built-in model of each mode and times, on batches drawn
as the recipe trains that mode (its batch size; random, or the trainer's length-grouped batches for a
mode in `grouped_modes`), one step's parts: collating the
encoded samples, the frozen vision tower's forward alone (what caching the tower's page features
would save), the whole forward (tower included) and the backward. It also prints the share of real
(non-padding) tokens in the padded batches: what length-grouped or padding-free batches could save.
One torch thread by default, as each model trains in the side-by-side rebuild. The first step is a
warm-up and is not counted.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path


def build_set(work: Path) -> Path:
    """The recipe's training set under `work/data` (built once)."""
    from vtcr.builtin.recipe import BuiltinRecipe, build_builtin_data, init_builtin_model, task_tokenizer

    data = work / "data"
    if not (data / "stats.json").is_file():
        recipe = BuiltinRecipe()
        init = init_builtin_model(recipe, task_tokenizer(work / "tokenizer" / "tokenizer.json"), work / "init")
        build_builtin_data(recipe, init, data)
    return data


def profile_mode(data: Path, mode: str, steps: int, seed: int = 0) -> dict[str, float]:
    """Mean seconds of each part of a step, over `steps` random batches after one warm-up."""
    import torch
    from transformers import AutoModelForImageTextToText

    from vtcr.builtin import model_dir
    from vtcr.builtin.recipe import BuiltinRecipe, train_config
    from vtcr.models.processor import load_processor
    from vtcr.train.data import Collator, EncodedDataset, SampleEncoder, load_samples, read_build
    from vtcr.train.trainer import freeze_vision

    folder = model_dir(mode)
    # the recipe's own fine-tuning settings (batch size, cutoff, image cap, frozen tower)
    config = train_config(BuiltinRecipe(), mode, folder, data, data.parent / "unused-out")
    samples = load_samples(read_build(data), mode)
    processor = load_processor(folder)
    encoder = SampleEncoder(processor, config.cutoff_len, config.max_image_pixels)
    plan = encoder.plan(samples)
    dataset = EncodedDataset(samples, encoder, plan.kept)
    pad = processor.tokenizer.pad_token_id
    collate = Collator(pad if pad is not None else processor.tokenizer.eos_token_id, encoder.image_token_id)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    model.train()
    if config.freeze_vision:
        freeze_vision(model)
    rng, batch_size = random.Random(seed), config.batch_size
    if config.group_by_length:  # batches as the recipe trains this mode: the trainer's own length-grouped order
        from vtcr.train.trainer import LengthBatches

        order = list(LengthBatches(plan.lengths, batch_size, seed))
        batches = [order[k:k + batch_size] for k in range(0, len(order) - batch_size + 1, batch_size)]
        draw = lambda: rng.choice(batches)  # noqa: E731
    else:  # random batches
        draw = lambda: [rng.randrange(len(dataset)) for _ in range(batch_size)]  # noqa: E731
    parts: dict[str, list[float]] = {"collate": [], "tower": [], "forward": [], "backward": [], "real_tokens": []}
    for step in range(steps + 1):
        t0 = time.perf_counter()
        batch = collate([dataset[i] for i in draw()])
        t1 = time.perf_counter()
        if "pixel_values" in batch:
            with torch.no_grad():
                model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
        t2 = time.perf_counter()
        loss = model(**batch).loss
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        if step:  # the first step warms the kernels up
            mask = batch["attention_mask"]
            for name, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, mask.sum().item() / mask.numel())):
                parts[name].append(value)
    return {name: statistics.mean(values) for name, values in parts.items()} | {"batch": batch_size, "grouped": config.group_by_length}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", default="vtc,standard")
    parser.add_argument("--work", default=None, help="folder for the training set (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.threads < 1:
        parser.error("--steps and --threads must be >= 1")
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = build_set(Path(args.work or tmp))
        print(f"{'mode':<9} {'batch':>5} {'batches':>8} {'collate':>8} {'tower':>7} {'forward':>8} {'backward':>9} {'step':>6} {'tower %':>8} {'real tokens':>12}")
        for mode in args.modes.split(","):
            p = profile_mode(data, mode, args.steps)
            step = p["collate"] + p["forward"] + p["backward"]  # the tower runs inside the forward
            print(f"{mode:<9} {p['batch']:>5} {'grouped' if p['grouped'] else 'random':>8} {p['collate']:>8.3f} {p['tower']:>7.3f} {p['forward']:>8.3f} {p['backward']:>9.3f} "
                  f"{step:>6.3f} {p['tower'] / step:>8.1%} {p['real_tokens']:>12.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
