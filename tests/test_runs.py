"""Run folders and the command line, on a tiny model saved to disk."""

from __future__ import annotations

import json

import pytest

from faithprobe.cli import main
from faithprobe.data.traces import Trace, write_traces
from faithprobe.errors import FaithprobeError
from faithprobe.records import read_records
from faithprobe.run.config import validate_config

DIGITS = list("0123456789")


@pytest.fixture
def study(tmp_path, tiny_folder):
    traces = [
        Trace(f"t{i}", f"a={i},b=a+1;b?", (f"a={i}", f"b={(i + 1) % 10}"), str((i + 1) % 10),
              options=tuple(DIGITS), gold=str((i + 1) % 10), step_truth=(True, True))
        for i in range(4)
    ]
    write_traces(tmp_path / "traces.jsonl", traces)
    config = tmp_path / "study.toml"
    config.write_text(f"""
name = "tiny study"
seed = 1
[checkpoints]
base = "{tiny_folder}"
sft = "{tiny_folder}"
[data]
source = "jsonl"
path = "traces.jsonl"
[probe]
interventions = ["truncate", "corrupt", "delete", "filler"]
max_new_tokens = 4
[patching]
enabled = false
[metrics]
n_boot = 50
""", encoding="utf-8")
    return config


def _sorted_lines(path):
    return sorted(path.read_text(encoding="utf-8").splitlines())


