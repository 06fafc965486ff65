"""Real checkpoints: prompts, training targets, stop rules and image budgets against the real chat
templates and configs in ../shared/models (issue 12).

Models are tiny random-weight checkpoints built `vtcr init-model --like` each real metadata folder
(its template unchanged; the Thinking template over the Instruct folder, whose architecture it
shares); the build is made by the real builder from real shared traces. References are independent
of the code under test: the real template files rendered by transformers, the real image
processors, the segments build-data wrote. A model that must write given text is the real tiny model
with its next-token logits forced to a script (`Scripted`), so the real prefill, cache, decoding,
stop ids and detokenisation all run.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from data_helpers import good_traces, write_jsonl  # noqa: E402

from vtcr.cli import main as cli_main  # noqa: E402
from vtcr.data import BuildConfig, SourceConfig, build_dataset  # noqa: E402
from vtcr.engine import EngineConfig, GenerationRequest, TransformersBackend, reason, round_messages  # noqa: E402
from vtcr.grade import grade_response  # noqa: E402
from vtcr.models import init_model_like  # noqa: E402
from vtcr.models.conventions import chat_conventions, training_target  # noqa: E402
from vtcr.models.metadata import read_chat_template, read_metadata  # noqa: E402
from vtcr.tokens import vision_tokens  # noqa: E402
from vtcr.train.data import IGNORE_INDEX, SampleEncoder, iter_problems, load_samples, read_build  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
Q3_8B = SHARED_MODELS / "Qwen__Qwen3-VL-8B-Instruct"
Q3_2B = SHARED_MODELS / "Qwen__Qwen3-VL-2B-Instruct"
THINKING = SHARED_MODELS / "Qwen__Qwen3-VL-8B-Thinking" / "chat_template.json"
GLM = SHARED_MODELS / "zai-org__GLM-4.1V-9B-Thinking"
Q25 = SHARED_MODELS / "Qwen__Qwen2.5-VL-7B-Instruct"
FOLDERS = {"qwen3-vl-8b": Q3_8B, "qwen3-vl-2b": Q3_2B, "qwen3-vl-thinking": THINKING.parent, "glm-4.1v": GLM,
           "qwen2.5-vl": Q25}  # fmt: skip
# name -> (folder, --chat-template, --tokenizer)
LIKE = {
    "instruct": (Q3_8B, None, "builtin:qwen3"),
    "thinking": (Q3_8B, THINKING, "builtin:qwen3"),
    "glm": (GLM, None, "builtin:glm-4.1v"),
    "qwen2.5": (Q25, None, "builtin:qwen3"),
}

pytestmark = pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=f"real checkpoint metadata not found at {SHARED_MODELS}")


@pytest.fixture(scope="module")
def like_models(tmp_path_factory, qwen3_tokenizer_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("like")
    return {name: init_model_like(folder, "tiny", tok, root / name, chat_template=tmpl)
            for name, (folder, tmpl, tok) in LIKE.items()}  # fmt: skip


@pytest.fixture(scope="module")
def backends(like_models) -> dict[str, TransformersBackend]:
    return {name: TransformersBackend.from_pretrained(path, device="cpu") for name, path in like_models.items()}


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory, shared_traces) -> Path:
    root = tmp_path_factory.mktemp("real_build")
    rows = [{"id": t["id"], "problem": t["problem"], "answer": t["gt_answer"], "trace": t["r1_style"]}
            for t in good_traces(shared_traces, 2, min_chars=3000)]  # fmt: skip
    src = write_jsonl(root / "traces.jsonl", rows)
    build_dataset(BuildConfig(SourceConfig(str(src)), segment_tokens=256), root / "build", progress=False, plots=False)
    return root / "build"


def real_template(folder: Path) -> str:
    return read_chat_template(folder)[0]


# --- the facts each metadata file fixes ------------------------------------------------------------


def test_each_folder_gives_its_family_template_conventions_stop_ids_and_image_budget():
    expected = {  # folder: (family, opens, default system, placeholder, target suffix, stop ids, tokens per A4 page)
        "qwen3-vl-8b": ("qwen3-vl", "", None, "<|vision_start|><|image_pad|><|vision_end|>", "<|im_end|>\n", (151645, 151643), 494),
        "qwen3-vl-2b": ("qwen3-vl", "", None, "<|vision_start|><|image_pad|><|vision_end|>", "<|im_end|>\n", (151645, 151643), 494),
        "qwen3-vl-thinking": ("qwen3-vl", "<think>\n", None, "<|vision_start|><|image_pad|><|vision_end|>", "<|im_end|>\n", None, 494),
        "glm-4.1v": ("glm-4.1v", "", None, "<|begin_of_image|><|image|><|end_of_image|>", "<|endoftext|>", None, 630),
        "qwen2.5-vl": ("qwen2.5-vl", "", "You are a helpful assistant.", "<|vision_start|><|image_pad|><|vision_end|>",
                       "<|im_end|>\n", None, 630),
    }  # fmt: skip
    for name, folder in FOLDERS.items():
        meta = read_metadata(folder)
        conv = chat_conventions(meta.chat_template, meta.arch)
        fam, opens, system, placeholder, suffix, stops, page = expected[name]
        got = (meta.arch, conv.opens, conv.default_system, conv.image_placeholder, conv.target_suffix, meta.stop_ids(),
               vision_tokens((595, 842), meta.vision_spec()))  # fmt: skip
        assert got == expected[name], name
        assert conv.opens_think == (name == "qwen3-vl-thinking")
    assert read_metadata(Q3_8B).added_token_ids()["<think>"] == 151667
    assert chat_conventions(real_template(THINKING.parent), "qwen3-vl").generation_prompt == "<|im_start|>assistant\n<think>\n"


@pytest.mark.parametrize("folder", [Q3_8B, Q3_2B, GLM, Q25], ids=lambda p: p.name)
def test_vision_tokens_of_each_real_preprocessor_equal_vtcr_tokens(folder):
    """The real preprocessor_config.json through transformers' image processor gives the grid that
    `vtcr.tokens` computes, for an A4 page and other page shapes."""
    from PIL import Image

    from vtcr.models.processor import make_image_processor

    meta = read_metadata(folder)
    processor = make_image_processor(meta.arch, meta.preprocessor_config)
    spec = meta.vision_spec()
    sizes = [(595, 842), (595, 300), (1190, 1684), (300, 40), (2000, 3000)]
    grids = processor(images=[Image.new("RGB", s, "white") for s in sizes], return_tensors="pt")["image_grid_thw"]
    merge = spec.merge_size**2
    assert [int(g.prod()) // merge for g in grids] == [vision_tokens(s, spec) for s in sizes]
    assert [vision_tokens(s, spec) for s in sizes] == [vision_tokens(s, meta.arch) for s in sizes]


# --- init-model --like ---------------------------------------------------------------------------


def test_init_model_like_keeps_the_real_files(like_models, backends):
    for name, (folder, template_file, _) in LIKE.items():
        out = like_models[name]
        template = real_template(template_file or folder)
        assert (out / "chat_template.jinja").read_text(encoding="utf-8") == template, name  # unchanged
        processor = backends[name].processor  # loaded from the saved folder
        assert processor.chat_template == template == processor.tokenizer.chat_template
        meta = read_metadata(out)
        assert meta.vision_spec() == read_metadata(folder).vision_spec()
        assert json.loads((out / "vtcr.json").read_text())["arch"] == meta.arch
    config = json.loads((like_models["instruct"] / "config.json").read_text())
    real = json.loads((Q3_8B / "config.json").read_text())
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        assert config[key] == real[key]
    assert config["text_config"]["vocab_size"] == real["text_config"]["vocab_size"]
    assert config["text_config"]["hidden_size"] == 128 and config["text_config"]["rope_parameters"]["mrope_interleaved"]
    assert json.loads((like_models["instruct"] / "generation_config.json").read_text())["eos_token_id"] == [151645, 151643]
    # GLM: the stand-in tokenizer carries every GLM-4.1V control token, the box tokens survive decoding.
    tok = backends["glm"].processor.tokenizer
    for token in ("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|begin_of_image|>", "<|image|>",
                  "<|end_of_image|>", "<|begin_of_box|>", "<|end_of_box|>", "<think>", "</think>"):  # fmt: skip
        assert len(tok.encode(token, add_special_tokens=False)) == 1, token
    boxed = "<answer><|begin_of_box|>12<|end_of_box|></answer>"
    assert tok.decode(tok.encode(boxed, add_special_tokens=False), skip_special_tokens=True) == boxed


def test_stop_ids_come_from_the_generation_config(backends):
    assert backends["instruct"].stop_ids == {151645, 151643}  # generation_config.json + the tokenizer's eos
    glm = backends["glm"]
    tok = glm.processor.tokenizer
    assert glm.stop_ids == set(tok.convert_tokens_to_ids(["<|endoftext|>", "<|user|>", "<|observation|>"]))
    assert [backends[n].prompt_opens for n in ("instruct", "thinking", "glm", "qwen2.5")] == ["", "<think>\n", "", ""]


# --- training targets ----------------------------------------------------------------------------


def todays_rule(processor, messages) -> str:
    """The loss span vtcr took before issue 12: the rendered conversation minus the generation prompt."""
    from vtcr.models.conventions import template_messages

    msgs = template_messages(messages)
    prompt = processor.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    return full[len(prompt) :].rstrip()


@pytest.mark.parametrize("name", list(LIKE))
def test_loss_span_is_the_segment_and_the_end_of_turn_after_the_engine_prompt(build_dir, like_models, backends, name):
    """Every sample: the prompt ids are the engine's for the same round, and the decoded loss span is
    exactly the segment build-data holds (minus the `<think>\\n` a Thinking prompt opened) + the end of
    turn. Under the Thinking template the old rule (template re-render) fails this."""
    backend = backends[name]
    processor = backend.processor
    encoder = SampleEncoder(processor, cutoff_len=100_000)
    suffix = {"glm": "<|endoftext|>"}.get(name, "<|im_end|>\n")
    samples = load_samples(read_build(build_dir))
    assert len(samples) >= 4
    middle, old_rule_wrong_on_middle = 0, 0
    for sample in samples:
        segment = sample.messages[2]["content"][0]["text"]
        enc = encoder.encode(sample)
        n_prompt = sum(1 for x in enc["labels"] if x == IGNORE_INDEX)
        target = processor.tokenizer.decode(enc["input_ids"][n_prompt:], skip_special_tokens=False)
        if name == "thinking" and segment.startswith("<think>\n"):
            assert target == segment[len("<think>\n"):] + suffix  # the prompt already wrote <think>\n
        else:
            assert target == segment + suffix
        assert enc["labels"][n_prompt:] == enc["input_ids"][n_prompt:]
        if sample.images and len(sample.images) <= 2:  # the engine's prompt for the same round
            question = sample.messages[1]["content"][0]["text"]
            request = GenerationRequest(messages=round_messages(EngineConfig(), question, encoder.load_images(sample)),
                                        max_new_tokens=1)  # fmt: skip
            assert enc["input_ids"][:n_prompt] == backend._prepare(request).ids
        if "</think>" not in segment:  # every non-final VTC-R1 segment
            middle += 1
            old_rule_wrong_on_middle += todays_rule(processor, sample.messages) + suffix[len(suffix.rstrip()):] != target
    assert middle >= 2
    if name == "thinking":  # the re-rendered history turns each of them into an empty think block + text
        assert old_rule_wrong_on_middle == middle
    elif name in ("instruct", "qwen2.5"):  # verbatim templates: both rules agree
        assert old_rule_wrong_on_middle == 0


def test_train_inspect_prints_prompts_and_loss_spans_without_training(build_dir, like_models, tmp_path, capsys):
    out = tmp_path / "never"
    args = ["train", "--data", str(build_dir), "--model", str(like_models["thinking"]), "--out", str(out)]
    assert cli_main([*args, "--inspect", "3", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    samples = load_samples(read_build(build_dir))[:3]
    conv = chat_conventions(real_template(THINKING.parent), "qwen3-vl")
    assert [s["target"] for s in shown] == [training_target(s.messages[2]["content"][0]["text"], conv) for s in samples]
    assert all(s["prompt"].endswith("<|im_start|>assistant\n<think>\n") for s in shown)
    assert "<|image_pad|>*" in shown[1]["prompt"] and not out.exists()
    assert cli_main([*args, "--inspect", "1"]) == 0
    text = capsys.readouterr().out
    assert "--- target (the loss span)" in text and shown[0]["target"] in text


@pytest.fixture(scope="module")
def trained_thinking(build_dir, like_models, tmp_path_factory) -> Path:
    """`vtcr train` (one step) on the build, from the model with the real Thinking template."""
    from vtcr.train import TrainConfig, train

    out = tmp_path_factory.mktemp("trained") / "thinking"
    config = TrainConfig(data=str(build_dir), model=str(like_models["thinking"]), out=str(out), max_steps=1,
                         batch_size=1, cutoff_len=400, lr=1e-3, warmup_ratio=0.0, progress=False)  # fmt: skip
    assert train(config).global_step == 1
    return out


def test_training_keeps_the_real_template(trained_thinking):
    assert (trained_thinking / "chat_template.jinja").read_text(encoding="utf-8") == real_template(THINKING.parent)
    assert json.loads((trained_thinking / "generation_config.json").read_text())["eos_token_id"] == [151645, 151643]


# --- the engine with real templates: a build-data segment replayed as rounds -----------------------


class Scripted(torch.nn.Module):
    """A real model whose next-token choice is forced to `scripts[k]` in the k-th generate call.

    A prefill (more than one new token) runs the real model over the real prompt and images and
    starts the next script; a decode step returns the forced logits without running the model
    (their values would be overwritten anyway; vtc rounds keep only the prompt's cache)."""

    def __init__(self, model, scripts: list[list[int]]):
        super().__init__()
        self.inner = model
        self.model = model.model  # get_rope_index lives here
        self.config, self.generation_config = model.config, model.generation_config
        self.scripts, self.call, self.pos = scripts, -1, 0

    def forward(self, input_ids, **kwargs):
        from types import SimpleNamespace

        if input_ids.shape[1] > 1:
            out = self.inner(input_ids=input_ids, **kwargs)
            self.call, self.pos = self.call + 1, 0
        else:
            out = SimpleNamespace(past_key_values=kwargs.get("past_key_values"))
        script = self.scripts[self.call]
        token = script[min(self.pos, len(script) - 1)]
        self.pos += 1
        out.logits = torch.full((1, 1, self.config.get_text_config().vocab_size), -1e9)
        out.logits[..., token] = 0.0
        return out


def scripted_backend(source: Path | TransformersBackend, turns: list[str]) -> TransformersBackend:
    """A model (a checkpoint folder, or a loaded backend's) forced to write each turn's training
    target, one turn per round."""
    if isinstance(source, Path):
        source = TransformersBackend.from_pretrained(source, device="cpu")
    processor = source.processor
    conv = source.conventions
    scripts = [processor.tokenizer(training_target(t, conv), add_special_tokens=False)["input_ids"] for t in turns]
    return TransformersBackend(Scripted(source.model, scripts), processor, name=source.name, render_config="dense")


def _pixels(img):
    import numpy as np

    return np.asarray(img.convert("RGB"))


def check_replay(record, problem, build_dir: Path, gold: str) -> None:
    import numpy as np
    from PIL import Image

    assert [r.text for r in record.rounds] == problem["turns"]  # what build-data holds, round by round
    assert record.finished and record.stop_reason == "answer"
    for k, pages in enumerate(problem["pages"]):  # what a round renders == what build-data rendered
        built = [_pixels(Image.open(build_dir / page["file"])) for page in pages]
        assert len(record.page_images[k]) == len(built)
        assert all(np.array_equal(_pixels(a), b) for a, b in zip(record.page_images[k], built))
    assert grade_response(record.response, gold).correct


@pytest.mark.parametrize("name", ["thinking", "instruct"])
def test_a_build_data_problem_replayed_through_the_engine_renders_the_same_pages(build_dir, backends, trained_thinking, name):
    """build-data -> train -> reason -> grade: the trained Thinking checkpoint (and an Instruct one)
    forced to write a built problem's segments records, renders and grades exactly what build-data holds."""
    problem = next(iter_problems(read_build(build_dir)))
    assert len(problem["turns"]) >= 3 and problem["turns"][0].startswith("<think>\n")
    config = EngineConfig(max_rounds=len(problem["turns"]), round_tokens=2000, temperature=0.0, save_images=True,
                          render_preset="dense")  # fmt: skip
    backend = scripted_backend(trained_thinking if name == "thinking" else backends[name], problem["turns"])
    record = reason(problem["question"], backend, config)
    check_replay(record, problem, build_dir, problem["answer"])
    # Round 1: the model wrote the target up to <|im_end|> (the stop id; the "\n" after it is never generated).
    assert record.rounds[0].generated_tokens == len(backend.model.scripts[0]) - 1


def test_the_same_replay_through_vtcr_serve(build_dir, trained_thinking):
    """`vtcr serve` reports what the Thinking prompt opens; the openai backend's rounds then match build-data."""
    from vtcr.engine.openai_backend import OpenAIBackend
    from vtcr.engine.server import ServerConfig, make_server, server_url

    problem = next(iter_problems(read_build(build_dir)))
    backend = scripted_backend(trained_thinking, problem["turns"])
    httpd = make_server(backend, ServerConfig(port=0, served_model_name="thinking-tiny"))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        client = OpenAIBackend(server_url(httpd), "thinking-tiny", concurrency=1, timeout_s=120)
        assert client.prompt_opens == "<think>\n"
        config = EngineConfig(max_rounds=len(problem["turns"]), round_tokens=2000, temperature=0.0, save_images=True)
        record = reason(problem["question"], client, config)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)
    check_replay(record, problem, build_dir, problem["answer"])


