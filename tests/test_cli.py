"""The command line as a new user meets it: version, usage, endings, overwrites, logs."""

from __future__ import annotations

import json
from importlib import metadata

import pytest

from faithprobe.cli import main
from faithprobe.data.traces import Trace, write_traces

DIGITS = list("0123456789")


@pytest.fixture
def study(tmp_path, tiny_folder):
    traces = [Trace(f"t{i}", f"a={i},b=a+1;b?", (f"a={i}", f"b={(i + 1) % 10}"),
                    str((i + 1) % 10), options=tuple(DIGITS), gold=str((i + 1) % 10))
              for i in range(3)]
    write_traces(tmp_path / "traces.jsonl", traces)
    config = tmp_path / "study.toml"
    config.write_text(f"""
seed = 1
[checkpoints]
base = "{tiny_folder}"
sft = "{tiny_folder}"
[data]
source = "jsonl"
path = "traces.jsonl"
[probe]
interventions = ["truncate", "corrupt"]
max_new_tokens = 4
[infogain]
enabled = false
[patching]
enabled = false
[metrics]
n_boot = 20
""", encoding="utf-8")
    return config


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"faithprobe {metadata.version('faithprobe')}"


def test_bare_command_prints_usage_and_one_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: faithprobe")
    assert err[-1].startswith("faithprobe: error:") and "COMMAND" in err[-1]


def test_run_ends_like_demo_with_verdict_and_report_path(study, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(study), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[-1] == f"report: {out / 'report.html'}"
    assert len(lines) > 1  # the verdict comes first
    # a log written to a file (not a terminal) holds no progress bar
    assert "\r" not in captured.err
    assert main(["run", str(study), "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [
        f"report: {tmp_path / 'quiet' / 'report.html'}"]


def test_compare_never_overwrites_silently(study, tmp_path, capsys):
    a = tmp_path / "a"
    assert main(["run", str(study), "--out", str(a), "--quiet"]) == 0
    report_before = (a / "report.html").read_bytes()
    assert main(["compare", str(a), str(a), "--out", str(a)]) == 2
    assert "is one of the runs being compared" in capsys.readouterr().err
    assert (a / "report.html").read_bytes() == report_before
    cmp = tmp_path / "cmp"
    assert main(["compare", str(a), str(a), "--out", str(cmp)]) == 0
    assert main(["compare", str(a), str(a), "--out", str(cmp)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["compare", str(a), str(a), "--out", str(cmp), "--overwrite"]) == 0


def test_demo_offers_the_resume_its_refusal_names(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "stray.txt").write_text("x")
    assert main(["demo", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0 and "--resume" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["stray.txt"]  # nothing was written


def test_device_dtype_and_threads_per_run_and_per_checkpoint(study, tmp_path, capsys):
    import torch

    out = tmp_path / "bf16"
    assert main(["run", str(study), "--out", str(out), "--quiet", "--dtype", "bfloat16",
                 "--threads", "1"]) == 0
    hw = json.loads((out / "header.json").read_text())["hardware"]
    assert {v["dtype"] for v in hw["checkpoints"].values()} == {"bfloat16"}
    assert hw["threads"] == 1 and hw["torch"] == torch.__version__
    # one checkpoint in bf16, the other as the run says
    text = study.read_text() + '\n[placement.sft]\ndtype = "bfloat16"\n'
    mixed = tmp_path / "mixed.toml"
    mixed.write_text(text)
    assert main(["run", str(mixed), "--out", str(tmp_path / "mixed"), "--quiet"]) == 0
    hw = json.loads((tmp_path / "mixed" / "header.json").read_text())["hardware"]
    assert hw["checkpoints"]["base"]["dtype"] == "float32"
    assert hw["checkpoints"]["sft"]["dtype"] == "bfloat16"
    records = (tmp_path / "mixed" / "records.jsonl").read_text()
    assert '"checkpoint": "sft"' in records  # bf16 logits were scored (in float32)


@pytest.mark.parametrize("args,expect", [
    (["--dtype", "float64"], "unknown dtype"),
    (["--device", "tpu"], "unknown device"),
    (["--device", "cuda:0"], "CUDA is not available"),
])
def test_bad_device_or_dtype_is_one_line_and_writes_nothing(study, tmp_path, capsys, args,
                                                            expect):
    if "cuda" in " ".join(args):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    assert main(["run", str(study), "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0]
    assert not out.exists()