def test_run_writes_the_folder(study, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 0
    header = json.loads((out / "header.json").read_text())
    assert header["status"] == "success" and header["schema_version"] == 1
    assert header["config"]["checkpoints"]["base"] and header["versions"]["torch"]
    assert {"commit", "dirty"} <= set(header["git"])
    records = read_records(out / "records.jsonl")
    assert {r.checkpoint for r in records} == {"base", "sft"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema_version"] == 1 and set(summary["checkpoints"]) == {"base", "sft"}
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    # the same seed gives the same records
    again = tmp_path / "again"
    assert main(["run", str(study), "--out", str(again), "--quiet"]) == 0
    assert _sorted_lines(out / "records.jsonl") == _sorted_lines(again / "records.jsonl")
    # score recomputes the same summary from records alone
    before = (out / "summary.json").read_text()
    assert main(["score", str(out)]) == 0
    assert (out / "summary.json").read_text() == before
    assert main(["report", str(out)]) == 0


def test_refuses_to_overwrite_and_resume_completes(study, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    # simulate a kill: drop the last traces and tear the last line
    full = _sorted_lines(out / "records.jsonl")
    lines = (out / "records.jsonl").read_text().splitlines(keepends=True)
    (out / "records.jsonl").write_text("".join(lines[: len(lines) // 2]) + lines[-1][:20])
    prog = (out / "progress.jsonl").read_text().splitlines(keepends=True)
    (out / "progress.jsonl").write_text("".join(prog[:3]))
    header = json.loads((out / "header.json").read_text())
    header["status"] = "started"
    (out / "header.json").write_text(json.dumps(header))
    assert main(["run", str(study), "--out", str(out), "--quiet", "--resume"]) == 0
    assert _sorted_lines(out / "records.jsonl") == full


def _run_in_two_shards(study, tmp_path):
    parts = []
    for k in (1, 2):
        d = tmp_path / f"s{k}"
        assert main(["run", str(study), "--out", str(d), "--quiet", "--shard", f"{k}/2"]) == 0
        parts.append(str(d))
    return parts


def _run_in_two_shards_and_merge(study, tmp_path):
    merged = tmp_path / "merged"
    assert main(["score", *_run_in_two_shards(study, tmp_path), "--out", str(merged)]) == 0
    return merged


def test_shards_merge_to_the_whole(study, tmp_path):
    whole = tmp_path / "whole"
    assert main(["run", str(study), "--out", str(whole), "--quiet"]) == 0
    merged = _run_in_two_shards_and_merge(study, tmp_path)
    assert _sorted_lines(merged / "records.jsonl") == _sorted_lines(whole / "records.jsonl")
    a = json.loads((merged / "summary.json").read_text())
    b = json.loads((whole / "summary.json").read_text())
    assert a == b


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ('[checkpoints]\nbase = "x"\n[probe]\nbogus = 1\n', "[probe.bogus]: unknown key"),
        ('[checkpoints]\nbase = "x"\n[probe]\nbatch_size = "8"\n', "[probe.batch_size]"),
        ('[data]\nsource = "organism"\n', "[checkpoints]: missing section"),
        ('[checkpoints]\nbase = "x"\n[data]\nsource = "web"\n', "[data.source]"),
        ('[checkpoints\n', "invalid TOML"),
        ('[checkpoints]\nbase = "x"\n[probe]\ninterventions = ["melt"]\n',
         "[probe.interventions[0]]"),
    ],
)
def test_bad_configs_exit_2_with_one_line(tmp_path, capsys, toml, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(toml, encoding="utf-8")
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and str(path) in err and err.count("\n") == 1
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_missing_checkpoint_is_refused_before_writing(tmp_path, capsys, study):
    text = study.read_text().replace('sft = "', 'sft = "/nonexistent/')
    study.write_text(text)
    out = tmp_path / "run"
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 2
    assert "/nonexistent/" in capsys.readouterr().err
    assert not out.exists()


def test_failure_during_a_run_is_recorded_in_the_header(tmp_path, capsys, study, monkeypatch):
    import faithprobe.stages.probe

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(faithprobe.stages.probe, "_probe_one", boom)
    monkeypatch.setenv("FAITHPROBE_CACHE", str(tmp_path / "cache"))  # where the log goes
    out = tmp_path / "run"
    # an internal error: exit 1, one line pointing to the log, no traceback
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk on fire" in err[0] and "Traceback" not in err[0]
    logs = list((tmp_path / "cache" / "logs").glob("*"))
    assert logs and "Traceback" in logs[0].read_text()
    header = json.loads((out / "header.json").read_text())
    assert header["status"] == "error" and "disk on fire" in header["error"]
    with pytest.raises(RuntimeError):  # --debug lets it through
        main(["--debug", "run", str(study), "--out", str(tmp_path / "again"), "--quiet"])


def test_validate_config_fills_defaults():
    cfg = validate_config({"checkpoints": {"base": "organism:base"}})
    assert cfg["probe"]["batch_size"] == 16 and cfg["data"]["source"] == "organism"
    with pytest.raises(FaithprobeError, match="checkpoints.bad label"):
        validate_config({"checkpoints": {"bad label": "x"}})


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("run", "demo", "score", "compare", "report"):
        assert name in out
    for name in ("run", "demo", "score", "compare", "report"):
        with pytest.raises(SystemExit):
            main([name, "--help"])


def test_compare_two_runs(study, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["run", str(study), "--out", str(a), "--quiet"]) == 0
    text = study.read_text().replace("seed = 1", "seed = 2")
    other = tmp_path / "other.toml"
    other.write_text(text)
    assert main(["run", str(other), "--out", str(b), "--quiet"]) == 0
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "a/base" in html and "b/sft" in html


def test_header_and_records_say_how_patching_ran(study, tmp_path, monkeypatch):
    from faithprobe.activation import patching

    text = study.read_text().replace("[patching]\nenabled = false",
                                     "[patching]\nenabled = true\nmax_traces = 1")
    study.write_text(text)
    out = tmp_path / "fast"
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 0
    header = json.loads((out / "header.json").read_text())
    assert header["patching"]["base"] == patching.FastPath("fast").to_json()
    patches = [r for r in read_records(out / "records.jsonl") if r.intervention == "patch"]
    assert patches and {r.detail["method"] for r in patches} == {"fast"}

    forced = patching.FastPath("reference", reason="forced by the test")
    monkeypatch.setattr(patching, "check_fast_path", lambda bridge: forced)
    out = tmp_path / "forced"
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 0
    header = json.loads((out / "header.json").read_text())
    assert header["patching"]["sft"] == forced.to_json()
    slow = [r for r in read_records(out / "records.jsonl") if r.intervention == "patch"]
    assert {r.detail["method"] for r in slow} == {"reference"}
    assert {r.detail["fallback_reason"] for r in slow} == {"forced by the test"}
    assert len(slow) == len(patches)


def test_comparison_pairs_from_the_config_and_from_score(study, tmp_path):
    """``metrics.pairs`` picks the comparisons (a fine-tune against another, not only against
    the first checkpoint); ``score --pair`` re-picks them from records alone and the header
    keeps the choice, so a later plain ``score`` gives the same summary."""
    text = study.read_text(encoding="utf-8")
    folder = text.split('base = "')[1].split('"')[0]
    text = text.replace('sft = "', f'other = "{folder}"\nsft = "')
    text = text.replace("n_boot = 50",
                        'n_boot = 50\npairs = [["sft", "other"], ["base", "sft"]]')
    study.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {(c["a"], c["b"]) for c in summary["comparisons"]} == {("sft", "other"),
                                                                  ("base", "sft")}
    # the fine-tuning question is asked of a fine-tune against the first checkpoint only
    assert [(q["a"], q["b"]) for q in summary["seed_question"]] == [("base", "sft")]
    md = (out / "report.md").read_text()
    assert "other vs sft" in md and "other vs base" not in md

    assert main(["score", str(out), "--pair", "other", "base"]) == 0
    header = json.loads((out / "header.json").read_text())
    assert header["config"]["metrics"]["pairs"] == [["other", "base"]]
    rescored = json.loads((out / "summary.json").read_text())
    assert {(c["a"], c["b"]) for c in rescored["comparisons"]} == {("other", "base")}
    assert rescored["seed_question"] == []  # "other" is not the first checkpoint
    before = (out / "summary.json").read_text()
    assert main(["score", str(out)]) == 0
    assert (out / "summary.json").read_text() == before


def test_the_base_is_the_configs_first_checkpoint_whatever_the_record_order(study, tmp_path):
    """Merged shards hold their records sorted: the base (default pairs, seed question) stays
    the config's first checkpoint, so scoring a merged folder again changes nothing."""
    text = study.read_text(encoding="utf-8")
    study.write_text(text.replace("base = ", "zbase = ").replace("sft = ", "asft = "),
                     encoding="utf-8")
    merged = _run_in_two_shards_and_merge(study, tmp_path)
    first = json.loads((merged / "summary.json").read_text())
    assert {(c["a"], c["b"]) for c in first["comparisons"]} == {("zbase", "asft")}
    assert [(q["a"], q["b"]) for q in first["seed_question"]] == [("zbase", "asft")]
    assert main(["score", str(merged)]) == 0
    assert json.loads((merged / "summary.json").read_text()) == first


def test_a_pair_given_twice_is_refused(study, tmp_path, capsys):
    text = study.read_text(encoding="utf-8")
    study.write_text(text.replace("n_boot = 50", 'n_boot = 50\npairs = [["base", "sft"], '
                                  '["base", "sft"]]'), encoding="utf-8")
    out = tmp_path / "run"
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "[metrics.pairs[1]]" in err and "given twice" in err and not out.exists()


def test_shards_with_other_pairs_merge_only_with_pair(study, tmp_path, capsys):
    parts = _run_in_two_shards(study, tmp_path)
    assert main(["score", parts[0], "--pair", "sft", "base"]) == 0
    capsys.readouterr()
    assert main(["score", *parts, "--out", str(tmp_path / "m1")]) == 2
    err = capsys.readouterr().err
    assert "choose them with --pair" in err and not (tmp_path / "m1").exists()
    merged = tmp_path / "m2"
    assert main(["score", *parts, "--out", str(merged), "--pair", "sft", "base"]) == 0
    summary = json.loads((merged / "summary.json").read_text())
    assert {(c["a"], c["b"]) for c in summary["comparisons"]} == {("sft", "base")}