def test_glm_boxed_answer_through_the_glm_template_is_graded_right(build_dir, backends):
    problem = next(iter_problems(read_build(build_dir)))
    gold = problem["answer"].strip()
    last = problem["turns"][-1]
    boxed_last = last[: last.rindex("<answer>")] + f"<answer><|begin_of_box|>{gold}<|end_of_box|></answer>"
    turns = [*problem["turns"][:-1], boxed_last]
    config = EngineConfig(max_rounds=len(turns), round_tokens=2000, temperature=0.0, save_images=True, render_preset="dense")
    backend = scripted_backend(backends["glm"], turns)
    request = GenerationRequest(messages=round_messages(config, problem["question"], []), max_new_tokens=1)
    assert backend._prepare(request).ids[:2] == backend.processor.tokenizer.convert_tokens_to_ids(["[gMASK]", "<sop>"])
    record = reason(problem["question"], backend, config)
    assert [r.text for r in record.rounds] == turns and record.finished
    assert record.answer == gold and grade_response(record.response, gold).correct
    # A box without answer tags still ends the run and is the answer.
    no_tags = last[: last.rindex("<answer>")] + f"The answer is <|begin_of_box|>{gold}<|end_of_box|>"
    assert grade_response(no_tags, gold).pred == gold


# --- LLaMA-Factory export --------------------------------------------------------------------------


