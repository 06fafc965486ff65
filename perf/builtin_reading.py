"""Does the tiny built-in model learn to read a page? The reading experiment behind MODEL_CARD.md (issue 11).

    python -m perf.builtin_reading [--arms v5,isolated,aligned] [--read-steps 400]
                                   [--align-steps 3000] [--check 48] [--threads N] [--out DIR]

The built-in vtc model of recipe v5 did not read its pages (MODEL_CARD.md, `blank-memory` = `vtc`). This script
measures, from the recipe's random-weight initial model, whether a short reading stage teaches the
model to write out the state that ends a page of random task-shaped lines (any digits: only reading
can get them right), and what it takes:

  v5        the layout of recipe v5 (256x96 px, 24 vision tokens; the state's three digits share
            the page's last 32x32 vision token with ~3 other characters), reading stage only
  isolated  a layout where each digit of every line's state sits alone in its own vision token
            (320x192 px, one line per token row, the state typeset in the last three token columns;
            the built-in models' layout since recipe v6), reading stage only
  aligned   the isolated layout, plus an alignment stage first (the recipe's `align_vision`): the vision tower alone is trained
            so that each token holding one state digit comes out as that digit's input embedding
            (relative squared error; the text model and embeddings untouched), as a VLM's projector
            is aligned to its language model before instruction tuning; then the reading stage
            with the tower frozen

Each arm prints its reading-stage loss and, greedy on `--check` pages it never saw, the states
written out exactly and each of the three digits right (chance: 10% a digit). The pages, lines
and labels are seeded; the same arguments give the same figures on one machine.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

QUESTION = "Write out the end of the last page."
LINES = 6  # lines a page (the built-in segment)
TOKEN_PX = 32  # Qwen3-VL: 16-px patches merged 2x2


@dataclass(frozen=True)
class Layout:
    """A page layout for the experiment: render settings, and how a line writes its final state.
    `state_cols`: the token columns that hold the state's digits alone (None: not isolated)."""

    name: str
    page: tuple[int, int]
    line_height: float
    margin_y: float
    gaps: tuple[int, int, int] | None  # spaces before each state digit (None: written "-> 815")
    state_cols: tuple[int, int, int] | None

    def render_config(self):
        from vtcr.render import RenderConfig

        return RenderConfig(
            page_size=(float(self.page[0]), float(self.page[1])), dpi=72, margin_x=2.0, margin_y=self.margin_y,
            left_indent=5.0, font_size=12.0, line_height=self.line_height, alignment="LEFT",
            newline_markup="<br/>", name=f"reading-{self.name}",
        )  # fmt: skip

    def line(self, rng: random.Random) -> tuple[str, str]:
        """One line of the task's shape with random digits, and its final state (three digits)."""
        d = [rng.randrange(10) for _ in range(12)]
        head = f"{d[0]}{d[1]}{d[2]} ({d[3]}+{d[4]})%10={d[5]} ({d[6]}+{d[7]})%10={d[8]} ->"
        state = f"{d[9]}{d[10]}{d[11]}"
        if self.gaps is None:
            return f"{head} {state}\n", state
        return head + "".join(" " * g + c for g, c in zip(self.gaps, state)) + "\n", state


V5 = Layout("v5", (256, 96), 13.0, 3.0, None, None)  # the built-in layout of recipe v5
# 6 lines of 30 px (Frame padding 6 pt): line k's ink in token row k; the state digits at x ~236,
# ~266, ~297: token columns 7, 8, 9, nothing else in them (= vtcr.builtin.recipe.builtin_render_config).
ISOLATED = Layout("isolated", (320, 192), 30.0, 0.0, (4, 6, 6), (7, 8, 9))


def page(layout: Layout, renderer, rng: random.Random):
    lines = [layout.line(rng) for _ in range(LINES)]
    pages = renderer.render("".join(text for text, _ in lines))
    if len(pages) != 1:
        raise RuntimeError(f"{layout.name}: {LINES} lines rendered to {len(pages)} pages")
    return pages[0].convert("RGB"), [state for _, state in lines]


