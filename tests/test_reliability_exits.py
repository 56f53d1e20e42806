"""Round two of reliability, exits: one exit path. Bad input is exit code 2 and one line; a bug
is exit code 1, one line and a log file with the traceback; no traceback and no library warning
on stderr unless --debug."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from faithprobe.cli import main
from faithprobe.data.traces import Trace, write_traces


@pytest.fixture
def study(tmp_path, tiny_folder, monkeypatch):
    monkeypatch.setenv("FAITHPROBE_CACHE", str(tmp_path / "cache"))
    write_traces(tmp_path / "traces.jsonl",
                 [Trace(f"t{i}", f"a={i};a?", (f"a={i}",), str(i)) for i in range(2)])
    cfg = tmp_path / "study.toml"
    cfg.write_text(f'[checkpoints]\nbase = "{tiny_folder}"\n[data]\nsource = "jsonl"\n'
                   'path = "traces.jsonl"\n[probe]\ninterventions = ["truncate"]\n'
                   'max_new_tokens = 2\n[infogain]\nenabled = false\n[patching]\n'
                   'enabled = false\n[metrics]\nn_boot = 10\n', encoding="utf-8")
    return cfg


def _boom(exc: BaseException):
    def probe_one(*a, **k):
        raise exc
    return probe_one


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), MemoryError(),
                                 RecursionError("maximum recursion depth exceeded")])
def test_a_bug_is_exit_1_one_line_and_a_log(study, tmp_path, capsys, monkeypatch, exc):
    import faithprobe.stages.probe

    monkeypatch.setattr(faithprobe.stages.probe, "_probe_one", _boom(exc))
    out = tmp_path / "run"
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"faithprobe: internal error: {type(exc).__name__}")
    log = Path(err.split("details in ")[1].split(";")[0])
    assert log.parent == tmp_path / "cache" / "logs"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and type(exc).__name__ in text
    assert "'run'" in text  # the argv
    header = json.loads((out / "header.json").read_text())
    assert header["status"] == "error" and header["error"].startswith(type(exc).__name__)


def test_debug_shows_the_traceback(study, tmp_path, capsys, monkeypatch):
    import faithprobe.stages.probe

    monkeypatch.setattr(faithprobe.stages.probe, "_probe_one", _boom(RuntimeError("disk")))
    with pytest.raises(RuntimeError, match="disk"):  # the interpreter prints it, exit code 1
        main(["run", str(study), "--out", str(tmp_path / "a"), "--quiet", "--debug"])
    capsys.readouterr()
    bad = tmp_path / "bad.toml"
    bad.write_text("[checkpoints]\nbase = 1\n")
    assert main(["--debug", "run", str(bad), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("faithprobe: error: ") and "[checkpoints.base]" in err


def test_an_os_error_about_the_users_files_is_bad_input(study, tmp_path, capsys, monkeypatch):
    import faithprobe.stages.probe

    denied = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x.lock"))
    monkeypatch.setattr(faithprobe.stages.probe, "_probe_one", _boom(denied))
    assert main(["run", str(study), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == f"faithprobe: error: {tmp_path / 'x.lock'}: Permission denied\n"


def test_an_unwritable_out_is_one_line(study, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", str(study), "--out", str(blocker / "deeper" / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[--out]" in err and "is not a folder" in err


DRIVER = textwrap.dedent("""
    import logging, sys, warnings
    import faithprobe.run.folder as folder
    from faithprobe.cli import main

    real = folder.finish_run

    def noisy(*a, **k):
        warnings.warn("noisy library warning", UserWarning)
        logging.getLogger("transformers.modeling_utils").warning("noisy transformers record")
        logging.getLogger("matplotlib.font_manager").warning("noisy matplotlib record")
        return real(*a, **k)

    folder.finish_run = noisy
    sys.exit(main(sys.argv[1:]))
""")


def test_library_warnings_stay_off_stderr_unless_debug(study, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY")}
    env["FAITHPROBE_CACHE"] = str(tmp_path / "cache")
    for flag, out in (([], "quiet"), (["--debug"], "loud")):
        proc = subprocess.run([sys.executable, "-c", DRIVER, "run", str(study), "--out",
                               str(tmp_path / out), "--quiet", *flag], capture_output=True,
                              text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"report: {tmp_path / out / 'report.html'}"
        if flag:
            assert "noisy library warning" in proc.stderr  # (TransformerLens itself sets
            assert "noisy matplotlib record" in proc.stderr  # transformers' level to ERROR)
        else:
            assert proc.stderr == ""
