"""vtcr's built-in task and models: the generator, the shipped weights and their manifest, the
no-model defaults of `vtcr reason` / `vtcr eval`, the rebuild's lock and resume logic (on a tiny
recipe through the real builder and trainer), and an eval of a few problems with the shipped weights.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from vtcr.data import synthetic
from vtcr.data.synthetic import (
    SUPPORTED_LENGTHS,
    TRAIN_LENGTHS,
    first_wrong_line,
    heldout_problems,
    line_state,
    parse_length_range,
    parse_question,
    problems_of_length,
    problems,
    solve,
    trace_right,
    training_questions,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LINE = r"\d\d\d \(\d\+\d\)%10=\d \(\d\+\d\)%10=\d -> {4}\d {6}\d {6}\d"


# --- the generator ---------------------------------------------------------------------------------


def _fib_answer(x: int, y: int, s: int) -> tuple[int, int]:
    """(answer, steps) by the plain recurrence until y=1 and s=0, written out here independently of vtcr."""
    steps = 0
    while True:
        x, y = y, (x + y) % 10
        s = (s + y) % 10
        steps += 1
        if (y, s) == (1, 0):
            return x, steps


def test_problems_are_deterministic_with_exact_gold_answers():
    a, b = problems(40, seed=3), problems(40, seed=3)
    assert a == b and a != problems(40, seed=4)
    assert len({p["question"] for p in a}) == 40
    for p in a:
        parsed = parse_question(p["question"])
        assert parsed is not None and TRAIN_LENGTHS[0] <= p["length"] <= TRAIN_LENGTHS[1]
        answer, steps = _fib_answer(parsed.x, parsed.y, parsed.s)
        assert (str(answer), steps) == (p["answer"], p["length"]) and solve(p["question"]) == answer
        lines = p["trace"].removesuffix("</think>").splitlines()
        assert len(lines) == p["length"] and len({len(line) for line in lines}) == 1  # one width: one page layout
        assert line_state(lines[-1]) == f"{answer}10"  # the answer, then the stop state y=1 s=0
        assert not any(re.search(r"-> \d10$", line) for line in lines[:-1])  # the first time


def test_the_trace_lines_show_each_step():
    p = problems_of_length(3)[0]  # the first three-step problem in (x, y, s) order
    assert p.question() == "x=0 y=7 s=8. Repeat z=(x+y)%10, s=(s+z)%10, x=y, y=z until y=1 s=0. Answer x."
    assert p.lines() == ["078 (0+7)%10=7 (8+7)%10=5 ->    7      7      5\n",
                         "775 (7+7)%10=4 (5+4)%10=9 ->    7      4      9\n",
                         "749 (7+4)%10=1 (9+1)%10=0 ->    4      1      0\n"]  # fmt: skip
    assert [line_state(line) for line in p.lines()] == ["775", "749", "410"]
    assert p.answer() == "4" and p.rounds(6) == 1 and problems_of_length(19)[0].rounds(6) == 4
    assert all(1 <= len(problems_of_length(n)) <= 10 for n in range(1, 61))  # every length 1-60 occurs


def test_trace_right_holds_only_for_every_gold_step_written_in_order():
    for row in heldout_problems(12, seed=7, lengths=(7, 30)):
        gold = parse_question(row["question"]).lines()
        answer = f"</think>\n<answer>{row['answer']}</answer>"
        assert trace_right(row["question"], "".join(gold) + answer)
        # rounds of optical memory: each round's text starts a new turn, the lines are the same
        assert trace_right(row["question"], "\n".join("".join(gold[i:i + 6]) for i in range(0, len(gold), 6)) + answer)
        assert not trace_right(row["question"], "".join(gold[:-1]) + answer)  # stopped one step early
        line = len(gold) // 2
        wrong = gold[line][:-2] + str((int(gold[line][-2]) + 1) % 10) + "\n"  # one state digit off
        assert not trace_right(row["question"], "".join(gold[:line] + [wrong] + gold[line + 1:]) + answer)
        assert not trace_right(row["question"], "".join(gold[1:]) + answer)  # a step left out
    assert trace_right("What is 2+2?", "4") is None


def test_first_wrong_line_names_the_round_line_and_kind_of_the_first_wrong_step():
    """A run in rounds of six lines: a wrong first digit of a later round's first line is a misread
    page ("read"); a wrong digit anywhere else a step computed wrong ("compute"); too few lines
    "stopped"; every step right (the answer aside) None."""
    for row in heldout_problems(6, seed=5, lengths=(13, 30)):
        question, gold = row["question"], parse_question(row["question"]).lines()
        rounds = ["".join(gold[i:i + 6]) for i in range(0, len(gold), 6)]
        assert first_wrong_line(question, rounds) is None
        assert first_wrong_line(question, rounds + ["999 (9+9)%10=8 (9+8)%10=7 ->    9      8      7\n"]) is None
        misread = "".join([str((int(gold[6][0]) + 1) % 10) + gold[6][1:]] + gold[7:12])
        assert first_wrong_line(question, [rounds[0], misread] + rounds[2:]) == {
            "step": 7, "round": 2, "line": 0, "char": 0, "kind": "read"}
        sum_digit = gold[8].index(")%10=", 10) + 5  # the new s of round 2's third line
        wrong = gold[8][:sum_digit] + str((int(gold[8][sum_digit]) + 1) % 10) + gold[8][sum_digit + 1:]
        assert first_wrong_line(question, [rounds[0], "".join(gold[6:8] + [wrong] + gold[9:12])]) == {
            "step": 9, "round": 2, "line": 2, "char": sum_digit, "kind": "compute"}
        first_line = str((int(gold[0][0]) + 1) % 10) + gold[0][1:]  # round one copies from the question
        assert first_wrong_line(question, [first_line] + rounds[1:])["kind"] == "compute"
        assert first_wrong_line(question, rounds[:2]) == {"step": 13, "round": 2, "line": None, "char": None,
                                                          "kind": "stopped"}  # fmt: skip
    assert first_wrong_line("What is 2+2?", ["4"]) is None


def test_heldout_problems_avoid_the_training_set_and_span_the_supported_lengths():
    held = heldout_problems(60, seed=1)
    assert not {p["question"] for p in held} & training_questions()
    lengths = [p["length"] for p in held]
    assert min(lengths) >= SUPPORTED_LENGTHS[0] and max(lengths) <= SUPPORTED_LENGTHS[1]
    assert max(lengths) > TRAIN_LENGTHS[1]  # beyond the trained lengths
    assert heldout_problems(5, seed=1, lengths="40:48") == heldout_problems(5, seed=1, lengths=(40, 48))


def _ink_runs(mask) -> list[tuple[int, int]]:
    """(first, last) index of each run of True in a 1-D mask."""
    runs, start = [], None
    for i, v in enumerate(list(mask) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i - 1))
            start = None
    return runs


def test_a_round_is_one_page_whose_state_digits_sit_alone_in_their_vision_tokens():
    """The page layout the built-in models read, on real task rounds: six lines on one 320x192
    page (10x6 vision tokens of 32 px), line k's ink inside token row k (but for one pixel row), and each digit of its
    final state alone in token column 7, 8 or 9 (nothing else inked there) -- the tokens the
    alignment stage labels (`state_tokens`)."""
    np = pytest.importorskip("numpy")
    from vtcr.builtin.recipe import PAGE_SIZE, STATE_COLUMNS, TOKEN_PX, builtin_render_config, state_tokens
    from vtcr.data.synthetic import line_state
    from vtcr.render import render_text

    cols = PAGE_SIZE[0] // TOKEN_PX
    assert state_tokens()[:3] == [c for c in STATE_COLUMNS] and state_tokens()[-1] == 5 * cols + STATE_COLUMNS[-1]
    for length in (6, 30, 48):
        lines = problems_of_length(length)[-1].lines()
        for start in range(0, length - 5, 6):
            pages = render_text("".join(lines[start:start + 6]), builtin_render_config())
            assert [page.size for page in pages] == [PAGE_SIZE]
            ink = np.array(pages[0].convert("L")) < 128
            rows = _ink_runs(ink.any(axis=1))
            assert len(rows) == 6
            for k, (top, bottom) in enumerate(rows):
                # (the bottom line's top pixel row, the tips of its tallest glyphs, is row 4's last)
                assert k * TOKEN_PX - 1 <= top and bottom < (k + 1) * TOKEN_PX
                band = ink[k * TOKEN_PX:(k + 1) * TOKEN_PX]
                state_ink = band[:, STATE_COLUMNS[0] * TOKEN_PX:]
                glyphs = _ink_runs(state_ink.any(axis=0))
                assert len(glyphs) == 3 and len(line_state(lines[start + k])) == 3
                for (a, b), col in zip(glyphs, STATE_COLUMNS):  # one glyph, inside its own token column
                    assert col * TOKEN_PX <= STATE_COLUMNS[0] * TOKEN_PX + a and STATE_COLUMNS[0] * TOKEN_PX + b < (col + 1) * TOKEN_PX
                assert not band[:, (STATE_COLUMNS[0] - 1) * TOKEN_PX + 28:STATE_COLUMNS[0] * TOKEN_PX].any()  # "->" ends before


def test_a_reading_sample_asks_for_the_state_that_ends_its_last_page(tmp_path):
    """The reading stage's sample: its pages are the rendered random lines, and its answer is the
    state that ends the last page -- what a round of the task copies first."""
    import random

    np = pytest.importorskip("numpy")
    from PIL import Image

    from vtcr.builtin.recipe import READING_QUESTION, builtin_render_config, reading_sample
    from vtcr.data.synthetic import reading_lines
    from vtcr.prompts import SYSTEM_PROMPT
    from vtcr.render import get_renderer, render_text

    renderer = get_renderer(builtin_render_config())
    sample = reading_sample(random.Random("t"), renderer, tmp_path, "r", SYSTEM_PROMPT, (2, 3))
    replay = random.Random("t")  # the same draws, independently: the page count, then each page's lines
    pages = [reading_lines(replay) for _ in range(replay.randint(2, 3))]
    assert len(sample.images) == len(pages)
    for path, lines in zip(sample.images, pages):
        assert np.array_equal(np.array(Image.open(path).convert("RGB")), np.array(render_text("".join(lines), builtin_render_config())[0].convert("RGB")))
    answer = sample.messages[-1]["content"][0]["text"]
    assert answer == line_state(pages[-1][-1]) + "\n" and re.fullmatch(r"\d{3}\n", answer)
    assert READING_QUESTION in json.dumps(sample.messages[1])


def test_the_reading_set_is_the_same_rendered_on_one_process_or_two(tmp_path):
    """The reading stage's pages are drawn from one seeded stream, then rendered on several
    processes: the same samples and the same page files for any number of processes, and each
    sample's answer is the state that ends its own last page."""
    import random

    from vtcr.builtin.recipe import BuiltinRecipe, build_reading_samples, load_reading_samples
    from vtcr.data.synthetic import reading_lines
    from vtcr.prompts import SYSTEM_PROMPT

    recipe = BuiltinRecipe(reading_steps=2, reading_batch_size=6)
    one = build_reading_samples(recipe, tmp_path / "one", SYSTEM_PROMPT, processes=1)
    two = build_reading_samples(recipe, tmp_path / "two", SYSTEM_PROMPT, processes=2)
    assert one.read_text() == two.read_text() and len(one.read_text().splitlines()) == 12
    names = sorted(p.name for p in (tmp_path / "one" / "images").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two" / "images").iterdir()) and len(names) >= 12
    assert all((tmp_path / "one" / "images" / n).read_bytes() == (tmp_path / "two" / "images" / n).read_bytes() for n in names)
    first = load_reading_samples(tmp_path / "two")[0]
    replay = random.Random(f"vtcr-builtin-reading-{recipe.seed}")
    pages = [reading_lines(replay) for _ in range(replay.randint(*recipe.reading_pages))]
    assert len(first.images) == len(pages)
    assert first.messages[-1]["content"][0]["text"] == line_state(pages[-1][-1]) + "\n"


@pytest.mark.parametrize("spec", ["1:10", "2:49", "0:60", "10:5", "a:b", "48:100"])
def test_unsupported_lengths_are_refused_with_the_supported_range(spec):
    with pytest.raises(ValueError, match="2:48"):
        parse_length_range(spec)


def test_an_unsupported_task_length_is_refused_by_eval_and_its_cli(capsys):
    from vtcr.cli import main
    from vtcr.evaluate import EvalConfig

    with pytest.raises(ValueError, match="support 2:48"):
        EvalConfig(benchmarks=("builtin",), task_length="2:60")
    assert EvalConfig(benchmarks=("builtin",), task_length="4:9").task_length == (4, 9)
    code = main(["eval", "--benchmarks", "builtin", "--task-length", "3:70", "--out", "unused", "--limit", "1"])
    assert code != 0 and "2:48" in capsys.readouterr().err


@pytest.mark.parametrize("text", [
    "What is 2+2?",
    "x=0 y=0 s=4. Repeat z=(x+y)%10, s=(s+z)%10, x=y, y=z until y=1 s=0. Answer x.",  # never gets there
    "x=3 y=8 s=4. Repeat z=(x+y)%10, s=(s+z)%10, x=y, y=z until x=1 y=5. Answer s.",  # another stop rule
    "x=3 y=8 s=4. Repeat z=(x+y)%10, s=(s+z)%10, x=y, y=z until y=1 s=0. Answer s.",  # another answer
])  # fmt: skip
def test_parse_question_refuses_other_text(text):
    assert parse_question(text) is None


# --- the shipped weights ---------------------------------------------------------------------------

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from vtcr.builtin import (  # noqa: E402
    BuiltinWeightsError,
    WEIGHTS_DIR,
    info,
    load_backends,
    model_dir,
    off_task_warning,
    verify,
)
from vtcr._cpu import usable_cores  # noqa: E402
from vtcr.builtin.recipe import LOCK_NAME, MANIFEST_FILE, RECIPE_VERSION, WORK_NAME, BuiltinRecipe, rebuild, rebuild_lock  # noqa: E402


def test_the_shipped_weights_verify_and_fit_the_budget():
    manifest = verify()
    sizes = {name: sum(v["bytes"] for k, v in manifest["files"].items() if k.startswith(name + "/")) for name in ("vtc", "standard")}
    assert all(sizes.values()) and sum(sizes.values()) <= 25_000_000
    # the weights are what the recipe trains (fields added later, at their off default, are not in old manifests)
    assert BuiltinRecipe.from_dict(manifest["recipe"]) == BuiltinRecipe() and manifest["recipe"]["version"] == RECIPE_VERSION
    assert {m: e["ok"] for m, e in info()["models"].items()} == {"vtc": True, "standard": True}
    assert model_dir("standard") == WEIGHTS_DIR / "standard" and model_dir("no-memory") == WEIGHTS_DIR / "vtc"


def test_missing_or_corrupted_weights_name_the_file_and_the_rebuild(tmp_path):
    root = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, root, ignore=shutil.ignore_patterns(".*"))
    weights = root / "vtc" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BuiltinWeightsError, match=r"model\.safetensors is corrupted.*vtcr builtin rebuild"):
        model_dir("vtc", root)
    model_dir("standard", root)  # the other model is intact
    (root / "standard" / "config.json").unlink()
    with pytest.raises(BuiltinWeightsError, match=r"standard/config\.json is missing.*vtcr builtin rebuild"):
        load_backends(("standard",), root=root)
    (root / MANIFEST_FILE).unlink()
    with pytest.raises(BuiltinWeightsError, match=r"manifest\.json is missing"):
        verify(root=root)
    assert info(root)["models"]["vtc"]["ok"] is False