def reading_samples(layout: Layout, n: int, folder: Path, seed: str):
    from vtcr.prompts import SYSTEM_PROMPT, user_parts
    from vtcr.render import get_renderer, save_png
    from vtcr.train.data import Sample

    renderer, rng, out = get_renderer(layout.render_config()), random.Random(seed), []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, states = page(layout, renderer, rng)
        path = save_png(img, folder / f"{i:06d}.png")
        messages = (
            {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
            {"role": "user", "content": user_parts(QUESTION, 1)},
            {"role": "assistant", "content": [{"type": "text", "text": states[-1] + "\n"}]},
        )
        out.append(Sample(id=f"read-{i}", messages=messages, images=(str(path),)))
    return out


def read_check(model_dir: Path, layout: Layout, n: int) -> dict:
    """Greedy, on `n` unseen pages: the state written out exactly, and each digit right."""
    from vtcr.engine import GenerationRequest, TransformersBackend
    from vtcr.prompts import SYSTEM_PROMPT
    from vtcr.render import get_renderer

    backend = TransformersBackend.from_pretrained(model_dir, max_image_pixels=layout.page[0] * layout.page[1])
    renderer, rng = get_renderer(layout.render_config()), random.Random(f"check-{layout.name}")
    exact, digits = 0, [0, 0, 0]
    for _ in range(n):
        img, states = page(layout, renderer, rng)
        content = [{"type": "text", "text": QUESTION}, {"type": "image", "image": img}]
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]
        got = backend.generate(GenerationRequest(messages, max_new_tokens=6, temperature=0.0)).text
        got = got.removeprefix(backend.prompt_opens).strip()[:3]
        exact += got == states[-1]
        for k in range(3):
            digits[k] += len(got) > k and got[k] == states[-1][k]
    return {"states_exact": f"{exact}/{n}", "digits_right": [f"{d}/{n}" for d in digits]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default="v5,isolated,aligned")
    parser.add_argument("--read-steps", type=int, default=400)
    parser.add_argument("--align-steps", type=int, default=3000)
    parser.add_argument("--align-lr", type=float, default=3e-3)
    parser.add_argument("--check", type=int, default=48, help="unseen pages each arm writes out")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable cores)")
    parser.add_argument("--out", default=None, help="keep the work folder here (default: a temporary one)")
    args = parser.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ("v5", "isolated", "aligned")]
    if unknown:
        parser.error(f"--arms: unknown {unknown}; choose from v5, isolated, aligned")

    import torch

    from vtcr._cpu import usable_cores
    from vtcr.builtin.recipe import (
        ALIGNMENT_FILE,
        BuiltinRecipe,
        align_vision,
        build_builtin_data,
        init_builtin_model,
        task_tokenizer,
    )
    from vtcr.train import TrainConfig, train

    threads = args.threads or usable_cores()
    torch.set_num_threads(threads)
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="vtcr-reading-"))
    recipe = BuiltinRecipe()
    init = work / "init"
    if not (init / "vtcr.json").is_file():
        init_builtin_model(recipe, task_tokenizer(work / "tokenizer" / "tokenizer.json"), init)
    if not (work / "data").is_dir():
        build_builtin_data(recipe, init, work / "data")  # the trainer reads a build folder
    rows = []
    for arm in arms:
        layout = V5 if arm == "v5" else ISOLATED
        start, frozen, t0, align = init, False, time.time(), None
        print(f"{arm}: layout {layout.name}", flush=True)
        if arm == "aligned":
            start, frozen = work / "aligned", True
            done = start / ALIGNMENT_FILE  # a kept work folder reuses its aligned tower
            if done.is_file():
                align = json.loads(done.read_text())
            else:  # the recipe's own alignment stage (ISOLATED is the built-in layout)
                align = align_vision(init, start, args.align_steps, args.align_lr, batch=12, seed=recipe.seed, threads=threads)
        render_file = work / f"render-{layout.name}.json"
        render_file.write_text(layout.render_config().to_json())
        samples = reading_samples(layout, args.read_steps * recipe.reading_batch_size, work / f"pages-{arm}", f"read-{arm}")
        out = work / f"read-{arm}"
        train(TrainConfig(
            data=str(work / "data"), model=str(start), out=str(out), mode="vtc", lr=recipe.reading_lr,
            max_steps=args.read_steps, batch_size=recipe.reading_batch_size, grad_accum=1, warmup_ratio=0.02,
            cutoff_len=recipe.cutoff_len, seed=recipe.seed + 2, save_steps=10**9, save_total_limit=1,
            logging_steps=25, progress=False, freeze_vision=frozen, vision_lr_scale=1.0 if frozen else recipe.vision_lr_scale,
            max_image_pixels=layout.page[0] * layout.page[1], render_config=str(render_file), threads=threads,
        ), samples=samples, overwrite=True)  # fmt: skip
        log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in log if "loss" in r]
        row = {"arm": arm, "align": align, "read_loss_first_last": [round(losses[0], 3), round(losses[-1], 3)],
               **read_check(out, layout, args.check), "seconds": round(time.time() - t0)}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\narm       states exact  digits right (1st, 2nd, 3rd)  reading loss first -> last")
    for r in rows:
        print(f"{r['arm']:<9} {r['states_exact']:>12}  {', '.join(r['digits_right']):<28}  "
              f"{r['read_loss_first_last'][0]} -> {r['read_loss_first_last'][1]}")  # fmt: skip
    if not args.out:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
