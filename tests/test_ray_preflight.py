"""The Ray engine joins its cluster in the preflight: an address that leads nowhere is exit 2
and one line within 60 s, before any run folder exists, with none of Ray's own lines on
stderr; SIGTERM to a Ray run records ``cancelled`` and exits 143, as a local run does."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

STUDY = """
[checkpoints]
base = "organism:base"
[data]
source = "organism"
count = {count}
[probe]
interventions = ["truncate", "corrupt"]
max_new_tokens = 8
[probe.corrupt]
corrupter = "organism"
[patching]
enabled = false
[metrics]
n_boot = 20
[ray]
traces_per_task = 1
"""


@pytest.fixture
def study(tmp_path: Path) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(count=4), encoding="utf-8")
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argv: list[str], timeout: float = 120, prelude: str = "") -> tuple[int, str, float]:
    """The command in a process of its own: (exit code, stderr, seconds)."""
    code = (f"import sys\n{prelude}\nfrom faithprobe.cli import main\n"
            f"sys.exit(main({argv!r}))\n")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env)
    return proc.returncode, proc.stderr, time.monotonic() - start


@pytest.mark.parametrize(("address", "fragment"), [
    ("127.0.0.1:{closed}", "nothing listens on that port"),
    ("no-such-host.invalid:6379", "not found"),
    ("ray://127.0.0.1:{closed}", "nothing listens on that port"),
])
def test_an_address_that_leads_nowhere_is_one_line_and_no_folder(study, tmp_path, address,
                                                                   fragment):
    address = address.format(closed=_closed_port())
    out = tmp_path / "run"
    code, err, seconds = _run(["run", str(study), "--out", str(out), "--quiet", "--engine",
                               "ray", "--ray-address", address])
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"faithprobe: error: {address} [--ray-address]: cannot reach"), err
    assert fragment in err and seconds < 60 and not out.exists()


def test_a_port_that_answers_but_is_no_cluster_is_refused_in_time(study, tmp_path):
    """Something listens, but no Ray: ray.init would wait minutes, printing its own lines; the
    preflight gives up after JOIN_TIMEOUT_S (3 s here) with one line of its own."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # accepts and never answers
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    out = tmp_path / "run"
    try:
        code, err, seconds = _run(
            ["run", str(study), "--out", str(out), "--quiet", "--engine", "ray",
             "--ray-address", address],
            prelude="import faithprobe.run.ray_connect as r\nr.JOIN_TIMEOUT_S = 3")
    finally:
        stop.set()
        thread.join()
        for s in [*held, listener]:
            s.close()
    assert code == 2 and err.count("\n") == 1, err
    assert f"{address} [--ray-address]: Ray did not join" in err
    assert seconds < 60 and not out.exists()


@pytest.mark.slow  # a local cluster started in a process of its own: about 2 minutes here
def test_sigterm_to_a_ray_run_records_cancelled_and_exits_143(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(count=40), encoding="utf-8")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "faithprobe", "run", str(path), "--out",
                             str(out), "--quiet", "--engine", "ray"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    progress = out / "progress.jsonl"
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not (
            progress.is_file() and progress.read_text().count("\n") >= 1):
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it was signalled"
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    err = proc.stderr.read()
    assert code == 143, err
    assert err == ("faithprobe: cancelled by SIGTERM; complete the run with "
                                  "--resume\n")
    header = json.loads((out / "header.json").read_text())
    assert header["status"] == "cancelled" and header["error"] == "cancelled by SIGTERM"


# SIGTERM at two moments a run cannot choose: while Ray's own handler is in place (ray.init, in
# the preflight) and while Ray's core holds the thread (a driver's wait on its tasks), where an
# exception raised by a handler came out as a SystemError (exit 1) before.
AT_INIT = """import os, signal, ray._private.utils as utils
_set = utils.set_sigterm_handler
def set_handler(handler):  # inside ray.init, where Ray sets a SIGTERM handler of its own
    _set(handler)
    os.kill(os.getpid(), signal.SIGTERM)
utils.set_sigterm_handler = set_handler
"""
IN_WAIT = """import os, signal, threading, ray
_wait, armed = ray.wait, []
def wait(*args, **kwargs):
    if not armed:  # the signal lands while the first wait is inside Ray's core
        armed.append(threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)))
        armed[0].start()
    return _wait(*args, **kwargs)
ray.wait = wait
"""


@pytest.mark.slow  # a local cluster started in a process of its own each: about a minute here
@pytest.mark.parametrize("moment", ["at_init", "in_wait"])
def test_sigterm_inside_ray_is_cancelled_not_an_internal_error(tmp_path, moment):
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(count=6), encoding="utf-8")
    out = tmp_path / "run"
    code, err, _ = _run(["run", str(path), "--out", str(out), "--quiet", "--engine", "ray"],
                        prelude=AT_INIT if moment == "at_init" else IN_WAIT)
    assert code == 143, err
    assert err == "faithprobe: cancelled by SIGTERM; complete the run with --resume\n"
    if moment == "at_init":  # the preflight: nothing was written
        assert not out.exists()
    else:
        header = json.loads((out / "header.json").read_text())
        assert header["status"] == "cancelled", header
