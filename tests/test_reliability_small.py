"""Round three of reliability, small things: a label starting with "-" named in ``--pair``,
``device_map = "auto"`` without a GPU recorded as ignored, error lines that quote control
characters escaped."""

from __future__ import annotations

import pytest
import torch

from faithprobe.cli import main
from faithprobe.io import write_json
from faithprobe.metrics import summarize
from faithprobe.records import Record, write_records


@pytest.fixture
def dash_run(tmp_path):
    """A scored run folder whose first checkpoint's label starts with "-"."""
    recs = [Record(trace_id=f"t{t}", checkpoint=label, intervention="none", n_steps=1,
                   answer="A", gold="A", pred="A" if label == "-a" or t else "B",
                   orig_pred="A", same_answer=True, correct=True, pred_prob=0.9)
            for label in ("-a", "b", "c") for t in range(3)]
    run = tmp_path / "run"
    run.mkdir()
    write_json(run / "header.json", {"schema_version": 1, "status": "success", "config": {
        "name": "dash", "seed": 3, "checkpoints": {"-a": "x", "b": "y", "c": "z"},
        "metrics": {"n_boot": 20}}})
    write_records(run / "records.jsonl", recs)
    write_json(run / "summary.json", summarize(recs, n_boot=20, seed=3))
    return run


def test_a_label_starting_with_a_dash_is_named_in_pair(dash_run, capsys):
    assert main(["score", str(dash_run), "--pair=-a,b", "--pair", "b", "c"]) == 0
    out = capsys.readouterr().out
    assert "comparisons b vs -a; c vs b replace" in out, out
    with pytest.raises(SystemExit) as exc:  # argparse reads a separate -a as an option
        main(["score", str(dash_run), "--pair", "-a", "b"])
    assert exc.value.code == 2


@pytest.mark.parametrize("given", ["--pair=-a", "--pair=-a,b,c"])
def test_a_pair_of_other_than_two_labels_is_one_line(dash_run, capsys, given):
    assert main(["score", str(dash_run), given]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[--pair]: expected two labels" in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_map_auto_without_a_gpu_is_recorded_as_ignored(tmp_path):
    from faithprobe.run.config import validate_config
    from faithprobe.run.preflight import hardware, prepare_run

    cfg = validate_config({"checkpoints": {"base": "organism:base"}, "device_map": "auto",
                           "dtype": "bfloat16", "data": {"count": 2},
                           "placement": {"base": {"device_map": "auto"}}}, source="t")
    prep = prepare_run(cfg, tmp_path / "run")
    assert prep.warnings["device_map_ignored"] == {"count": 1, "checkpoints": ["base"]}
    entry = hardware(prep)["checkpoints"]["base"]
    assert entry["device_map"].startswith("auto, ignored") and entry["device"] == "cpu"
    # the rest of the placement holds: the model is in the dtype asked for
    assert entry["dtype"] == "bfloat16"
    plain = prepare_run(validate_config({"checkpoints": {"base": "organism:base"},
                                         "data": {"count": 2}}, source="t"), tmp_path / "r2")
    assert "device_map_ignored" not in plain.warnings
    assert "device_map" not in hardware(plain)["checkpoints"]["base"]


def test_an_error_line_quoting_a_trace_escapes_its_control_characters(tmp_path, capsys):
    """A special token's text quoted from a trace with ESC and BEL in it: escaped."""
    import json

    data = tmp_path / "traces.jsonl"
    data.write_text(json.dumps({"id": "t\u001b[2J", "question": "a=1;a?",
                                "steps": ["a=1\u0007"], "answer": "1"}) + "\n")
    cfg = tmp_path / "study.toml"
    cfg.write_text('[checkpoints]\nbase = "organism:base-llama"\n[data]\nsource = "jsonl"\n'
                   f'path = "{data}"\n')
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and err.count("\n") == 1, err
    assert "\\x1b[2J" in err and "'\\x07'" in err and "[steps[0]]" in err
