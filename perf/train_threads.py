"""s/step of `vtcr train` alone and beside a competing busy process (issue 11, item 5).

    python -m perf.train_threads [--steps 12] [--threads auto|N]

Builds a small built-in training set (the real builder), then times the same short training run
twice in this process: alone, and while `--hogs` other processes (default 1) spin a busy
single-threaded torch matmul loop. The trainer sizes its torch threads and DataLoader workers from
os.sched_getaffinity (TrainConfig threads/workers = None), so the competing run should be at most
~2x slower, not 10x. Prints both medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
from dataclasses import replace
from pathlib import Path


def _busy(stop) -> None:
    import torch

    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", default="auto", help="auto (from the affinity mask) or a number")
    parser.add_argument("--hogs", type=int, default=1, help="competing busy processes (default 1)")
    args = parser.parse_args()
    from vtcr.builtin.recipe import BuiltinRecipe, build_builtin_data, init_builtin_model, task_tokenizer, train_config
    from vtcr.train import train
    from vtcr.train.config import resolve_resources, usable_cores

    recipe = BuiltinRecipe(problems=64, max_steps=args.steps, save_steps=10**6)
    threads = None if args.threads == "auto" else int(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        init = init_builtin_model(recipe, task_tokenizer(work / "tok" / "tokenizer.json"), work / "init")
        build_builtin_data(recipe, init, work / "data")
        results = {}
        for label in ("alone", "beside a busy process"):
            stop = multiprocessing.Event()
            hogs = []
            if label != "alone":
                hogs = [multiprocessing.Process(target=_busy, args=(stop,)) for _ in range(args.hogs)]
                for h in hogs:
                    h.start()
            try:
                config = replace(train_config(recipe, "vtc", init, work / "data", work / label.replace(" ", "_")),
                                 threads=threads, logging_steps=1)  # fmt: skip
                log = train(config).log
            finally:
                stop.set()
                for h in hogs:
                    h.join()
            results[label] = log["timing"]
        alone, busy = (results[k]["median_seconds_per_step"] for k in results)
        print(json.dumps({"cores": usable_cores(), "hogs": args.hogs, "threads_workers": resolve_resources(threads, None), **results,
                          "slowdown": round(busy / alone, 2)}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
