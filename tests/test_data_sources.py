"""Trace sources: OpenR1-Math-220K schema (parquet and JSONL) built from real traces, generic
JSONL with named fields, and every kind of bad input counted with its reason."""

from __future__ import annotations

import pytest

from data_helpers import corrupt_mid_file, generic_row, good_traces, openr1_row, write_jsonl, write_openr1_parquet
from vtcr.data.sources import SourceProblem, Rejected, SourceConfig, inspect_source, iter_source


@pytest.fixture(scope="module")
def traces(shared_traces):
    return good_traces(shared_traces, 10, min_chars=2000)


def _openr1_cases(traces):
    """(row, expected outcome under the default rule): a SourceProblem's chosen generation index, or a reason."""
    t = traces
    no_close = t[4]["r1_style"].split("</think>")[1]  # a generation that is only the summary
    return [
        (openr1_row(t[0], "u0"), 1),  # gen 0 verified but incomplete: gen 1 is chosen
        (openr1_row(t[1], "u1", complete=(True, True), math_verify=(False, True)), 1),
        (openr1_row(t[2], "u2", complete=(True, True), math_verify=(False, False), llama=(False, True)), 1),
        (openr1_row(t[3], "u3", complete=(True, True), math_verify=(False, False)), "no_verified_generation"),
        (openr1_row(t[4], "u4", complete=(True,), math_verify=(True,), generations=[no_close]), "no_think_close"),
        (openr1_row(t[5], "u5", answer=""), "empty_answer"),
        (openr1_row(t[6], "u6", answer=None), "missing_field"),
        (openr1_row(t[7], "u7", complete=(False, False)), "no_verified_generation"),
        (openr1_row(t[8], "u8", complete=(True,)), "malformed_row"),  # flags do not line up
        (openr1_row(t[9], "u9", complete=(True, True), math_verify=(True, True),
                    generations=[t[9]["r1_style"], t[0]["r1_style"]]), 0),  # the first verified one wins
    ]


def _outcome(item):
    return item.origin["generation"] if isinstance(item, SourceProblem) else item.reason


def test_openr1_parquet_picks_a_complete_verified_generation(tmp_path, traces):
    cases = _openr1_cases(traces)
    path = write_openr1_parquet(tmp_path / "train-00000.parquet", [row for row, _ in cases], row_group_size=3)
    items = list(iter_source(SourceConfig(str(path))))
    assert [_outcome(i) for i in items] == [want for _, want in cases]
    assert [i.index for i in items] == list(range(len(cases)))
    chosen = {i.id: i for i in items if isinstance(i, SourceProblem)}
    assert chosen["u0"].generation == traces[0]["r1_style"]
    assert chosen["u0"].answer == traces[0]["gt_answer"].strip()
    assert chosen["u0"].origin["verified_by"] == "correctness_math_verify"
    assert chosen["u2"].origin["verified_by"] == "correctness_llama"  # the fallback
    assert all(i.reason and i.detail for i in items if isinstance(i, Rejected))


@pytest.mark.parametrize("rule, expected_u2", [("math_verify", "no_verified_generation"), ("llama", 1)])
def test_selection_rule_is_a_flag(tmp_path, traces, rule, expected_u2):
    cases = _openr1_cases(traces)
    path = write_openr1_parquet(tmp_path / "d.parquet", [cases[2][0]])
    (item,) = iter_source(SourceConfig(str(path), selection=rule))
    assert _outcome(item) == expected_u2


def test_openr1_jsonl_with_wrong_types(tmp_path, traces):
    good = openr1_row(traces[0], "a")
    rows = [
        good,
        {**openr1_row(traces[1], "b"), "problem": 12},
        {**openr1_row(traces[2], "c"), "generations": [None, 5]},
        "{not json",
        [1, 2],
    ]
    path = write_jsonl(tmp_path / "openr1.jsonl.gz", rows, gz=True)
    items = list(iter_source(SourceConfig(str(path))))  # auto-detected as OpenR1 by its columns
    assert [_outcome(i) for i in items] == [1, "non_string_field", "non_string_field", "malformed_row", "malformed_row"]