@pytest.mark.parametrize("name, template, extra", [("instruct", "qwen3_vl_nothink", ""), ("thinking", "qwen3_vl_nothink", "<think>\n"),
                                                   ("glm", "glm_ocr", "\n")])  # fmt: skip
def test_export_llamafactory_agrees_with_vtcr_train(build_dir, like_models, backends, tmp_path, name, template, extra):
    """LLaMA-Factory's sample ids (its template's slots, re-stated) equal vtcr train's prompt + target;
    its loss span is vtcr's plus `extra`; the dataset resolves from any folder (absolute paths)."""
    from vtcr.train import export_llamafactory
    from vtcr.train.llamafactory import LF_FORMATS, lf_prompt

    result = export_llamafactory(build_dir, like_models[name], tmp_path / "lf")
    assert (result.template, result.lf_extra_target) == (template, extra)
    assert not [w for w in result.warnings if "no LLaMA-Factory template matches" in w]
    info = json.loads(Path(result.dataset_info).read_text())[result.dataset]
    rows = json.loads(Path(info["file_name"]).read_text())
    assert Path(info["file_name"]).is_absolute() and all(Path(p).is_absolute() and Path(p).is_file() for r in rows for p in r["images"])
    processor = backends[name].processor
    encoder = SampleEncoder(processor, cutoff_len=100_000)
    samples = load_samples(read_build(build_dir))
    fmt, tok = LF_FORMATS[template], processor.tokenizer
    for row, sample in list(zip(rows, samples))[:4]:
        enc = encoder.encode(sample)
        _, grids = encoder.preprocess(encoder.load_images(sample))
        prompt = lf_prompt(fmt, row["messages"][0]["content"], row["messages"][1]["content"])
        chunks = prompt.split(processor.image_token)
        expanded = chunks[0] + "".join(processor.image_token * encoder._n_tokens(g) + c for g, c in zip(grids, chunks[1:]))
        lf_ids = tok(expanded, add_special_tokens=False)["input_ids"]
        response = tok(fmt.assistant_lead + row["messages"][2]["content"] + fmt.assistant_tail, add_special_tokens=False)["input_ids"]
        assert lf_ids + response == enc["input_ids"]
        n_vtcr = sum(1 for x in enc["labels"] if x != IGNORE_INDEX)
        assert tok.decode(response[: len(response) - n_vtcr]) == extra


