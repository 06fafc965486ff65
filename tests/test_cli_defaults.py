"""Every verb's defaults are the library's: parsing a verb's minimal command line gives exactly the
config the library builds by default, and every flag's help shows the library's default value."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from vtcr.cli import build_parser
from vtcr.commands import build_data, eval as eval_cmd, reason, serve, train
from vtcr.commands._common import default_of, shown
from vtcr.data.build import BuildConfig
from vtcr.data.sources import SourceConfig
from vtcr.engine.modes import EngineConfig
from vtcr.engine.server import ServerConfig
from vtcr.evaluate.config import EvalConfig
from vtcr.grade import GradeConfig
from vtcr.models.checkpoint import init_model, init_model_like
from vtcr.train.config import TrainConfig
from vtcr.train.llamafactory import export_llamafactory


def subparser(verb: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[verb]


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def help_of(verb: str, dest: str) -> str:
    return next(a.help for a in subparser(verb)._actions if a.dest == dest)


# (verb's minimal command line, its config from the command line, the library's default config)
CASES = [
    (["reason", "What is 2+3?", "--model", "m"], reason.config_from_args, EngineConfig()),
    (["eval", "--benchmarks", "math500", "--model", "m", "--out", "o"], eval_cmd.config_from_args,
     EvalConfig(benchmarks=("math500",), model="m")),
    (["train", "--data", "d", "--model", "m", "--out", "o"], train.config_from_args, TrainConfig(data="d", model="m", out="o")),
    (["build-data", "traces.jsonl", "--out", "o"], build_data.config_from_args, BuildConfig(SourceConfig("traces.jsonl"))),
    (["serve", "--model", "m"], serve.config_from_args, ServerConfig(served_model_name="m")),
]  # fmt: skip


@pytest.mark.parametrize("argv, from_args, expected", CASES, ids=[c[0][0] for c in CASES])
def test_a_verbs_minimal_command_line_gives_the_librarys_default_config(argv, from_args, expected):
    assert from_args(parse(argv)) == expected


@pytest.mark.parametrize(
    "verb, cls, skip",
    [
        ("train", TrainConfig, {"data", "model", "out", "progress", "lora", "gradient_checkpointing", "render_preset", "render_config"}),
        ("build-data", BuildConfig, {"source", "preset", "system_prompt", "families", "dataset_name"}),
        ("serve", ServerConfig, {"served_model_name", "max_request_bytes", "prefix_cache", "max_decode_pixels",
                                 "read_timeout_s"}),
    ],
)  # fmt: skip
def test_every_flag_that_sets_a_field_defaults_to_the_field(verb, cls, skip):
    actions = {a.dest: a for a in subparser(verb)._actions}
    checked = 0
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        action = actions.get(f.name)
        assert action is not None, f"vtcr {verb} has no flag for {cls.__name__}.{f.name}"
        assert action.default == default_of(cls, f.name), f"--{f.name.replace('_', '-')}"
        value = default_of(cls, f.name)
        if action.help and "default" in action.help and value is not None and not isinstance(value, bool):
            assert shown(default_of(cls, f.name)) in action.help, action.help
        checked += 1
    assert checked >= 3


def test_engine_flags_show_the_engine_defaults_in_reason_and_eval():
    engine = EngineConfig()
    for verb in ("reason", "eval"):
        for dest, value in (("max_rounds", engine.max_rounds), ("round_tokens", engine.round_tokens),
                            ("temperature", engine.temperature), ("top_p", engine.top_p)):  # fmt: skip
            assert f"(default {shown(value)})" in help_of(verb, dest), (verb, dest)
    assert f"default {shown(default_of(EvalConfig, 'modes'))}" in help_of("eval", "modes")


def test_engine_flags_override_only_what_is_given(tmp_path):
    custom = tmp_path / "r.json"
    from vtcr.render import preset

    preset("vtcr1").replace(font_size=7.5).to_json(custom)
    args = parse(["reason", "q", "--model", "m", "--round-tokens", "64", "--temperature", "0", "--render-config", str(custom)])
    config = reason.config_from_args(args)
    assert (config.round_tokens, config.temperature, config.max_rounds) == (64, 0.0, EngineConfig().max_rounds)
    assert config.render_config.font_size == 7.5 and config.render_preset is None
    args = parse(["eval", "--benchmarks", "aime25", "--model", "m", "--out", "o", "--render-preset", "vtcr1", "--seed", "3"])
    config = eval_cmd.config_from_args(args)
    assert config.engine == EngineConfig(render_preset="vtcr1", seed=3)
    with pytest.raises(SystemExit):  # one of the two, never both
        parse(["reason", "q", "--model", "m", "--render-preset", "dense", "--render-config", str(custom)])


def test_function_argument_defaults_reach_their_flags():
    args = parse(["init-model", "--arch", "qwen3-vl", "--size", "tiny", "--tokenizer", "t", "--out", "o"])
    assert args.seed == 0 == default_of_param(init_model, "seed") and args.device == default_of_param(init_model, "device")
    args = parse(["export-llamafactory", "--data", "d", "--model", "m", "--out", "o"])
    for name in ("cutoff_len", "lr", "epochs", "batch_size", "grad_accum"):
        assert getattr(args, name) == default_of_param(export_llamafactory, name), name
    args = parse(["grade", "f.jsonl", "--pred-field", "p", "--gold-field", "g"])
    assert args.timeout == GradeConfig().timeout_s
    from vtcr.evaluate.run import run_eval

    args = parse(["eval", "--benchmarks", "math500", "--model", "m", "--out", "o"])
    for name in ("concurrency", "render_workers", "grade_timeout_s"):
        assert getattr(args, name) == default_of_param(run_eval, name), name


def default_of_param(func, name):
    import inspect

    return inspect.signature(func).parameters[name].default


def test_the_real_checkpoint_flags_default_to_the_library():
    args = parse(["init-model", "--like", "folder", "--size", "tiny", "--tokenizer", "t", "--out", "o"])
    assert args.like == "folder" and args.arch is None
    assert args.chat_template is None is default_of_param(init_model_like, "chat_template")
    for name in ("seed", "device", "render"):
        assert default_of_param(init_model_like, name) == default_of_param(init_model, name), name
    with pytest.raises(SystemExit):  # --arch or --like, never both, never neither
        parse(["init-model", "--like", "f", "--arch", "qwen3-vl", "--size", "tiny", "--tokenizer", "t", "--out", "o"])
    with pytest.raises(SystemExit):
        parse(["init-model", "--size", "tiny", "--tokenizer", "t", "--out", "o"])
    args = parse(["train", "--data", "d", "--model", "m", "--out", "o"])
    assert args.inspect is None and args.json is False
    args = parse(["train", "--data", "d", "--model", "m", "--out", "o", "--inspect", "2", "--json"])
    assert (args.inspect, args.json) == (2, True)
    assert train.config_from_args(args) == TrainConfig(data="d", model="m", out="o")  # inspecting changes no setting
    args = parse(["inspect-model", "some/model"])
    assert (args.model, args.json) == ("some/model", False)
