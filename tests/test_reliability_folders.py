"""Round three of reliability, damaged run folders: every record field and the summary's shape
checked by score, report, compare and load_run (a FaithprobeError naming file, line and field,
never an AttributeError, KeyError, TypeError or Arrow error); a summary that disagrees with its
records is said in a warning; a failed compare --out leaves nothing half-written."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

import faithprobe as fp
from faithprobe.cli import main
from faithprobe.errors import FaithprobeError
from faithprobe.io import write_json
from faithprobe.metrics import summarize
from faithprobe.records import DETAIL_TOGETHER, DETAIL_TYPES, FIELD_TYPES, Record, write_records

pd = pytest.importorskip("pandas")

HEADER = {"schema_version": 1, "status": "success",
          "config": {"name": "nb", "seed": 3, "metrics": {"n_boot": 20}}}


def _records() -> list[Record]:
    return [Record(trace_id=f"t{t}", checkpoint=label, intervention="none", n_steps=1,
                   answer="A", gold="A", pred="A", orig_pred="A", same_answer=True,
                   correct=True, pred_prob=0.9)
            for label in ("base", "sft") for t in range(3)]


@pytest.fixture
def run_dir(tmp_path):
    recs = _records()
    run = tmp_path / "run"
    run.mkdir()
    write_json(run / "header.json", HEADER)
    write_records(run / "records.jsonl", recs)
    write_json(run / "summary.json", summarize(recs, n_boot=20, seed=3))
    return run


def test_every_record_field_has_a_type():
    assert set(FIELD_TYPES) == {f.name for f in fields(Record)}
    for key, together in DETAIL_TOGETHER.items():
        assert key in DETAIL_TYPES and set(together) <= set(DETAIL_TYPES)


def _replace_line(run, n: int, **changes) -> None:
    lines = (run / "records.jsonl").read_text().splitlines()
    obj = json.loads(lines[n - 1])
    for key, value in changes.items():
        if value is KeyError:
            del obj[key]
        else:
            obj[key] = value
    lines[n - 1] = json.dumps(obj)
    (run / "records.jsonl").write_text("\n".join(lines) + "\n")


DAMAGE = [({"n_steps": "one"}, "[n_steps]"), ({"pred_prob": "0.9"}, "[pred_prob]"),
          ({"answer": 1}, "[answer]"), ({"correct": "true"}, "[correct]"),
          ({"status": KeyError}, "[status]"), ({"step": 0.5}, "[step]"),
          ({"detail": "x"}, "[detail]"), ({"model": ["organism:base"]}, "[model]"),
          ({"detail": {"followed": True, "kind": "tag", "mentioned": 1, "n_options": None,
                       "target": "3"}}, "[detail.mentioned]")]


@pytest.mark.parametrize(("change", "field"), DAMAGE)
def test_a_damaged_record_names_file_line_and_field(run_dir, capsys, change, field):
    _replace_line(run_dir, 4, **change)
    where = f"{run_dir / 'records.jsonl'}:4 {field}"
    for argv in (["score", str(run_dir)], ["report", str(run_dir)],
                 ["compare", str(run_dir), "--out", str(run_dir.parent / "cmp")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and where in err and "Traceback" not in err, err
    with pytest.raises(FaithprobeError, match=f"records.jsonl:4 {field.replace('[', '.')}"):
        fp.load_run(run_dir)
    assert not (run_dir.parent / "cmp").exists()


SUMMARIES = [("[checkpoints.base]", lambda s: s["checkpoints"].update(base=[1])),
             ("[checkpoints.base.accuracy.ci_low]",
              lambda s: s["checkpoints"]["base"]["accuracy"].update(ci_low="0.1")),
             ("[checkpoints.base.accuracy.n]",
              lambda s: s["checkpoints"]["base"]["accuracy"].update(n=True)),
             ("[comparisons[0].metric]", lambda s: s["comparisons"][0].update(metric=3)),
             ("[comparisons]", lambda s: s.update(comparisons=None)),
             ("[seed_question]", lambda s: s.update(seed_question=[1])),
             ("[schema_version]", lambda s: s.update(schema_version="1"))]


@pytest.mark.parametrize(("field", "damage"), SUMMARIES)
def test_a_summary_of_the_wrong_shape_names_its_field(run_dir, capsys, field, damage):
    summary = json.loads((run_dir / "summary.json").read_text())
    damage(summary)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    for argv in (["report", str(run_dir)],
                 ["compare", str(run_dir), "--out", str(run_dir.parent / "cmp")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{run_dir / 'summary.json'} {field}" in err and err.count("\n") == 1, err
    with pytest.raises(FaithprobeError, match="summary.json"):
        fp.load_run(run_dir)


def test_load_run_lets_no_other_error_through(run_dir, monkeypatch):
    import faithprobe.notebook as notebook

    for exc in (AttributeError("x"), KeyError("x"), TypeError("x"), ValueError("arrow")):
        def boom(*a, exc=exc, **k):
            raise exc

        monkeypatch.setattr(notebook, "_summary_frames", boom)
        with pytest.raises(FaithprobeError, match=f"damaged.*{type(exc).__name__}"):
            fp.load_run(run_dir)


def test_a_summary_that_disagrees_with_its_records_is_a_warning(run_dir, capsys):
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["checkpoints"]["ghost"] = summary["checkpoints"].pop("sft")
    (run_dir / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "warning:" in out and "'sft'" in out and "'ghost'" in out
    with pytest.warns(UserWarning) as said:
        fp.load_run(run_dir)
    assert sorted(str(w.message).split("checkpoint ")[1][:7] for w in said) == ["'ghost'",
                                                                                 "'sft' t"]


def test_a_failed_compare_leaves_nothing_and_a_retry_succeeds(run_dir, tmp_path, capsys,
                                                             monkeypatch):
    import faithprobe.report.document as document

    real = document.write_comparison

    def half(out, *a, **k):
        (out / "report.md").write_text("half")
        raise OSError(28, "No space left on device")

    cmp = tmp_path / "cmp"
    monkeypatch.setattr(document, "write_comparison", half)
    assert main(["compare", str(run_dir), "--out", str(cmp)]) == 2
    assert not cmp.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(document, "write_comparison", real)
    assert main(["compare", str(run_dir), "--out", str(cmp)]) == 0
    first = (cmp / "comparison.json").read_text()
    # --overwrite replaces it whole; a failed overwrite keeps the earlier comparison
    monkeypatch.setattr(document, "write_comparison", half)
    assert main(["compare", str(run_dir), "--out", str(cmp), "--overwrite"]) == 2
    assert (cmp / "comparison.json").read_text() == first
    assert (cmp / "report.md").read_text() != "half"


def test_error_lines_escape_control_characters(tmp_path, capsys):
    cfg = tmp_path / "evil.toml"
    cfg.write_text('[checkpoints]\nbase = "organism:base"\n[probe]\n"a\\u001b[2J\\u0007" = 1\n')
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\\x1b[2J\\x07" in err
    assert err.count("\n") == 1


def test_a_full_disk_names_the_file_being_written(tmp_path):
    import errno

    from faithprobe.io import atomic_write

    with pytest.raises(FaithprobeError, match=r"x\.json: cannot be written \(No space"):
        with atomic_write(tmp_path / "x.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stdout", ["closed", "full"])
def test_a_closed_or_full_stdout_keeps_the_work(run_dir, stdout):
    import os
    import subprocess
    import sys

    (run_dir / "summary.json").unlink()
    cmd = [sys.executable, "-m", "faithprobe", "score", str(run_dir)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if stdout == "closed":
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        proc.stdout.close()  # the reader is gone before anything is printed
        code, err = proc.wait(timeout=300), proc.stderr.read().decode()
        assert code == 0 and err == "", err
    else:
        with open("/dev/full", "w") as full:
            proc = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, env=env, text=True,
                                  timeout=300)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("faithprobe: error: <stdout>: No space left on device")
    assert (run_dir / "summary.json").is_file() and (run_dir / "report.html").is_file()
