"""Round two of reliability, inputs: everything is checked before a run folder exists, including
what only loading reveals; sizes are bounded before anything is allocated; doubtful data is
counted in the header, not printed."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from faithprobe.cli import main
from faithprobe.data.traces import Trace, write_traces
from faithprobe.errors import FaithprobeError

DIGITS = tuple("0123456789")


def _study(tmp_path: Path, spec_a: str, spec_b: str, traces: list[Trace], extra: str = "") -> Path:
    write_traces(tmp_path / "traces.jsonl", traces)
    cfg = tmp_path / "study.toml"
    cfg.write_text(f'seed = 1\n[checkpoints]\nbase = "{spec_a}"\nsft = "{spec_b}"\n'
                   '[data]\nsource = "jsonl"\npath = "traces.jsonl"\n'
                   '[probe]\ninterventions = ["truncate"]\nmax_new_tokens = 2\n'
                   '[infogain]\nenabled = false\n[patching]\nenabled = false\n'
                   f'[metrics]\nn_boot = 10\n{extra}', encoding="utf-8")
    return cfg


def _traces(n: int, **kw) -> list[Trace]:
    return [Trace(f"t{i}", f"a={i};a?", (f"a={i}",), str(i), **kw) for i in range(n)]


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("faithprobe: error: "), err
    assert "Traceback" not in err
    return err


def test_each_checkpoint_is_loaded_once_for_the_whole_run(tmp_path, tiny_folder, monkeypatch):
    import faithprobe.models.checkpoints as checkpoints

    other = shutil.copytree(tiny_folder, tmp_path / "other")
    calls: list[str] = []
    real = checkpoints.load_checkpoint

    def counting(spec, **kw):
        calls.append(spec)
        return real(spec, **kw)

    monkeypatch.setattr(checkpoints, "load_checkpoint", counting)
    cfg = _study(tmp_path, str(tiny_folder), str(other), _traces(2))
    (tmp_path / "run3.toml").write_text(cfg.read_text().replace('sft = "', 'third = "'
                                        f'{tiny_folder}"\nsft = "'))
    assert main(["run", str(tmp_path / "run3.toml"), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    # three labels, two distinct specs: each loaded once (the preflight's copy is the run's)
    assert sorted(calls) == sorted([str(tiny_folder), str(other)])


def test_a_fifo_where_weights_belong_is_refused_without_blocking(tmp_path, tiny_folder):
    from faithprobe.models.checkpoints import preflight

    broken = shutil.copytree(tiny_folder, tmp_path / "fifo")
    (broken / "model.safetensors").unlink()
    os.mkfifo(broken / "model.safetensors")
    result: list[BaseException | None] = []

    def attempt():
        try:
            preflight(str(broken))
            result.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            result.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    start = time.perf_counter()
    worker.start()
    worker.join(timeout=60)
    assert result, "preflight blocked on a FIFO"
    assert time.perf_counter() - start < 30
    assert isinstance(result[0], FaithprobeError)
    assert "is a FIFO, not a regular file" in str(result[0])
    assert str(broken / "model.safetensors") in str(result[0])


@pytest.mark.parametrize("which", ["traces", "config"])
def test_a_fifo_as_trace_file_or_config_is_refused(tmp_path, tiny_folder, capsys, which):
    cfg = _study(tmp_path, str(tiny_folder), str(tiny_folder), _traces(1))
    target = tmp_path / ("traces.jsonl" if which == "traces" else "fifo.toml")
    target.unlink(missing_ok=True)
    os.mkfifo(target)
    argv = ["run", str(cfg if which == "traces" else target), "--out", str(tmp_path / "o")]
    assert main([*argv, "--quiet"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert ("is not a file" if which == "traces" else "is a FIFO, not a regular file") in err
    assert not (tmp_path / "o").exists()


def test_long_traces_are_refused_in_time_linear_in_their_length(tmp_path, tiny_folder, capsys):
    # 10,000 steps (the old path ran past 300 s): one token a step cannot fit 160 positions;
    # 150 steps of 2,000 characters: counted in tokens before any alignment
    cases = {"steps": Trace("long", "a=1;a?", ("a=1",) * 10_000, "1"),
             "chars": Trace("wide", "a=1;a?", ("a=1 " * 500,) * 150, "1")}
    for name, trace in cases.items():
        cfg = _study(tmp_path, str(tiny_folder), str(tiny_folder), [trace])
        start = time.perf_counter()
        assert main(["run", str(cfg), "--out", str(tmp_path / name), "--quiet"]) == 2
        elapsed = time.perf_counter() - start
        err = _one_line(capsys.readouterr().err)
        assert f"trace {trace.id!r}" in err and "[steps]" in err and "context of 160" in err
        assert elapsed < 20, f"{name}: {elapsed:.1f} s"
        assert not (tmp_path / name).exists()


def test_a_bad_trace_for_the_second_checkpoint_leaves_no_folder(tmp_path, tiny_folder, capsys):
    # the second checkpoint's tokenizer lacks "q": found by the preflight, not halfway through
    from faithprobe.data.tokens import CharTokenizer
    from faithprobe.models.checkpoints import load_checkpoint, save_native

    tiny = load_checkpoint(str(tiny_folder))
    alphabet = tiny.tokenizer.alphabet.replace("q", "")
    narrow = save_native(tmp_path / "narrow", tiny.bridge, tiny.native_config,
                         CharTokenizer(alphabet), tiny.template)
    traces = [*_traces(2), Trace("q1", "q=1;q?", ("q=1",), "1")]
    cfg = _study(tmp_path, str(tiny_folder), str(narrow), traces)
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "[question]" in err and "trace 'q1' with checkpoint sft" in err
    assert "'q'" in err and "not in the tokenizer's alphabet" in err
    assert not (tmp_path / "o").exists()
    # and the plain rerun with good data is not blocked by a leftover folder
    write_traces(tmp_path / "traces.jsonl", _traces(2))
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 0


def test_doubtful_data_is_counted_in_the_header_not_printed(tmp_path, tiny_folder, capsys):
    traces = [Trace("g1", "a=1;a?", ("a=1",), "1", options=DIGITS, gold="x"),
              Trace("g2", "a=2;a?", ("a=2",), "2", options=DIGITS, gold="22"),
              Trace("s1", "a=3;a?", ("a=3",), "3", options=("3", " 3", "4"), gold="3"),
              Trace("ok", "a=4;a?", ("a=4",), "4", options=DIGITS, gold="4")]
    cfg = _study(tmp_path, str(tiny_folder), str(tiny_folder), traces)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    header = json.loads((out / "header.json").read_text())
    assert header["warnings"] == {
        "gold_not_in_options": {"count": 2, "traces": ["g1", "g2"]},
        "near_duplicate_options": {"count": 1, "traces": ["s1"]}}
    assert header["preflight"]["base"]["n_ctx"] == 160
    assert 0 < header["preflight"]["base"]["max_prompt_tokens"] <= 160
    lines = captured.out.splitlines()
    assert f"warning: 2 x gold_not_in_options (see {out / 'header.json'})" in lines
    assert f"warning: 1 x near_duplicate_options (see {out / 'header.json'})" in lines
    assert lines[-1] == f"report: {out / 'report.html'}"


def test_clean_data_stores_an_empty_warnings_table(tmp_path, tiny_folder, capsys):
    cfg = _study(tmp_path, str(tiny_folder), str(tiny_folder), _traces(2, options=DIGITS))
    assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert json.loads((tmp_path / "r" / "header.json").read_text())["warnings"] == {}


@pytest.mark.parametrize(("setup", "fragment"), [
    ("file", "exists and is not a folder"),
    ("under_file", "is not a folder"),
    ("not_empty", "exists and is not empty"),
    ("resume_without_header", "holds no run header to resume"),
])
def test_bad_out_locations_are_refused_before_loading(tmp_path, tiny_folder, capsys,
                                                      monkeypatch, setup, fragment):
    import faithprobe.models.checkpoints as checkpoints

    def never(*a, **k):
        raise AssertionError("a checkpoint was loaded for a run that cannot be written")

    monkeypatch.setattr(checkpoints, "load_checkpoint", never)
    cfg = _study(tmp_path, str(tiny_folder), str(tiny_folder), _traces(1))
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = {"file": blocker, "under_file": blocker / "run"}.get(setup, tmp_path / "o")
    extra = []
    if setup in ("not_empty", "resume_without_header"):
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        extra = ["--resume"] if setup == "resume_without_header" else []
    assert main(["run", str(cfg), "--out", str(out), "--quiet", *extra]) == 2
    err = _one_line(capsys.readouterr().err)
    assert fragment in err and "[--out]" in err
    assert blocker.read_text() == "a file"
    if out.is_dir():
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_file_limits_are_documented_numbers(tmp_path):
    from faithprobe.data import traces as T

    assert (T.MAX_FIELD_CHARS, T.MAX_STEPS, T.MAX_OPTIONS, T.MAX_METADATA_DEPTH) == (
        200_000, 10_000, 1_000, 32)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for number in ("200,000", "10,000", "1,000", "32 levels", "16,000,000", "20,000",
                   "100,000"):
        assert number in readme, number


def test_a_line_over_the_limit_is_refused_without_reading_on(tmp_path, monkeypatch):
    from faithprobe.data import traces as T

    monkeypatch.setattr(T, "MAX_LINE_CHARS", 1_000)
    path = tmp_path / "wide.jsonl"
    path.write_text(json.dumps({"id": "a", "question": "q" * 5_000, "steps": [],
                                "answer": "1"}) + "\n")
    with pytest.raises(FaithprobeError) as caught:
        T.read_traces(path)
    assert caught.value.line == 1 and "over the limit of 1000 characters" in str(caught.value)
