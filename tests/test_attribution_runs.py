"""Attribution patching in runs: records, the method option, and the agreement metric."""

from __future__ import annotations

import math

import numpy as np
import pytest

from faithprobe.cli import main
from faithprobe.errors import FaithprobeError
from faithprobe.metrics import compute_metrics
from faithprobe.metrics.methods import agreement_features, rank, spearman
from faithprobe.models.checkpoints import load_checkpoint
from faithprobe.organisms.task import generate as organism_problems
from faithprobe.records import Record, read_records
from faithprobe.report.absence import NOT_MEASURED, UNDEFINED, absences
from faithprobe.run.config import validate_config
from faithprobe.run.folder import run_study
from faithprobe.stages.patching import patch_trace

pytestmark = pytest.mark.usefixtures("one_thread")


def _cell(r: Record) -> tuple:
    return (r.step, r.site, r.detail["variant"]["direction"], r.detail["variant"]["head"])


@pytest.fixture(scope="module")
def base_and_trace():
    return load_checkpoint("organism:base"), organism_problems("id", 1, 1)[0]


def test_patch_trace_method_picks_the_records(base_and_trace):
    ckpt, trace = base_and_trace
    kw = dict(corrupter="organism", knockout=False)
    exact = patch_trace(ckpt, "base", trace, ckpt.template, method="exact", **kw)
    attr = patch_trace(ckpt, "base", trace, ckpt.template, method="attribution", **kw)
    both = patch_trace(ckpt, "base", trace, ckpt.template, method="both", **kw)
    assert {r.intervention for r in exact} == {"patch"}
    assert {r.intervention for r in attr} == {"attribution"}
    assert [r for r in both if r.intervention == "patch"] == exact
    assert [r for r in both if r.intervention == "attribution"] == attr
    assert sorted(map(_cell, exact)) == sorted(map(_cell, attr))  # the same grid, cell by cell
    assert all(r.detail["method"] == "attribution" and math.isfinite(r.value) for r in attr)
    # the estimate is an estimate: close to the exact grid in rank, not equal to it
    values = {_cell(r): r.value for r in exact}
    assert any(abs(values[_cell(r)] - r.value) > 1e-6 for r in attr)
    with pytest.raises(FaithprobeError, match="patching.method"):
        patch_trace(ckpt, "base", trace, ckpt.template, method="fast", **kw)


def test_rank_and_spearman():
    assert list(rank(np.array([3.0, 1.0, 2.0, 1.0]))) == [4.0, 1.5, 3.0, 1.5]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 400]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2], [1, 2]) is None  # too few cells
    assert spearman([1, 2, 3], [5, 5, 5]) is None  # no spread


def _rec(kind: str, step: int, site: str, value: float) -> Record:
    return Record("t", "c", kind, step=step, n_steps=3, site=site, value=value,
                  detail={"variant": {"direction": "noising", "head": None, "kind": "step"}})


def test_agreement_only_where_both_ran_and_over_shared_cells():
    exact = [_rec("patch", i, f"blocks.{j}.hook_resid_pre", float(i + j))
             for i in range(3) for j in range(2)]
    assert agreement_features(exact, "keep") == {}  # exact only: nothing to agree with
    same = [_rec("attribution", r.step, r.site, 2 * r.value + 1) for r in exact]
    assert agreement_features(exact + same, "keep") == {"sum": pytest.approx(1.0), "count": 1.0}
    # a cell only one method measured is left out; the rest are reversed
    reversed_ = [_rec("attribution", r.step, r.site, -r.value) for r in exact[:4]]
    extra = [_rec("attribution", 9, "blocks.0.hook_resid_pre", 100.0)]
    f = agreement_features(exact + reversed_ + extra, "keep")
    assert f["sum"] == pytest.approx(-1.0)


def _run(tmp_path, method: str):
    cfg = validate_config({
        "name": "attribution", "seed": 0,
        "checkpoints": {"base": "organism:base", "sft": "organism:sft"},
        "data": {"source": "organism", "split": "id", "count": 3, "seed": 1},
        "probe": {"interventions": ["truncate"], "corrupt": {"corrupter": "organism"}},
        "infogain": {"enabled": False}, "ki": {"enabled": False},
        "patching": {"max_traces": 2, "method": method, "knockout": False},
        "metrics": {"n_boot": 100}})
    out = run_study(cfg, tmp_path / method, quiet=True)
    return read_records(out / "records.jsonl")


def test_runs_write_attribution_records_and_agreement(tmp_path):
    records = _run(tmp_path, "both")
    attr = [r for r in records if r.intervention == "attribution"]
    assert {r.trace_id for r in attr} == {r.trace_id for r in records
                                          if r.intervention == "patch"}
    assert len({r.trace_id for r in attr}) == 2  # patching.max_traces
    est = compute_metrics(records, n_boot=100)
    for label in ("base", "sft"):
        e = est[label]["attribution_agreement"]
        assert e.n == 2 and -1.0 <= e.ci_low <= e.value <= e.ci_high <= 1.0


def test_exact_only_runs_do_not_measure_agreement(tmp_path):
    records = _run(tmp_path, "exact")
    assert not any(r.intervention == "attribution" for r in records)
    summary = {"checkpoints": {k: {m: e.to_json() for m, e in v.items()}
                               for k, v in compute_metrics(records, n_boot=50).items()}}
    gone = absences(records, summary)["base"]["attribution_agreement"]
    assert gone.kind == NOT_MEASURED and "[patching] method" in gone.reason
    # attribution records without exact ones: measured, but the agreement is undefined
    only = [r for r in _run(tmp_path, "attribution") if r.checkpoint == "base"]
    summary = {"checkpoints": {"base": {}}}
    assert absences(only, summary)["base"]["attribution_agreement"].kind == UNDEFINED


def test_bad_patching_method_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('[checkpoints]\nbase = "organism:base"\n[patching]\nmethod = "fast"\n',
                    encoding="utf-8")
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "[patching.method]" in err and err.count("\n") == 1
