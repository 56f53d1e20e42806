"""Benchmark: a run alone and beside one busy process, torch's default threads vs faithprobe's.

Exact command (from the repository root, virtualenv active)::

    python experiments/bench_threads.py            # about 3 minutes on 2 idle cores

It runs the same small organism study (``STUDY`` below: 12 traces, every text intervention,
patching of 4 traces) four times with ``faithprobe run``: with ``--threads <all cores>`` (what
torch does by default) and with faithprobe's default (one core left free), each once alone and
once beside a busy process (a pure-Python spin loop pinned to nothing, as another user's job
would be). It prints the wall times and, last,
``contention_ratio_default=<x> contention_ratio_all_cores=<y>``: each setting's time beside the
busy process over its time alone. The target is x at most 2.5.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUDY = """
name = "threads bench"
seed = 0
[checkpoints]
base = "organism:base"
sft = "organism:sft"
[data]
source = "organism"
split = "id"
count = 12
seed = 1
[probe]
max_new_tokens = 24
[probe.corrupt]
corrupter = "organism"
[patching]
max_traces = 4
[metrics]
n_boot = 200
"""
SPIN = "while True: pass"


def run_once(config: Path, out: Path, threads: int | None) -> float:
    cmd = [sys.executable, "-m", "faithprobe", "run", str(config), "--out", str(out), "--quiet"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    from faithprobe.models.threads import default_threads, usable_cores

    cores = usable_cores()
    work = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    config = work / "study.toml"
    config.write_text(STUDY, encoding="utf-8")
    times: dict[str, float] = {}
    for label, threads in (("default", None), ("all_cores", cores)):
        times[f"{label}_alone"] = run_once(config, work / f"{label}-alone", threads)
        busy = subprocess.Popen([sys.executable, "-c", SPIN])
        try:
            time.sleep(1.0)
            times[f"{label}_busy"] = run_once(config, work / f"{label}-busy", threads)
        finally:
            busy.kill()
            busy.wait()
    result = {"cores": cores, "default_threads": default_threads(),
              **{k: round(v, 1) for k, v in times.items()}}
    print(json.dumps(result))
    x = times["default_busy"] / times["default_alone"]
    y = times["all_cores_busy"] / times["all_cores_alone"]
    print(f"contention_ratio_default={x:.2f} contention_ratio_all_cores={y:.2f}")


if __name__ == "__main__":
    main()
