"""faithprobe.load_run: a run folder as pandas DataFrames."""

from __future__ import annotations

import subprocess
import sys

import pytest

import faithprobe as fp
from faithprobe.errors import FaithprobeError
from faithprobe.io import write_json
from faithprobe.metrics import METRICS, summarize
from faithprobe.notebook import RunFrames
from faithprobe.records import Record, write_records

pd = pytest.importorskip("pandas")

HEADER = {"schema_version": 1, "status": "success",
          "config": {"name": "nb", "seed": 3, "metrics": {"n_boot": 40}}}


def records() -> list[Record]:
    out = []
    for label, right in (("base", (True, True, False, True)), ("sft", (True, True, True, True))):
        for t, ok in enumerate(right):
            tid = f"t{t}"
            out.append(Record(trace_id=tid, checkpoint=label, intervention="none", n_steps=2,
                              answer="A", gold="A", pred="A" if ok else "B", orig_pred="A",
                              same_answer=True, correct=ok, pred_prob=0.9))
            for i in range(2):
                out.append(Record(trace_id=tid, checkpoint=label, intervention="corrupt",
                                  step=i, n_steps=2, same_answer=label == "sft" or i == 1,
                                  kl=0.5 if label == "base" else 0.0,
                                  detail={"continuation": "keep"}))
                out.append(Record(trace_id=tid, checkpoint=label, intervention="patch", step=i,
                                  n_steps=2, site="blocks.0.hook_resid_pre",
                                  value=0.8 if label == "base" else None,
                                  status="ok" if label == "base" else "skipped",
                                  reason=None if label == "base" else f"margin {0.1 * t:.1f}"))
    return out


@pytest.fixture
def run_dir(tmp_path):
    recs = records()
    write_json(tmp_path / "header.json", HEADER)
    write_records(tmp_path / "records.jsonl", recs)
    write_json(tmp_path / "summary.json", summarize(recs, n_boot=40, seed=3))
    return tmp_path


def test_load_run_returns_dataframes(run_dir) -> None:
    run = fp.load_run(run_dir)
    assert isinstance(run, RunFrames) and run.header["config"]["name"] == "nb"
    recs = run.records
    assert len(recs) == len(records()) and list(recs.columns)[:3] == ["trace_id", "checkpoint",
                                                                      "intervention"]
    assert str(recs["step"].dtype) == "Int64" and str(recs["correct"].dtype) == "boolean"
    assert recs["step"].isna().sum() == 8  # the unedited records
    assert recs.query("intervention == 'none' and checkpoint == 'base'")["correct"].sum() == 3
    assert recs.loc[recs.intervention == "corrupt", "detail"].iloc[0] == {"continuation": "keep"}

    summary = run.summary
    assert len(summary) == 2 * len(METRICS)
    acc = summary.set_index(["checkpoint", "metric"]).loc[("base", "accuracy")]
    assert acc["value"] == pytest.approx(0.75) and acc["status"] == "ok" and acc["n"] == 4
    assert acc["label"] == "accuracy" and acc["unit"] == "points"
    assert acc["ci_low"] <= 0.75 <= acc["ci_high"]
    # a metric never measured and one measured but undefined are told apart, with the reason
    status = summary.set_index(["checkpoint", "metric"])
    assert status.loc[("base", "ki"), "status"] == "not measured"
    assert status.loc[("sft", "patching_effect"), "status"] == "undefined"
    assert status.loc[("sft", "patching_effect"), "reason"] == (
        "all 8 patch records skipped: margin 0.0 to 0.3")
    assert pd.isna(status.loc[("sft", "patching_effect"), "value"])

    comp = run.comparisons.set_index("metric")
    assert comp.loc["accuracy", "delta"] == pytest.approx(0.25)
    assert comp.loc["accuracy", "mmd"] == pytest.approx(0.05)
    assert comp.loc["step_flip_rate", "reading"] == "clear decrease"
    assert "patching_effect" not in comp.index


def test_load_run_computes_a_missing_summary(run_dir) -> None:
    written = fp.load_run(run_dir).summary
    (run_dir / "summary.json").unlink()
    computed = fp.load_run(run_dir).summary
    pd.testing.assert_frame_equal(written, computed)


def test_load_run_without_pandas_is_one_clear_error(run_dir, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(FaithprobeError) as err:
        fp.load_run(run_dir)
    assert str(err.value) == ("load_run needs pandas, which is not installed: "
                              "pip install 'faithprobe[pandas]'")


def test_load_run_of_a_damaged_folder(tmp_path) -> None:
    with pytest.raises(FaithprobeError, match="does not exist"):
        fp.load_run(tmp_path / "nope")
    write_json(tmp_path / "header.json", HEADER)
    write_records(tmp_path / "records.jsonl", records())
    write_json(tmp_path / "summary.json", {"comparisons": []})
    with pytest.raises(FaithprobeError, match="not a faithprobe summary"):
        fp.load_run(tmp_path)


def test_pandas_is_imported_only_when_load_run_is_called() -> None:
    code = ("import sys, faithprobe; f = faithprobe.load_run; "
            "print('load_run' in faithprobe.__all__, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "False"]
