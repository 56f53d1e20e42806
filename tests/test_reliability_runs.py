"""Round two of reliability, run folders: one writer at a time, statuses started / success /
error / cancelled, --resume after a kill at any point (mid-report too), and compare, score and
report never writing into an input run unless asked to regenerate it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from faithprobe.cli import main
from faithprobe.data.traces import Trace, write_traces
from faithprobe.io import lock_folder

DIGITS = tuple("0123456789")


def _write_study(tmp_path: Path, tiny_folder: Path, n: int, name: str = "study",
                 prefix: str = "t") -> Path:
    write_traces(tmp_path / f"{name}.jsonl",
                 [Trace(f"{prefix}{i:02d}", f"a={i % 10},b=a+1;b?", (f"a={i % 10}",
                        f"b={(i + 1) % 10}"), str((i + 1) % 10), options=DIGITS,
                        gold=str((i + 1) % 10)) for i in range(n)])
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(f'seed = 3\n[checkpoints]\nbase = "{tiny_folder}"\nsft = "{tiny_folder}"\n'
                   f'[data]\nsource = "jsonl"\npath = "{name}.jsonl"\n'
                   '[probe]\ninterventions = ["truncate", "corrupt"]\nmax_new_tokens = 4\n'
                   '[patching]\nenabled = false\n[metrics]\nn_boot = 20\n', encoding="utf-8")
    return cfg


def _spawn(args: list[str], code: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "faithprobe",
                                                            *args]
    # a shell starts background jobs with SIGINT ignored and children inherit it (Python then
    # leaves it ignored): give the run the default disposition, as a foreground command has
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(path: Path, lines: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.is_file() and len(path.read_text().splitlines()) >= lines:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached {lines} lines (rc {proc.poll()})")


def _header(run: Path) -> dict:
    return json.loads((run / "header.json").read_text())


def _lines(path: Path) -> list[bytes]:
    return sorted(path.read_bytes().splitlines())


def test_a_second_writer_is_refused_while_the_folder_is_locked(tmp_path, tiny_folder, capsys):
    cfg = _write_study(tmp_path, tiny_folder, 2)
    out = tmp_path / "run"
    with lock_folder(out):  # another process holds it (flock: per open file, not per process)
        assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "another faithprobe process is writing" in err
        assert list(out.iterdir()) == []
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    with lock_folder(out):
        for argv in (["score", str(out)], ["report", str(out)]):
            assert main(argv) == 2
            assert "another faithprobe process is writing" in capsys.readouterr().err


def test_two_processes_into_one_folder_write_every_record_once(tmp_path, tiny_folder):
    cfg = _write_study(tmp_path, tiny_folder, 6)
    out = tmp_path / "run"
    procs = [_spawn(["run", str(cfg), "--out", str(out), "--quiet"]) for _ in range(2)]
    codes = sorted(p.wait(timeout=600) for p in procs)
    errs = [p.stderr.read() for p in procs]
    assert codes == [0, 2], errs  # started together: one runs, the other is refused
    refusal = next(e for e in errs if e)
    assert refusal.count("\n") == 1 and ("another faithprobe process is writing" in refusal
                                         or "exists and is not empty" in refusal), refusal
    counts = Counter((out / "records.jsonl").read_bytes().splitlines())
    assert counts and max(counts.values()) == 1
    assert len((out / "progress.jsonl").read_text().splitlines()) == 12  # 6 traces x 2 labels


@pytest.mark.parametrize(("sig", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"),
                                                   (signal.SIGINT, 130, "SIGINT")])
def test_a_signal_records_cancelled_and_resume_completes(tmp_path, tiny_folder, sig, code, name):
    cfg = _write_study(tmp_path, tiny_folder, 10)
    out = tmp_path / "run"
    proc = _spawn(["run", str(cfg), "--out", str(out), "--quiet"])
    _wait_for(out / "progress.jsonl", 2, proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code
    err = proc.stderr.read()
    assert err == f"faithprobe: cancelled by {name}; complete the run with --resume\n"
    header = _header(out)
    assert header["status"] == "cancelled" and header["error"] == f"cancelled by {name}"
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--resume"]) == 0
    whole = tmp_path / "whole"
    assert main(["run", str(cfg), "--out", str(whole), "--quiet"]) == 0
    assert _lines(out / "records.jsonl") == _lines(whole / "records.jsonl")
    assert _header(out)["status"] == "success"


KILL_MID_REPORT = textwrap.dedent("""
    import os, signal, sys
    import faithprobe.report.document as document
    from faithprobe.cli import main

    def killed(*a, **k):  # the kill lands while the report is being written
        os.kill(os.getpid(), signal.SIGKILL)

    document.write_report = killed
    sys.exit(main(sys.argv[1:]))