# --- bad input -------------------------------------------------------------------------------------


def run_cli(args, capsys) -> tuple[int, str]:
    code = cli_main(args)
    return code, capsys.readouterr().err


def test_bad_inputs_are_refused_naming_the_file_and_what_to_do(tmp_path, capsys):
    base = ["init-model", "--size", "tiny", "--out", str(tmp_path / "never")]
    # A template vtcr cannot split: it writes no generation prompt.
    text = real_template(Q3_8B)
    bad = tmp_path / "no_generation_prompt.jinja"
    bad.write_text(text[: text.rindex("{%- if add_generation_prompt %}")], encoding="utf-8")
    code, err = run_cli([*base, "--like", str(Q3_8B), "--chat-template", str(bad), "--tokenizer", "builtin:qwen3"], capsys)
    assert code == 2 and str(bad) in err and "no generation prompt" in err and "--chat-template" in err
    # ... or ends an assistant turn with another token than the family's.
    other = tmp_path / "other_end.jinja"
    other.write_text(text.replace("'<|im_end|>\\n'", "'</s>\\n'"), encoding="utf-8")
    code, err = run_cli([*base, "--like", str(Q3_8B), "--chat-template", str(other), "--tokenizer", "builtin:qwen3"], capsys)
    assert code == 2 and "'</s>\\n'" in err and "<|im_end|>" in err
    # An image-processor config without a pixel budget.
    nobudget = tmp_path / "glm_nobudget"
    shutil.copytree(GLM, nobudget)
    cfg = json.loads((nobudget / "preprocessor_config.json").read_text())
    del cfg["size"]
    (nobudget / "preprocessor_config.json").write_text(json.dumps(cfg))
    code, err = run_cli([*base, "--like", str(nobudget), "--tokenizer", "builtin:glm-4.1v"], capsys)
    assert code == 2 and "preprocessor_config.json has no pixel budget" in err and "shortest_edge" in err
    code, err = run_cli(["inspect-model", str(nobudget)], capsys)
    assert code == 2 and "no pixel budget" in err
    # A family vtcr does not know.
    llava = tmp_path / "llava"
    shutil.copytree(Q3_8B, llava)
    cfg = json.loads((llava / "config.json").read_text())
    (llava / "config.json").write_text(json.dumps({**cfg, "model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]}))
    code, err = run_cli([*base, "--like", str(llava), "--tokenizer", "builtin:qwen3"], capsys)
    assert code == 2 and "'llava'" in err and all(f in err for f in ("qwen3-vl", "qwen2.5-vl", "glm-4.1v"))
    # A tokenizer without the family's special tokens.
    code, err = run_cli([*base, "--like", str(GLM), "--tokenizer", "builtin:qwen3"], capsys)
    assert code == 2 and all(t in err for t in ("[gMASK]", "<sop>", "<|user|>", "<|begin_of_image|>")) and "builtin:glm-4.1v" in err
    assert not (tmp_path / "never").exists()


# --- inspect-model ---------------------------------------------------------------------------------


def test_inspect_model_reports_each_real_folder(capsys):
    reports = {}
    for name, folder in FOLDERS.items():
        assert cli_main(["inspect-model", str(folder), "--json"]) == 0
        reports[name] = json.loads(capsys.readouterr().out)
    thinking = reports["qwen3-vl-thinking"]
    assert thinking["template"]["opens_think"] is True and thinking["family"] == "qwen3-vl"
    assert any("segment + '<|im_end|>\\n'" in line and "<think>" in line for line in thinking["plan"])
    q3 = reports["qwen3-vl-8b"]
    assert q3["template"]["image_placeholder_ids"] == [151652, 151655, 151653] and q3["stop_ids"] == [151645, 151643]
    assert q3["images"]["tokens_per_page"] == 494 and q3["render"]["preset"] == "vtcr1"  # no vtcr.json: the paper's pages
    assert reports["glm-4.1v"]["images"]["tokens_per_page"] == 630 and reports["glm-4.1v"]["template"]["target_suffix"] == "<|endoftext|>"
    assert reports["qwen2.5-vl"]["template"]["default_system"] == "You are a helpful assistant."
    assert cli_main(["inspect-model", str(THINKING.parent)]) == 0
    assert "opens_think True" in capsys.readouterr().out


def test_inspect_model_of_a_vtcr_checkpoint_uses_its_tokenizer_and_vtcr_json(like_models, backends, capsys):
    assert cli_main(["inspect-model", str(like_models["glm"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    tok = backends["glm"].processor.tokenizer
    assert report["template"]["image_placeholder_ids"] == tok.convert_tokens_to_ids(
        ["<|begin_of_image|>", "<|image|>", "<|end_of_image|>"])
    assert report["render"]["preset"] == "dense" and report["render"]["from"] == "vtcr.json"


class _OpensThink:
    """A backend whose template opens `<think>\\n` (as Qwen3-VL Thinking's), answering from a script."""

    name = "opens-think"
    prompt_opens = "<think>\n"

    def __init__(self, texts: list[str]):
        from vtcr.engine.backend import GenerationResult

        self.texts, self.requests, self._result = list(texts), [], GenerationResult

    def generate(self, request):
        self.requests.append(request)
        text = self.texts[len(self.requests) - 1]
        return self._result(text=text, generated_tokens=len(text.split()), prompt_tokens=1, prefill_tokens=1,
                            vision_tokens=0, finish_reason="stop", seconds=0.0)  # fmt: skip

    def release(self, prefix_key):
        pass


@pytest.mark.parametrize("mode", ["vtc", "text"])
def test_what_the_generation_prompt_opens_starts_the_first_round_only(mode):
    texts = ["Let me add 2 and 3.\n\n", "That is 5.\n</think>\n\n<answer>5</answer>"]
    backend = _OpensThink(texts)
    record = reason("What is 2+3?", backend, EngineConfig(mode=mode, max_rounds=3, render_preset="dense"))
    assert [r.text for r in record.rounds] == ["<think>\n" + texts[0], texts[1]]
    assert record.response == "<think>\n" + "".join(texts) and record.finished and record.answer == "5"
    if mode == "text":  # the continued turn starts after the <think>\n the prompt writes itself
        assert backend.requests[1].assistant_prefix == texts[0]
