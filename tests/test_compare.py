"""Comparisons across run folders: checkpoints of different runs paired by trace id."""

from __future__ import annotations

import json

import pytest

from faithprobe.cli import main
from faithprobe.metrics import summarize
from faithprobe.metrics.crossrun import cross_run_pairs, cross_run_summary
from faithprobe.records import Record, write_records
from faithprobe.report.document import write_comparison


def _none(tid: str, label: str, correct: bool) -> Record:
    return Record(tid, label, "none", n_steps=2, answer="1", gold="1",
                  pred="1" if correct else "2", orig_pred="1" if correct else "2",
                  same_answer=True, correct=correct, pred_prob=0.9)


def _run(label: str, correct: list[bool], ids: list[str]) -> list[Record]:
    return [_none(t, label, c) for t, c in zip(ids, correct)]


IDS = [f"t{i}" for i in range(10)]


def test_pairs_every_checkpoint_of_a_run_with_every_one_of_later_runs_sharing_a_trace():
    a = _run("base", [True] * 10, IDS) + _run("sft", [True] * 10, IDS)
    b = _run("sft2", [False] * 10, IDS)
    c = _run("other", [True] * 3, ["x1", "x2", "x3"])  # no trace in common
    assert cross_run_pairs([("A", a), ("B", b), ("C", c)]) == [("A/base", "B/sft2"),
                                                               ("A/sft", "B/sft2")]


def test_cross_run_delta_is_the_paired_difference_over_shared_traces():
    # A/base right on t0..t9; B/ft right on t0..t3 only, and has two traces A lacks
    a = _run("base", [True] * 10, IDS)
    b = _run("ft", [True] * 4 + [False] * 6, IDS) + _run("ft", [True, True], ["y1", "y2"])
    s = cross_run_summary([("A", a), ("B", b)], n_boot=200, seed=0)
    (c,) = [c for c in s["comparisons"] if c["metric"] == "accuracy"]
    assert (c["a"], c["b"], c["n"]) == ("A/base", "B/ft", 10)
    assert c["delta"] == pytest.approx(0.4 - 1.0)  # by hand, over the 10 shared traces
    assert c["ci_high"] < 0


def test_compare_command_reports_across_runs_and_its_warnings(tmp_path, capsys):
    dirs = []
    for name, recs in (("A", _run("base", [True] * 10, IDS)),
                       ("B", _run("ft", [False] * 10, IDS)),
                       ("C", _run("z", [True] * 3, ["x1", "x2", "x3"]))):
        d = tmp_path / name
        d.mkdir()
        write_records(d / "records.jsonl", recs)
        header = {"schema_version": 1, "status": "success", "labels": {},
                  "config": {"seed": 0, "metrics": {"n_boot": 50}}, "warnings": {}}
        (d / "header.json").write_text(json.dumps(header))
        (d / "summary.json").write_text(json.dumps(summarize(recs, n_boot=50)))
        dirs.append(str(d))
    out = tmp_path / "cmp"
    assert main(["compare", *dirs, "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "## Comparisons across runs" in report
    assert "across runs: B/ft vs A/base: B/ft is less accurate than A/base" in report
    assert "| B/ft vs A/base | accuracy | 100% -> 0% | -100.0 points" in report
    assert "## Warnings" in report and "no_shared_trace (2)" in report
    assert "warnings | none" in report  # empty warnings read "none", not "{}"


def test_write_comparison_without_shared_traces_says_so(tmp_path):
    a = _run("base", [True] * 3, IDS[:3])
    b = _run("ft", [True] * 3, ["q1", "q2", "q3"])
    runs = [(n, r, summarize(r, n_boot=20), {}) for n, r in (("A", a), ("B", b))]
    write_comparison(tmp_path / "cmp", runs)
    assert "nothing across runs can be paired" in (tmp_path / "cmp" / "report.md").read_text()


def test_score_pair_in_place_says_what_it_replaced(tmp_path, capsys):
    d = tmp_path / "run"
    d.mkdir()
    recs = _run("base", [True] * 4, IDS[:4]) + _run("ft", [False] * 4, IDS[:4])
    write_records(d / "records.jsonl", recs)
    header = {"schema_version": 1, "status": "success", "labels": {},
              "config": {"seed": 0, "checkpoints": {"base": "x", "ft": "y"},
                         "metrics": {"n_boot": 20, "pairs": [["base", "ft"]]}}}
    (d / "header.json").write_text(json.dumps(header))
    assert main(["score", str(d), "--pair", "ft", "base"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"rescored {d} in place: comparisons base vs ft replace ft vs base"
    assert json.loads((d / "header.json").read_text())["config"]["metrics"]["pairs"] == [
        ["ft", "base"]]


def test_counts_agree_in_number():
    from faithprobe.report.readings import count_text

    assert count_text(1, "trace") == "1 trace" and count_text(0, "trace") == "0 traces"
    assert count_text(12, "step") == "12 steps"