""")


def test_a_kill_mid_report_is_resumed_to_success(tmp_path, tiny_folder):
    cfg = _write_study(tmp_path, tiny_folder, 3)
    out = tmp_path / "run"
    proc = _spawn(["run", str(cfg), "--out", str(out), "--quiet"], code=KILL_MID_REPORT)
    assert proc.wait(timeout=600) == -signal.SIGKILL
    assert _header(out)["status"] == "started"  # never success without its report
    assert (out / "summary.json").is_file() and not (out / "report.html").exists()
    records = _lines(out / "records.jsonl")
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--resume"]) == 0
    assert _header(out)["status"] == "success"
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert _lines(out / "records.jsonl") == records


def test_resume_completes_a_success_whose_report_is_missing(tmp_path, tiny_folder, capsys):
    # a folder written before this round: success first, then killed before its report
    cfg = _write_study(tmp_path, tiny_folder, 2)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--resume"]) == 2
    assert "run already finished" in capsys.readouterr().err
    (out / "report.html").unlink()
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--resume"]) == 0
    assert (out / "report.html").is_file() and _header(out)["status"] == "success"


def test_resume_of_a_run_killed_before_its_header(tmp_path, tiny_folder):
    cfg = _write_study(tmp_path, tiny_folder, 2)
    out = tmp_path / "run"
    out.mkdir()
    (out / ".header.json.x1y2.tmp").write_text("{")  # a writer killed mid-header
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--resume"]) == 0
    assert _header(out)["status"] == "success"
    assert not list(out.glob(".*.tmp"))


def test_score_compare_and_report_never_write_into_an_input(tmp_path, tiny_folder, capsys):
    cfg = _write_study(tmp_path, tiny_folder, 2)
    a = tmp_path / "a"
    assert main(["run", str(cfg), "--out", str(a), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in a.iterdir() if p.is_file()}
    refusals = [(["score", str(a), str(a), "--out", str(a)], "is one of the runs being scored"),
                (["score", str(a), "--out", str(a / "merged")], "inside one"),
                (["compare", str(a), "--out", str(a)], "is one of the runs being compared"),
                (["compare", str(a), "--out", str(a / "cmp")], "inside one")]
    for argv, fragment in refusals:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and fragment in err and "[--out]" in err, argv
    assert {p.name: p.read_bytes() for p in a.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in a.iterdir() if p.is_dir()) == ["plots"]
    # asked to regenerate it in place: allowed, and the records are untouched
    assert main(["score", str(a)]) == 0 and main(["report", str(a)]) == 0
    assert (a / "records.jsonl").read_bytes() == before["records.jsonl"]


def test_compare_stores_its_warnings(tmp_path, tiny_folder, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["run", str(_write_study(tmp_path, tiny_folder, 2)), "--out", str(a),
                 "--quiet"]) == 0
    other = _write_study(tmp_path, tiny_folder, 2, name="other", prefix="u")
    assert main(["run", str(other), "--out", str(b), "--quiet"]) == 0
    capsys.readouterr()
    cmp = tmp_path / "cmp"
    assert main(["compare", str(a), str(a), str(b), "--out", str(cmp)]) == 0
    out = capsys.readouterr().out.splitlines()
    stored = json.loads((cmp / "comparison.json").read_text())
    assert stored["runs"] == [str(a), str(a), str(b)]
    assert stored["warnings"] == {
        "self_compare": {"count": 1, "pairs": [f"{a} vs {a}"]},
        "no_shared_trace": {"count": 2, "pairs": [f"{a} vs {b}", f"{a} vs {b}"]}}
    assert f"warning: 1 x self_compare (see {cmp / 'comparison.json'})" in out
    assert f"warning: 2 x no_shared_trace (see {cmp / 'comparison.json'})" in out
    assert out[-1].endswith("report.html")
    # a clean comparison stores no warning, and it is recognised as a comparison to overwrite
    assert main(["compare", str(a), str(b), "--out", str(cmp)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    clean = tmp_path / "clean"
    c = tmp_path / "c"
    again = _write_study(tmp_path, tiny_folder, 2, name="again")
    again.write_text(again.read_text().replace("seed = 3", "seed = 4"))  # other records
    assert main(["run", str(again), "--out", str(c), "--quiet"]) == 0
    assert main(["compare", str(a), str(c), "--out", str(clean)]) == 0
    assert json.loads((clean / "comparison.json").read_text())["warnings"] == {}
