"""Where a run's work runs changes no record: shards merged, and the Ray engine (a local cluster
of 2 CPUs), against one local run of the organisms with patching on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from faithprobe.cli import main
from faithprobe.records import read_records

STUDY = """
name = "organism engines"
seed = 3
[checkpoints]
base = "organism:base"
sft = "organism:sft"
[data]
source = "organism"
count = {count}
seed = 2
[probe]
interventions = ["truncate", "corrupt", "delete", "filler"]
max_new_tokens = 24
[probe.corrupt]
corrupter = "organism"
[patching]
max_traces = {patched}
components = ["resid_pre"]
[metrics]
n_boot = 50
"""


@pytest.fixture
def study(tmp_path: Path) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(count=6, patched=3), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    """The reference: one local run, patching the first 3 of 6 traces."""
    folder = tmp_path_factory.mktemp("local")
    path = folder / "study.toml"
    path.write_text(STUDY.format(count=6, patched=3), encoding="utf-8")
    assert main(["run", str(path), "--out", str(folder / "run"), "--quiet"]) == 0
    return folder / "run"


def _lines(run: Path) -> list[str]:
    return sorted((run / "records.jsonl").read_text(encoding="utf-8").splitlines())


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text(encoding="utf-8"))


def test_the_local_run_patches_the_first_traces_of_the_list(local_run):
    records = read_records(local_run / "records.jsonl")
    patched = {(r.checkpoint, r.trace_id) for r in records if r.intervention == "patch"}
    ids = [json.loads(line)["id"] for line in
           (local_run / "traces.jsonl").read_text().splitlines()]
    assert patched == {(label, t) for label in ("base", "sft") for t in ids[:3]}


def test_shards_with_patching_merge_to_the_unsharded_run(local_run, study, tmp_path):
    parts = []
    for k in (1, 2, 3):
        d = tmp_path / f"shard{k}"
        assert main(["run", str(study), "--out", str(d), "--quiet", "--shard", f"{k}/3"]) == 0
        parts.append(str(d))
    # each shard patches only those of its traces that the whole run patches
    patched = [{r.trace_id for r in read_records(Path(d) / "records.jsonl")
                if r.intervention == "patch"} for d in parts]
    assert sum(map(len, patched)) == 3
    merged = tmp_path / "merged"
    assert main(["score", *parts, "--out", str(merged)]) == 0
    assert _lines(merged) == _lines(local_run)
    assert _summary(merged) == _summary(local_run)


# --- Ray ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs for the module (the engine joins it)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def test_the_ray_engine_writes_the_local_run(local_run, study, tmp_path, cluster):
    out = tmp_path / "ray"
    assert main(["run", str(study), "--out", str(out), "--quiet", "--engine", "ray"]) == 0
    assert _lines(out) == _lines(local_run)
    assert _summary(out) == _summary(local_run)
    header = json.loads((out / "header.json").read_text())
    local = json.loads((local_run / "header.json").read_text())
    assert header["status"] == "success" and header["patching"] == local["patching"]
    hardware = header["hardware"]
    assert hardware["engine"] == "ray" and hardware["cluster"]["CPU"] == 2
    assert {label: {k: v for k, v in entry.items() if k not in ("workers", "threads")}
            for label, entry in hardware["checkpoints"].items()} == \
        {label: entry for label, entry in local["hardware"]["checkpoints"].items()}
    assert {entry["threads"] for entry in hardware["checkpoints"].values()} == \
        {local["hardware"]["threads"]}
    assert all(len(entry["workers"]) >= 1 for entry in hardware["checkpoints"].values())
    assert (out / "report.html").is_file()


def test_ray_tasks_with_two_threads_write_the_local_run_with_two(study, tmp_path, cluster):
    """``threads = 2``: the local run and every Ray task run torch on 2 threads, and their
    records are the same."""
    study.write_text("threads = 2\n" + study.read_text(), encoding="utf-8")
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert main(["run", str(study), "--out", str(local), "--quiet"]) == 0
    assert main(["run", str(study), "--out", str(remote), "--quiet", "--engine", "ray"]) == 0
    assert _lines(remote) == _lines(local)
    header = json.loads((remote / "header.json").read_text())
    assert json.loads((local / "header.json").read_text())["hardware"]["threads"] == 2
    assert {e["threads"] for e in header["hardware"]["checkpoints"].values()} == {2}


def test_workers_that_disagree_are_an_error():
    from faithprobe.errors import FaithprobeError
    from faithprobe.run.ray_engine import worker_entry

    cpu = {"device": "cpu", "dtype": "float32", "threads": 2}
    entry, fast = worker_entry("base", None, {**cpu, "node": "10.0.0.1"}, None, {"method": "fast"})
    entry, fast = worker_entry("base", entry, {**cpu, "node": "10.0.0.2"}, fast, {"method": "fast"})
    assert entry == {**cpu, "workers": ["10.0.0.1", "10.0.0.2"]} and fast == {"method": "fast"}
    with pytest.raises(FaithprobeError, match="disagree on checkpoint 'base'"):
        worker_entry("base", entry, {**cpu, "threads": 1, "node": "10.0.0.3"}, fast, None)
    with pytest.raises(FaithprobeError, match="disagree on how checkpoint 'base' is patched"):
        worker_entry("base", entry, {**cpu, "node": "10.0.0.3"}, fast, {"method": "hooks"})


def _kill_a_worker_once(pattern: str, killed: list[int], stop: threading.Event) -> None:
    """Kill -9 the first process whose title names a running faithprobe task."""
    while not stop.is_set() and not killed:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                title = Path(entry.path, "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if title.startswith(pattern):
                try:
                    os.kill(int(entry.name), 9)
                except ProcessLookupError:
                    continue
                killed.append(int(entry.name))
                return
        time.sleep(0.005)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_killed_mid_task_changes_no_record(local_run, study, tmp_path, cluster):
    killed: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_kill_a_worker_once,
                               args=("ray::faithprobe:", killed, stop), daemon=True)
    watcher.start()
    out = tmp_path / "ray"
    try:
        code = main(["run", str(study), "--out", str(out), "--quiet", "--engine", "ray"])
    finally:
        stop.set()
        watcher.join()
    assert killed, "no task was running to be killed"
    assert code == 0
    assert _lines(out) == _lines(local_run)


def test_resume_on_ray_completes_a_killed_run(local_run, study, tmp_path, cluster):
    out = tmp_path / "run"
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 0
    # the driver killed: half the progress log and records gone, a torn last line
    lines = (out / "records.jsonl").read_text().splitlines(keepends=True)
    (out / "records.jsonl").write_text("".join(lines[: len(lines) // 2]) + lines[-1][:20])
    progress = (out / "progress.jsonl").read_text().splitlines(keepends=True)
    (out / "progress.jsonl").write_text("".join(progress[:5]))
    header = json.loads((out / "header.json").read_text())
    (out / "header.json").write_text(json.dumps({**header, "status": "started"}))
    assert main(["run", str(study), "--out", str(out), "--quiet", "--resume",
                 "--engine", "ray"]) == 0
    assert _lines(out) == _lines(local_run)


def test_a_driver_killed_by_sigkill_is_resumed_to_the_local_run(tmp_path, cluster):
    """The real thing: the driver process (with the local cluster it started) dies mid-run."""
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(count=12, patched=3) + "[ray]\ntraces_per_task = 2\n",
                    encoding="utf-8")
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "faithprobe", "run", str(path), "--out",
                             str(out), "--quiet", "--engine", "ray"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    progress = out / "progress.jsonl"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (
            progress.is_file() and len(progress.read_text().splitlines()) >= 4):
        time.sleep(0.02)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it was killed"
    assert proc.stderr.read() == ""  # --quiet: not a line of Ray's own logging either
    assert json.loads((out / "header.json").read_text())["status"] == "started"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--resume",
                 "--engine", "ray"]) == 0
    whole = tmp_path / "whole"
    assert main(["run", str(path), "--out", str(whole), "--quiet"]) == 0
    assert _lines(out) == _lines(whole)


def test_sampled_traces_are_the_same_in_one_run_two_shards_and_ray(tmp_path, cluster):
    """Sampled generation: one local run, two shards merged and the Ray engine write
    byte-identical traces and records (each trace is seeded by what it is, never by the batch
    or shard it is written in). The organisms are near-deterministic at 0.7 (no trace of 6
    differs from greedy), so this samples at 4.0, where every trace does;
    ``test_tracegen.py`` checks 0.7 on a random model."""
    path = tmp_path / "gen.toml"
    text = STUDY.format(count=6, patched=2).replace(
        "seed = 2\n", "seed = 2\ntraces = \"generate\"\n")
    path.write_text(text + "[generation]\nmax_new_tokens = 40\ntemperature = 4.0\n",
                    encoding="utf-8")
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert main(["run", str(path), "--out", str(local), "--quiet"]) == 0
    assert main(["run", str(path), "--out", str(remote), "--quiet", "--engine", "ray"]) == 0
    shards = [tmp_path / f"shard{k}" for k in (1, 2)]
    for k, d in enumerate(shards, 1):
        assert main(["run", str(path), "--out", str(d), "--quiet", "--shard", f"{k}/2"]) == 0
    merged = tmp_path / "merged"
    assert main(["score", *map(str, shards), "--out", str(merged)]) == 0
    for label in ("base", "sft"):
        name = f"traces-{label}.jsonl"
        whole = (local / name).read_text()
        assert (remote / name).read_text() == whole
        parts = sorted(line for d in shards for line in (d / name).read_text().splitlines())
        assert parts == sorted(whole.splitlines())
    assert _lines(remote) == _lines(local) == _lines(merged)


def test_without_ray_the_engine_is_a_one_line_error(study, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    out = tmp_path / "run"
    assert main(["run", str(study), "--out", str(out), "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert "faithprobe[ray]" in err and err.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize(("args", "fragment"), [
    (["--ray-address", "auto"], "needs --engine ray"),
    (["--engine", "ray", "--ray-address", "nowhere"], "expected auto, HOST:PORT"),
])
def test_bad_engine_arguments_exit_2(study, tmp_path, capsys, args, fragment):
    out = tmp_path / "run"
    assert main(["run", str(study), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and not out.exists()


def test_gpus_asked_follow_the_placement_and_the_cluster():
    from faithprobe.errors import FaithprobeError
    from faithprobe.run.config import validate_config
    from faithprobe.run.ray_engine import gpus_asked

    cfg = validate_config({"checkpoints": {"a": "organism:base", "b": "organism:sft",
                                           "c": "organism:sft"},
                           "placement": {"a": {"device": "cuda:0"}, "b": {"device_map": "auto"}}})
    assert gpus_asked(cfg, "a", 2.0, 0.5) == 0.5
    assert (gpus_asked(cfg, "b", 2.0, 0.5), gpus_asked(cfg, "b", 0.0, 0.5)) == (0.5, 0.0)
    assert gpus_asked(cfg, "c", 2.0, 0.5) == 0.0
    with pytest.raises(FaithprobeError, match="placed on cuda:0 but the Ray cluster has no GPU"):
        gpus_asked(cfg, "a", 0.0, 0.5)