# --- no --model: the built-in models ----------------------------------------------------------------


def test_off_task_questions_get_the_warning():
    good = problems_of_length(30)[0].question()
    assert off_task_warning(good) is None
    warning = off_task_warning("What is the capital of France?")
    assert "not one of the built-in task" in warning and "--model PATH" in warning and "--server URL" in warning
    assert "needs 55 steps" in off_task_warning(problems_of_length(55)[0].question())


def test_reason_without_a_model_uses_the_builtin_model_and_warns_off_task(capsys):
    from vtcr.cli import main

    code = main(["reason", "What is the capital of France?", "--max-rounds", "1", "--round-tokens", "8"])
    captured = capsys.readouterr()
    assert code == 0
    assert "built-in models" in captured.err and str(WEIGHTS_DIR / "vtc") in captured.err
    assert "not one of the built-in task" in captured.err and "--model PATH" in captured.err
    assert "round 1" in captured.out


def test_eval_without_a_model_uses_both_builtin_models(tmp_path, capsys):
    """A few held-out builtin problems with the shipped weights, through `vtcr eval` with no --model:
    the standard model for standard mode, the vtc model for vtc and no-memory."""
    from vtcr.cli import main

    out = tmp_path / "eval"
    code = main(["eval", "--benchmarks", "builtin", "--modes", "vtc,standard,no-memory", "--limit", "1",
                 "--task-length", "7:12", "--max-rounds", "2", "--out", str(out), "--quiet"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "vtc: " in captured.err and str(WEIGHTS_DIR / "standard") in captured.err
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {r["mode"] for r in rows} == {"vtc", "standard", "no-memory"}
    by_mode = {m: [r for r in rows if r["mode"] == m] for m in ("vtc", "standard", "no-memory")}
    assert all(len(r["rounds"]) == 2 for r in by_mode["vtc"])  # 7-12 steps: two rounds (capped at 2 here)
    assert all(r["rounds"][1]["images"] == 1 for r in by_mode["vtc"])  # round 2 reads round 1's page
    assert all(r["rounds"][-1]["images"] == 0 for r in by_mode["no-memory"])  # the same model without its pages
    assert all(len(r["rounds"]) == 1 for r in by_mode["standard"])
    for r in by_mode["vtc"]:  # every round of six task lines ends its turn; the lines have the task's shape
        first = r["rounds"][0]["text"].split("\n")
        assert len(first) >= 6 and all(re.fullmatch(LINE, line) for line in first[:6])
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "vtcr-builtin" and config["engine"]["temperature"] == 0.0
    # every row says whether its lines are the gold trace's; the summary counts those with the answer right
    for r in rows:
        assert r["trace_right"] == trace_right(r["question"], "".join(x["text"] for x in r["rounds"]))
        assert r["first_wrong"] == first_wrong_line(r["question"], [x["text"] for x in r["rounds"]])
    summary = json.loads((out / "summary.json").read_text())
    for g in summary["groups"]:
        runs = by_mode[g["mode"]]
        assert g["trace_right_rate"] == sum(r["trace_right"] and r["correct"] for r in runs) / len(runs)
        kinds = [r["first_wrong"]["kind"] for r in runs if r["first_wrong"]]
        assert g["first_wrong"] == {k: kinds.count(k) for k in ("read", "compute", "stopped")}
    report = (out / "report.md").read_text()
    assert "lines right %" in report and "First wrong line" in report
    for g in summary["groups"]:
        assert f"- {g['mode']}: " + ", ".join(f"{k} {g['first_wrong'][k]}" for k in ("read", "compute", "stopped")) in report


def test_the_shipped_vtc_model_reads_its_pages_not_their_count(tmp_path, capsys):
    """Round 2 of held-out problems starts by copying the state that ends round 1's page. With the
    true page the vtc model copies it right on most problems (it misreads about one held-out page in
    six: MODEL_CARD.md); sent the same number of blank pages (`blank-memory`) it cannot -- the state
    is on the page, not in how many pages there are."""
    from vtcr.cli import main

    out = tmp_path / "eval"
    code = main(["eval", "--benchmarks", "builtin", "--modes", "vtc,blank-memory", "--limit", "8", "--task-seed", "5",
                 "--task-length", "7:30", "--max-rounds", "2", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    copied = {"vtc": 0, "blank-memory": 0}
    for r in rows:
        assert len(r["rounds"]) == 2 and r["rounds"][1]["images"] == 1
        gold = parse_question(r["question"]).lines()[6][:3]  # round 2's first line starts with the state read
        copied[r["mode"]] += r["rounds"][1]["text"].lstrip()[:3] == gold
    assert copied["vtc"] >= 6 and copied["blank-memory"] <= 1, copied


# --- the rebuild: lock, resume, publish -------------------------------------------------------------

TINY = BuiltinRecipe(problems=6, lengths=(2, 7), max_steps=2, stage2_steps=1, stage2_modes=("vtc",), batch_size=2,
                     vtc_batch_size=2, save_steps=1, cutoff_len=512, align_steps=2, align_batch_size=2, reading_steps=2,
                     reading_batch_size=2, reading_check_pages=2, vtc_reading_mix=2, widen_at_step=1, grouped_modes=("standard",))


@pytest.mark.parametrize("field", ["max_steps", "align_steps", "reading_steps", "vtc_reading_mix"])
def test_a_negative_step_count_is_refused_naming_the_field(field, capsys):
    with pytest.raises(ValueError, match=f"recipe {field} -1"):
        BuiltinRecipe(**{field: -1})
    from vtcr.cli import main

    assert main(["builtin", "rebuild", "--steps", "-1", "--out", "unused"]) != 0
    assert "max_steps -1" in capsys.readouterr().err


def test_another_model_seed_starts_from_other_weights_on_the_same_problems(tmp_path, capsys):
    from safetensors.torch import load_file

    from vtcr.builtin.recipe import build_reading_samples, init_builtin_model, task_tokenizer, train_config

    tok = task_tokenizer(tmp_path / "tokenizer.json")
    shipped, again, other = BuiltinRecipe(), BuiltinRecipe(model_seed=0), BuiltinRecipe(model_seed=1)
    weights = {}
    for name, recipe in (("shipped", shipped), ("again", again), ("other", other)):
        folder = init_builtin_model(recipe, tok, tmp_path / name)
        weights[name] = load_file(str(folder / "model.safetensors"))
    # model_seed 0 is the shipped recipe's own start; 1 another random start of the same shapes
    assert all(weights["shipped"][k].equal(weights["again"][k]) for k in weights["shipped"])
    assert weights["other"].keys() == weights["shipped"].keys()
    assert not all(weights["other"][k].equal(weights["shipped"][k]) for k in weights["shipped"])
    # other data order and other reading pages, the same training problems (held-out sets exclude seed 0's)
    configs = [train_config(r, "vtc", tmp_path, tmp_path, tmp_path, stage=s) for r in (shipped, other) for s in (0, 1)]
    assert [c.seed for c in configs] == [2, 0, 3, 1]
    small = [BuiltinRecipe(reading_steps=2, reading_batch_size=2, model_seed=s) for s in (None, 1)]
    texts = [build_reading_samples(r, tmp_path / f"read-{i}", "sys", processes=1).read_text()
             for i, r in enumerate(small)]  # fmt: skip
    assert texts[0] != texts[1]
    assert synthetic.problems(other.problems, other.seed, other.lengths) == synthetic.problems(
        shipped.problems, shipped.seed, shipped.lengths)
    with pytest.raises(ValueError, match="recipe model_seed -1"):
        BuiltinRecipe(model_seed=-1)
    from vtcr.cli import main

    assert main(["builtin", "rebuild", "--model-seed", "-1", "--out", "unused"]) != 0
    assert "model_seed -1" in capsys.readouterr().err
    assert main(["builtin", "rebuild", "--modes", "vtc,texts", "--out", "unused"]) != 0
    assert "recipe modes" in capsys.readouterr().err


@pytest.mark.parametrize("stage2", [False, True])
def test_reading_samples_are_mixed_into_the_vtc_models_last_fine_tuning_only(stage2, tmp_path, monkeypatch):
    """`vtc_reading_mix` fresh reading samples join the vtc model's own samples in its last stage
    (stage 1 when the recipe has no stage 2); the standard model and any earlier stage train on
    the build's samples alone."""
    from dataclasses import replace

    import vtcr.train
    from vtcr.builtin.recipe import build_builtin_data, init_builtin_model, task_tokenizer, train_mode
    from vtcr.train.data import load_samples, read_build

    # without a stage 2: mixed samples of exactly 2 pages that answer the next line, as the recipe says
    # and the standard model's counterpart, 3 text drills
    recipe = TINY if stage2 else replace(TINY, stage2_steps=0, stage2_modes=(), vtc_reading_mix_pages=(2, 2),
                                         vtc_reading_mix_target="line", standard_line_mix=3)  # fmt: skip
    work = tmp_path / "work"
    init = init_builtin_model(recipe, task_tokenizer(work / "tokenizer.json"), work / "init")
    build_builtin_data(recipe, init, work / "data")
    calls = []
    monkeypatch.setattr(vtcr.train, "train", lambda config, samples=None, callbacks=(): calls.append((config, samples)))
    for mode in ("vtc", "standard"):
        train_mode(recipe, work, mode)
    own = len(load_samples(read_build(work / "data"), "vtc"))
    vtc_calls = [(c.mode, None if s is None else len(s)) for c, s in calls if c.mode == "vtc"]
    assert vtc_calls == ([("vtc", None), ("vtc", own + 2)] if stage2 else [("vtc", own + 2)])
    standard = [s for c, s in calls if c.mode == "standard"]
    if stage2:
        assert standard == [None]
    else:
        drills = [s for s in standard[0] if s.id.startswith("drill-")]
        assert len(standard) == 1 and len(standard[0]) == len(load_samples(read_build(work / "data"), "standard")) + 3
        assert len(drills) == 3 and not any(s.images for s in standard[0])
        for drill in drills:  # the answer continues the last line of the user turn by one step
            last = drill.messages[0]["content"][0]["text"].splitlines()[-1]
            x, y, s = (int(d) for d in line_state(last))
            assert drill.messages[1]["content"][0]["text"].startswith(f"{x}{y}{s} ({x}+{y})%10={(x + y) % 10} ")
    mixed = calls[len(vtc_calls) - 1][1]
    assert sum(s.id.startswith("read-") for s in mixed) == 2 and all(s.images for s in mixed if s.id.startswith("read-"))
    answers = [s.messages[-1]["content"][0]["text"] for s in mixed if s.id.startswith("read-")]
    if stage2:
        assert all(re.fullmatch(r"\d{3}\n", a) for a in answers), answers
    else:
        assert all(len(s.images) == 2 for s in mixed if s.id.startswith("read-"))
        assert all(re.fullmatch(r"\d{3} \(\d\+\d\)%10=\d \(\d\+\d\)%10=\d ->.*\n", a) for a in answers), answers


def test_a_mixed_reading_sample_can_answer_the_whole_next_line(tmp_path, capsys):
    """`vtc_reading_mix_target="line"`: the answer is the line a round writes after the page -- the
    last page's state, then one step of the recurrence from it (checked here by hand), over the
    pages `vtc_reading_mix_pages` asks for; bad page ranges and targets are refused by name."""
    import random

    from vtcr.builtin.recipe import READING_LINE_QUESTION, build_reading_samples, load_reading_samples
    from vtcr.data.synthetic import reading_lines

    recipe = BuiltinRecipe(model_seed=3)
    build_reading_samples(recipe, tmp_path, "sys", n=20, tag="mix", processes=1, pages=(5, 7), target="line")
    samples = load_reading_samples(tmp_path)
    replay = random.Random("vtcr-builtin-mix-3")
    for sample in samples:
        pages = [reading_lines(replay) for _ in range(replay.randint(5, 7))]
        assert len(sample.images) == len(pages) and READING_LINE_QUESTION in json.dumps(sample.messages[1])
        x, y, s = (int(d) for d in line_state(pages[-1][-1]))
        z = (x + y) % 10
        want = f"{x}{y}{s} ({x}+{y})%10={z} ({s}+{z})%10={(s + z) % 10} ->"
        answer = sample.messages[-1]["content"][0]["text"]
        assert answer.startswith(want) and line_state(answer) == f"{y}{z}{(s + z) % 10}", (answer, want)
    assert {len(s.images) for s in samples} == {5, 6, 7}
    for bad in ({"vtc_reading_mix_pages": (0, 3)}, {"vtc_reading_mix_pages": (4, 2)}, {"vtc_reading_mix_target": "lines"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            BuiltinRecipe(**bad)
    from vtcr.cli import main

    with pytest.raises(SystemExit):
        main(["builtin", "rebuild", "--reading-mix-pages", "3:1", "--out", "unused"])
    assert "--reading-mix-pages" in capsys.readouterr().err


class _Killed(Exception):
    pass


def test_a_rebuild_ended_by_sigterm_leaves_no_lock_file_and_keeps_its_work(tmp_path):
    """`kill PID` (SIGTERM) ends a rebuild as Ctrl-C does: the lock file is removed, the finished
    stages stay for the resume, and the exit status says it was terminated."""
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "weights"
    recipe = {**TINY.to_dict(), "align_steps": 100_000}  # still aligning when the signal comes
    recipe.pop("version")
    code = ("import json, sys; from vtcr.builtin.recipe import BuiltinRecipe, rebuild; "
            f"rebuild(sys.argv[1], BuiltinRecipe.from_dict(json.loads(sys.argv[2])), log=lambda m: None)")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code, str(root), json.dumps(recipe)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (root / WORK_NAME / "data.done").is_file():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the rebuild did not reach its alignment stage within 120 s"
            time.sleep(0.2)
        assert (root / LOCK_NAME).is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert not (root / LOCK_NAME).exists() and not (root / MANIFEST_FILE).exists()
    assert (root / WORK_NAME / "init.done").is_file() and not (root / WORK_NAME / "aligned.done").exists()


def test_a_killed_rebuild_resumes_and_publishes_atomically(tmp_path):
    root = tmp_path / "weights"
    messages: list[str] = []

    def killer(message: str) -> None:
        messages.append(message)
        if message.startswith("5/6"):
            raise _Killed  # killed after the reading stage, before the fine-tunings

    with pytest.raises(_Killed):
        rebuild(root, TINY, log=killer)
    work = root / WORK_NAME
    assert all((work / f"{stage}.done").is_file() for stage in ("init", "data", "aligned", "reading-data", "read"))
    assert not (root / LOCK_NAME).exists() and not (root / MANIFEST_FILE).exists()  # no stale lock, nothing published

    with rebuild_lock(root):  # a second rebuild while one runs is refused, naming the lock
        with pytest.raises(RuntimeError, match=r"\.rebuild\.lock"):
            rebuild(root, TINY, log=messages.append)

    messages.clear()
    manifest = rebuild(root, TINY, log=messages.append, parallel=True)  # both models at once, a process each
    assert any("resuming" in m for m in messages) and not any(m.startswith(("1/6", "2/6", "3/6", "4/6")) for m in messages)
    assert any("side by side" in m for m in messages)
    each = max(1, usable_cores() // 2)  # the cores split between the two trainings
    assert {m: manifest["trained"][m]["stage1"]["timing"]["threads"] for m in ("vtc", "standard")} == {"vtc": each, "standard": each}
    # from step 1 the vtc model waited for the standard model to finish, then took every core
    assert manifest["trained"]["vtc"]["stage1"]["widened"]["step"] == 1
    assert manifest["trained"]["vtc"]["stage1"]["widened"]["threads"] == max(each, usable_cores())
    assert "widened" not in manifest["trained"]["standard"]["stage1"]
    # standard's batches grouped by length, vtc's random
    assert {m: manifest["trained"][m]["stage1"]["group_by_length"] for m in ("vtc", "standard")} == {"vtc": False, "standard": True}
    config = json.loads((root / "vtc" / "config.json").read_text())
    assert config["text_config"]["rope_parameters"]["rope_theta"] == TINY.rope_theta
    assert manifest["recipe"] == TINY.to_dict()
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "standard", "vtc"]  # work folder and lock gone
    verify(root=root)
    assert manifest["trained"]["vtc"]["stage2"]["global_step"] == 1
    assert manifest["reading"]["global_step"] == 2 and manifest["reading"]["unseen_pages"]["states"]["of"] == 2
    assert manifest["alignment"]["step"] == 2 and 0 <= manifest["alignment"]["nearest_embedding_right"] <= 1
    # both fine-tunings start from the reading stage with the aligned vision tower frozen: the same tower
    import torch
    from safetensors.torch import load_file

    towers = [{k: v for k, v in load_file(str(root / m / "model.safetensors")).items() if ".visual." in k or k.startswith("visual.")}
              for m in ("vtc", "standard")]  # fmt: skip
    assert towers[0] and towers[0].keys() == towers[1].keys()
    assert all(torch.equal(towers[0][k], towers[1][k]) for k in towers[0])
