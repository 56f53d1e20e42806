"""Interrupted runs and numerical guards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

from faithprobe.data.traces import Trace, write_traces
from faithprobe.metrics import summarize
from faithprobe.stages.probe import ProbeConfig, probe

DIGITS = tuple("0123456789")


def _traces(n):
    return [Trace(f"t{i:02d}", f"a={i % 10},b=a+{i % 7},c=b*2;c?",
                  (f"a={i % 10}", f"b={(i % 10 + i % 7) % 10}", f"c={(2 * (i % 10 + i % 7)) % 10}"),
                  str((2 * (i % 10 + i % 7)) % 10), options=DIGITS,
                  gold=str((2 * (i % 10 + i % 7)) % 10)) for i in range(n)]


def _config(tmp_path, tiny_folder, n):
    write_traces(tmp_path / "traces.jsonl", _traces(n))
    cfg = tmp_path / "study.toml"
    cfg.write_text(f'seed = 3\n[checkpoints]\nbase = "{tiny_folder}"\nsft = "{tiny_folder}"\n'
                   '[data]\nsource = "jsonl"\npath = "traces.jsonl"\n'
                   '[probe]\nmax_new_tokens = 4\n[patching]\nenabled = false\n'
                   '[metrics]\nn_boot = 20\n')
    return cfg


def _run(args, **kw):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "faithprobe", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_folder):
    cfg = _config(tmp_path, tiny_folder, 10)
    killed = tmp_path / "killed"
    proc = _run(["run", str(cfg), "--out", str(killed), "--quiet"])
    progress = killed / "progress.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if progress.is_file() and len(progress.read_text().splitlines()) >= 3:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    header = json.loads((killed / "header.json").read_text())
    assert header["status"] == "started"  # a readable header, records on disk
    done = len(progress.read_text().splitlines())
    assert 3 <= done < 20
    resumed = _run(["run", str(cfg), "--out", str(killed), "--quiet", "--resume"])
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    whole = tmp_path / "whole"
    assert _run(["run", str(cfg), "--out", str(whole), "--quiet"]).wait(timeout=600) == 0
    a = sorted((killed / "records.jsonl").read_bytes().splitlines())
    b = sorted((whole / "records.jsonl").read_bytes().splitlines())
    assert a == b and len(a) > 50
    assert json.loads((killed / "header.json").read_text())["status"] == "success"


def test_nan_logits_are_recorded_and_counted_never_averaged(tiny):
    traces = _traces(3)
    clean = probe(tiny, "base", traces, ProbeConfig(max_new_tokens=3))
    with torch.no_grad():
        tiny.bridge.unembed.W_U[:, 5] = float("nan")  # one vocabulary column poisons softmax
    poisoned = probe(tiny, "sft", traces, ProbeConfig(max_new_tokens=3))
    assert any(r.status == "nonfinite" for r in poisoned)
    for r in poisoned:
        if r.status == "nonfinite":
            assert r.same_answer is None and r.correct is None
    summary = summarize(clean + poisoned, n_boot=20)
    json.dumps(summary, allow_nan=False)  # never a silent NaN
    counts = summary["checkpoints"]["sft"]["nonfinite_count"]
    assert counts["value"] == sum(r.status == "nonfinite" for r in poisoned) > 0
    assert "accuracy" not in summary["checkpoints"]["sft"] or \
        summary["checkpoints"]["sft"]["accuracy"]["n"] < 3
