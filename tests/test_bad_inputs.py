"""The bad-input corpus (tests/data/bad, cases.json): each input gives exit code 2 and one line
on stderr naming the input and the problem, no traceback, and leaves no half-written output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from faithprobe.cli import main

BAD = Path(__file__).parent / "data" / "bad"
CASES = json.loads((BAD / "cases.json").read_text())


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _argv(case: dict, tmp_path: Path) -> tuple[list[str], Path | None]:
    target = BAD / case["input"]
    out = tmp_path / "out"
    if "argv" in case:  # a command line of its own; {bad} is this folder
        return [a.replace("{bad}", str(BAD)) for a in case["argv"]], None
    if case["kind"] == "traces":
        cfg = tmp_path / "study.toml"
        cfg.write_text(f'[checkpoints]\nbase = "organism:base"\n[data]\nsource = "jsonl"\n'
                       f'path = {json.dumps(str(target))}\n')
        return ["run", str(cfg), "--out", str(out), "--quiet"], out
    if case["kind"] == "config":
        return ["run", str(target), "--out", str(out), "--quiet"], out
    if case["kind"] == "checkpoint":
        cfg = tmp_path / "study.toml"
        cfg.write_text(f"[checkpoints]\nbase = {json.dumps(str(target))}\n")
        return ["run", str(cfg), "--out", str(out), "--quiet"], out
    if case["kind"] == "compare":
        return ["compare", str(target), "--out", str(out)], out
    return [case["kind"], str(target)], None


def test_corpus_is_large_enough():
    assert len(CASES) >= 143  # 38 in round one, 30 and more in round two, 45 in round three
    assert {c["kind"] for c in CASES} >= {"traces", "config", "checkpoint", "score", "report",
                                         "compare"}


@pytest.mark.parametrize("case", CASES, ids=[c["input"] for c in CASES])
def test_bad_input_exits_2_with_one_line(case, tmp_path, capsys):
    argv, out = _argv(case, tmp_path)
    before = _snapshot(BAD)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("faithprobe: error: "), err
    assert case["expect"] in err, err
    assert Path(case["input"]).parts[0] in err, err  # names the input
    assert "Traceback" not in err
    assert _snapshot(BAD) == before  # nothing written next to the input
    if out is not None:
        assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("name", ["broken_json.jsonl", "config_unknown_key.toml",
                                  "run_torn_records"])
def test_real_process_prints_no_traceback(name, tmp_path):
    case = next(c for c in CASES if c["input"] == name)
    argv, _ = _argv(case, tmp_path)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "faithprobe", *argv], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and case["expect"] in proc.stderr
    assert "Traceback" not in proc.stderr
