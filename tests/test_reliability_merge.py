"""Merges that check their shards, and scoring that keeps what a folder is: ``score SHARD...
--out`` refuses shards that do not make one study (naming the shard), merges an incomplete set
only with ``--partial`` (and says so), writes its folder whole or not at all; ``score SHARD``
in place keeps the shard a shard that ``--resume`` still completes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from faithprobe.cli import main
from faithprobe.data.traces import Trace, write_traces

DIGITS = tuple("0123456789")


@pytest.fixture
def study(tmp_path, tiny_folder):
    write_traces(tmp_path / "traces.jsonl",
                 [Trace(f"t{i}", f"a={i},b=a+1;b?", (f"a={i}", f"b={(i + 1) % 10}"),
                        str((i + 1) % 10), options=DIGITS, gold=str((i + 1) % 10))
                  for i in range(4)])
    cfg = tmp_path / "study.toml"
    cfg.write_text(f'seed = 1\n[checkpoints]\nbase = "{tiny_folder}"\nsft = "{tiny_folder}"\n'
                   '[data]\nsource = "jsonl"\npath = "traces.jsonl"\n'
                   '[probe]\ninterventions = ["truncate"]\nmax_new_tokens = 4\n'
                   '[patching]\nenabled = false\n[metrics]\nn_boot = 20\n', encoding="utf-8")
    return cfg


def _shard(study: Path, tmp_path: Path, k: int, n: int) -> Path:
    out = tmp_path / f"s{k}of{n}"
    assert main(["run", str(study), "--out", str(out), "--quiet", "--shard", f"{k}/{n}"]) == 0
    return out


@pytest.fixture
def shards(study, tmp_path):
    return [_shard(study, tmp_path, k, 2) for k in (1, 2)]


def _edit_header(run: Path, edit) -> None:
    header = json.loads((run / "header.json").read_text())
    edit(header)
    (run / "header.json").write_text(json.dumps(header))


def _refused(argv: list[str], capsys, out: Path) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("faithprobe: error: ") and "Traceback" not in err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return err


def _cancelled(h):
    h["status"] = "cancelled"


def _other_n(h):
    h["shard"] = [2, 3]


def _other_seed(h):
    h["config"]["seed"] = 9


def _other_traces(h):
    h["inputs"]["traces"]["file_sha256"] = "0" * 64


def _other_weights(h):
    h["inputs"]["checkpoints"]["sft"]["files"]["model.safetensors"] = "0" * 64


@pytest.mark.parametrize(("edit", "fragment"), [
    (_cancelled, "is not a finished run (status 'cancelled')"),
    (_other_n, "is shard 2 of 3, but"),
    (_other_seed, "config differs"),
    (_other_traces, "[inputs.traces.file_sha256]: read other traces"),
    (_other_weights, "[inputs.checkpoints.sft]: probed another checkpoint"),
])
def test_a_shard_that_is_not_of_the_study_is_refused_by_name(shards, tmp_path, capsys, edit,
                                                             fragment):
    _edit_header(shards[1], edit)
    out = tmp_path / "merged"
    err = _refused(["score", *map(str, shards), "--out", str(out)], capsys, out)
    assert f"faithprobe: error: {shards[1]}" in err and fragment in err, err


def test_a_shard_given_twice_or_missing_is_refused(shards, tmp_path, capsys):
    out = tmp_path / "merged"
    copy = tmp_path / "copy"
    shutil.copytree(shards[0], copy)
    err = _refused(["score", str(shards[0]), str(copy), "--out", str(out)], capsys, out)
    assert f"{copy}: is shard 1 of 2, given twice (also {shards[0]})" in err
    err = _refused(["score", str(shards[1]), "--out", str(out)], capsys, out)
    assert "shard 1 of 2 is missing" in err and "--partial" in err and str(shards[1]) in err
    err = _refused(["score", str(shards[0]), str(tmp_path / "s1of2"), "--out", str(out)],
                   capsys, out)
    assert "given twice" in err


def test_partial_merges_an_incomplete_set_and_says_so(study, tmp_path):
    parts = [_shard(study, tmp_path, k, 4) for k in (1, 3)]
    out = tmp_path / "merged"
    assert main(["score", *map(str, parts), "--out", str(out), "--partial"]) == 0
    header = json.loads((out / "header.json").read_text())
    assert header["partial"] == "partial: shards 1, 3 of 4" and header["shard"] is None
    assert "partial: shards 1, 3 of 4" in (out / "report.md").read_text()
    assert "partial: shards 1, 3 of 4" in (out / "report.html").read_text()
    ids = {json.loads(x)["trace_id"] for x in (out / "records.jsonl").read_text().splitlines()}
    assert ids == {"t0", "t2"}
    # a complete set merged with --partial is not partial
    whole = tmp_path / "whole"
    parts += [_shard(study, tmp_path, k, 4) for k in (2, 4)]
    assert main(["score", *map(str, parts), "--out", str(whole), "--partial"]) == 0
    assert "partial" not in json.loads((whole / "header.json").read_text())


def test_scoring_a_shard_in_place_keeps_it_a_shard(shards, study):
    s1 = shards[0]
    assert main(["score", str(s1)]) == 0
    header = json.loads((s1 / "header.json").read_text())
    assert header["shard"] == [1, 2] and "merged_from" not in header and header["rescored"]
    records = sorted((s1 / "records.jsonl").read_text().splitlines())
    header["status"] = "started"  # as if killed before its end
    (s1 / "header.json").write_text(json.dumps(header))
    (s1 / "report.html").unlink()
    assert main(["run", str(study), "--out", str(s1), "--quiet", "--resume", "--shard",
                 "1/2"]) == 0
    assert sorted((s1 / "records.jsonl").read_text().splitlines()) == records
    assert json.loads((s1 / "header.json").read_text())["shard"] == [1, 2]


def test_a_failed_merge_leaves_nothing_and_a_retry_succeeds(shards, tmp_path, capsys,
                                                            monkeypatch):
    import faithprobe.run.merge as merge

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    out = tmp_path / "merged"
    monkeypatch.setattr(merge, "finish_run", boom)
    assert main(["score", *map(str, shards), "--out", str(out)]) == 2
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    monkeypatch.undo()
    assert main(["score", *map(str, shards), "--out", str(out)]) == 0
    assert (out / "report.html").is_file() and (out / "summary.json").is_file()
