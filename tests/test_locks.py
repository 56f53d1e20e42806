"""wait_for_lock: a second process waits for the first (two runs converting one packaged model
into the cache at once must not race)."""

from __future__ import annotations

import subprocess
import sys
import time

from faithprobe.io import wait_for_lock


def test_a_second_holder_waits_for_the_first(tmp_path):
    log = tmp_path / "log.txt"
    child = subprocess.Popen([sys.executable, "-c", f"""
import time
from faithprobe.io import wait_for_lock
with wait_for_lock({str(tmp_path / 'cache')!r}):
    open({str(log)!r}, "a").write("first-in\\n")
    time.sleep(0.5)
    open({str(log)!r}, "a").write("first-out\\n")
"""])
    deadline = time.monotonic() + 60
    while not (log.exists() and "first-in" in log.read_text()):
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.02)
    with wait_for_lock(tmp_path / "cache"):
        with log.open("a") as f:
            f.write("second-in\n")
    assert child.wait(timeout=60) == 0
    assert log.read_text().split() == ["first-in", "first-out", "second-in"]
