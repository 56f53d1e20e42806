from __future__ import annotations

import json

import pytest

from faithprobe.data.traces import Trace, read_traces, split_steps, trace_from_text, write_traces
from faithprobe.errors import FaithprobeError


def _trace(**kw) -> dict:
    base = {"id": "t1", "question": "What is 2+3?", "steps": ["2+3=5."], "answer": "5"}
    base.update(kw)
    return base


def test_jsonl_round_trip(tmp_path):
    traces = [
        Trace("a", "Q?", ("s1", "s2"), "4", options=("3", "4"), gold="4",
              step_truth=(True, False), paraphrases=("p1", "p2"), metadata={"k": [1, 2]}),
        Trace("b", "Q2?", (), "x"),
    ]
    path = tmp_path / "t.jsonl"
    write_traces(path, traces)
    assert read_traces(path) == traces
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{not json", "invalid JSON"),
        (json.dumps(_trace(steps="one step")), "[steps]"),
        (json.dumps(_trace(answer=5)), "[answer]"),
        (json.dumps({k: v for k, v in _trace().items() if k != "answer"}), "[answer]"),
        (json.dumps(_trace(steps=["ok", "  "])), "[steps[1]]"),
        (json.dumps(_trace(extra=1)), "[extra]"),
        (json.dumps(_trace(step_truth=[True, True])), "[step_truth]"),
        (json.dumps(_trace(options=["1", "2"])), "not one of the options"),
        ('{"id": "t", "question": "q", "steps": [], "answer": NaN}', "NaN"),
        (json.dumps(_trace(question="\ud800")), "surrogate"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, line, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_trace(id="ok")) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(FaithprobeError) as err:
        read_traces(path)
    msg = str(err.value)
    assert f"{path}:2" in msg and fragment in msg and "\n" not in msg


def test_duplicate_ids_and_empty_file(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text((json.dumps(_trace()) + "\n") * 2, encoding="utf-8")
    with pytest.raises(FaithprobeError, match="duplicate trace id"):
        read_traces(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(FaithprobeError, match="holds no traces"):
        read_traces(empty)
    with pytest.raises(FaithprobeError, match="does not exist"):
        read_traces(tmp_path / "missing.jsonl")


def test_sentences_keep_decimals_money_and_abbreviations():
    text = "Dr. Smith paid $3.50 for 2.5 kg, i.e. a lot. Then he left! Did he? Yes."
    steps = split_steps(text, "sentences")
    assert [s.text for s in steps] == [
        "Dr. Smith paid $3.50 for 2.5 kg, i.e. a lot.",
        "Then he left!",
        "Did he?",
        "Yes.",
    ]
    for s in steps:
        assert text[s.start : s.end] == s.text


def test_markers_lines_and_auto():
    text = "Step 1: add 2 and 3.\nStep 2: that is 5. So 5.\n"
    assert [s.text for s in split_steps(text, "markers")] == [
        "Step 1: add 2 and 3.", "Step 2: that is 5. So 5."]
    assert split_steps(text) == split_steps(text, "markers")
    lines = "a=3\n\n  b=7  \nc=4"
    got = split_steps(lines)
    assert [s.text for s in got] == ["a=3", "b=7", "c=4"]
    assert [lines[s.start : s.end] for s in got] == ["a=3", "b=7", "c=4"]
    assert [s.text for s in split_steps("One. Two.")] == ["One.", "Two."]


def test_trace_from_text_keeps_offsets():
    t = trace_from_text("x", "Q?", "First 1.5 apples. Then 2.", "2")
    assert t.steps == ("First 1.5 apples.", "Then 2.")
    assert t.metadata["offsets"] == [[0, 17], [18, 25]]