def test_folder_with_corrupt_truncated_and_half_damaged_parquet(tmp_path, traces):
    cases = _openr1_cases(traces)
    rows = [row for row, _ in cases]
    good = write_openr1_parquet(tmp_path / "src" / "a_good.parquet", rows, row_group_size=3)
    (tmp_path / "src" / "b_garbage.parquet").write_bytes(b"PAR1 this is not a parquet file")
    (tmp_path / "src" / "c_truncated.parquet").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    corrupt_mid_file(good, tmp_path / "src" / "d_damaged.parquet", row_group=2)
    items = list(iter_source(SourceConfig(str(tmp_path / "src"))))
    errors = [i for i in items if i.index is None]
    assert [(e.file, e.reason) for e in errors] == [
        ("b_garbage.parquet", "corrupt_file"),
        ("c_truncated.parquet", "corrupt_file"),
        ("d_damaged.parquet", "corrupt_file"),
    ]
    assert "stopped after 6 rows" in errors[2].detail  # two whole row groups were read first
    row_items = [i for i in items if i.index is not None]
    # Every row of the good file, then the 6 readable rows of the damaged one, indexed in order.
    assert [_outcome(i) for i in row_items] == [w for _, w in cases] + [w for _, w in cases[:6]]
    assert [i.index for i in row_items] == list(range(len(row_items)))
    assert inspect_source(SourceConfig(str(tmp_path / "src"))).files[0].endswith("a_good.parquet")


def test_generic_jsonl_every_bad_row_kind(tmp_path, traces):
    t = traces
    think = t[0]["r1_style"]
    rows = [
        generic_row(t[0]),
        generic_row(t[1], correct=False),
        generic_row(t[2], likely_truncated=True),
        generic_row(t[3], r1_style=None),
        generic_row(t[4], gt_answer=""),
        generic_row(t[5], gt_answer=None),
        generic_row(t[6], gt_answer=27),
        generic_row(t[7], problem=["not", "text"]),
        generic_row(t[8], r1_style=think.replace("</think>", "")),
        generic_row(t[9], problem="   "),
        "not json at all",
        generic_row(t[1], r1_style=None),  # Sky-T1 `trace` is not looked at when r1_style is named
        '{"id": "s", "problem": "Q \\ud83d", "gt_answer": "1", "r1_style": "<think>a</think>", "correct": true,'
        ' "likely_truncated": false}',  # a lone surrogate escape: valid JSON, not valid Unicode
    ]
    path = write_jsonl(tmp_path / "traces.jsonl", rows)
    cfg = SourceConfig(str(path), trace_field="r1_style", answer_field="gt_answer", keep_if=("correct",),
                       drop_if=("likely_truncated",))
    got = [_outcome(i) if not isinstance(i, SourceProblem) else "ok" for i in iter_source(cfg)]
    assert got == ["ok", "filtered", "filtered", "missing_field", "empty_answer", "missing_field",
                   "non_string_field", "non_string_field", "no_think_close", "empty_problem", "malformed_row",
                   "missing_field", "invalid_text"]


def test_sky_t1_trace_field_is_mapped_to_think_form(tmp_path, traces):
    path = write_jsonl(tmp_path / "t.jsonl", [generic_row(t) for t in traces[:3]])
    items = list(iter_source(SourceConfig(str(path), trace_field="trace", answer_field="gt_answer")))
    assert [i.generation for i in items] == [t["r1_style"] for t in traces[:3]]
    assert [i.id for i in items] == [t["id"] for t in traces[:3]]


@pytest.mark.parametrize(
    "changes, flag",
    [
        ({"trace_field": "reasoning"}, "--trace-field"),
        ({"answer_field": "final"}, "--answer-field"),
        ({"keep_if": ("is_good",)}, "--keep-if"),
        ({"id_field": "key"}, "--id-field"),
    ],
)
def test_unknown_field_name_is_refused_up_front(tmp_path, traces, changes, flag):
    path = write_jsonl(tmp_path / "t.jsonl", [generic_row(traces[0])])
    cfg = SourceConfig(str(path), **{"answer_field": "gt_answer", **changes})
    with pytest.raises(ValueError, match=flag) as err:
        inspect_source(cfg)
    assert "its fields are" in str(err.value)


def test_openr1_parquet_without_required_column_is_refused(tmp_path, traces):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([openr1_row(traces[0], "x")]).drop_columns(["is_reasoning_complete"])
    pq.write_table(table, tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="trace"):  # no longer OpenR1-shaped: the generic trace field is missing
        inspect_source(SourceConfig(str(tmp_path / "x.parquet")))
    with pytest.raises(ValueError, match="is_reasoning_complete"):
        inspect_source(SourceConfig(str(tmp_path / "x.parquet"), format="openr1"))


def test_missing_path_and_offline_hub_id(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope"):
        list(iter_source(SourceConfig(str(tmp_path / "nope.jsonl"))))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="open-r1/OpenR1-Math-220K"):
        list(iter_source(SourceConfig("open-r1/OpenR1-Math-220K")))


def test_source_config_round_trips_and_validates():
    cfg = SourceConfig("x.jsonl", keep_if=["a"], drop_if=("b",), selection="llama")
    assert SourceConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="selection"):
        SourceConfig("x", selection="best")
    with pytest.raises(ValueError, match="format"):
        SourceConfig("x", format="csv")
