"""Round three of reliability, resume: a resume checks what the records were computed from (the
traces, each checkpoint, faithprobe's version, the config apart from options that change no
result) and refuses naming what changed; it keeps only the groups of records the progress log
proves whole, and ends with the records an uninterrupted run writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from faithprobe.cli import main
from faithprobe.data.traces import Trace, write_traces

DIGITS = tuple("0123456789")


@pytest.fixture
def study(tmp_path, tiny_folder):
    write_traces(tmp_path / "traces.jsonl",
                 [Trace(f"t{i}", f"a={i},b=a+1;b?", (f"a={i}", f"b={(i + 1) % 10}"),
                        str((i + 1) % 10), options=DIGITS, gold=str((i + 1) % 10))
                  for i in range(4)])
    cfg = tmp_path / "study.toml"
    cfg.write_text(f'seed = 1\n[checkpoints]\nbase = "{tiny_folder}"\nsft = "{tiny_folder}"\n'
                   '[data]\nsource = "jsonl"\npath = "traces.jsonl"\n'
                   '[probe]\ninterventions = ["truncate", "corrupt"]\nmax_new_tokens = 4\n'
                   '[patching]\nenabled = false\n[metrics]\nn_boot = 20\n', encoding="utf-8")
    return cfg


def _lines(run: Path) -> list[str]:
    return sorted((run / "records.jsonl").read_text(encoding="utf-8").splitlines())


def _header(run: Path) -> dict:
    return json.loads((run / "header.json").read_text())


def _as_killed(run: Path) -> None:
    """A finished run made to look killed before its end (status started, no report)."""
    header = _header(run)
    header["status"] = "started"
    (run / "header.json").write_text(json.dumps(header))
    (run / "report.html").unlink()


@pytest.fixture
def whole(study, tmp_path):
    out = tmp_path / "whole"
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture
def killed(study, tmp_path):
    out = tmp_path / "killed"
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 0
    _as_killed(out)
    return out


def _refused(study, run, capsys, *flags) -> str:
    before = (run / "records.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["run", str(study), "--out", str(run), "--quiet", "--resume", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("faithprobe: error: ") and str(run) in err
    assert (run / "records.jsonl").read_bytes() == before  # nothing added, nothing dropped
    assert _header(run)["status"] == "started"
    return err


def test_the_header_fingerprints_the_inputs(whole, study, tiny_folder):
    inputs = _header(whole)["inputs"]
    assert inputs["faithprobe"] == _header(whole)["versions"]["faithprobe"]
    assert inputs["traces"]["file"].endswith("traces.jsonl") and inputs["traces"]["count"] == 4
    assert len(inputs["traces"]["file_sha256"]) == 64
    base = inputs["checkpoints"]["base"]
    assert set(base["files"]) == {"faithprobe.json", "model.safetensors"}
    assert base == inputs["checkpoints"]["sft"] and len(base["tokenizer"]) == 64
    import hashlib

    weights = (tiny_folder / "model.safetensors").read_bytes()
    assert base["files"]["model.safetensors"] == hashlib.sha256(weights).hexdigest()


def test_an_edited_trace_file_is_refused(killed, study, tmp_path, capsys):
    path = tmp_path / "traces.jsonl"
    path.write_text(path.read_text().replace('"a=1"', '"a=2"'))
    err = _refused(study, killed, capsys)
    assert "[inputs.traces]" in err and "trace file" in err and "changed" in err


def test_a_swapped_checkpoint_is_refused(killed, study, tiny, tiny_folder, capsys):
    from faithprobe.models.checkpoints import build_native, save_native

    other = build_native({**tiny.native_config, "seed": 7})
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01)
    save_native(tiny_folder, other, tiny.native_config, tiny.tokenizer, tiny.template)
    err = _refused(study, killed, capsys)
    assert "[inputs.checkpoints.base]" in err and "weights differ (model.safetensors)" in err


def test_another_faithprobe_version_is_refused(killed, study, capsys, monkeypatch):
    import faithprobe.run.preflight as preflight

    monkeypatch.setattr(preflight, "package_version", lambda: "99.0")
    err = _refused(study, killed, capsys)
    assert "[inputs.faithprobe]" in err and "-> 99.0" in err


def test_a_config_that_differs_names_its_key(killed, study, capsys):
    study.write_text(study.read_text().replace("max_new_tokens = 4", "max_new_tokens = 5"))
    err = _refused(study, killed, capsys)
    assert "[config.probe.max_new_tokens]" in err and "(4 -> 5)" in err
    study.write_text(study.read_text().replace("max_new_tokens = 5", "max_new_tokens = 4"))
    err = _refused(study, killed, capsys, "--shard", "1/2")
    assert "[--shard]" in err


def test_threads_and_quiet_do_not_block_a_resume(killed, whole, study):
    lines = (killed / "progress.jsonl").read_text().splitlines()
    (killed / "progress.jsonl").write_text("\n".join(lines[:3]) + "\n")
    assert main(["run", str(study), "--out", str(killed), "--resume", "--threads", "1"]) == 0
    header = _header(killed)
    assert header["status"] == "success" and header["config"]["threads"] == 1
    assert header["options"] == {"quiet": True, "engine": "local", "threads": None}
    assert header["resumes"][-1]["options"] == {"quiet": False, "engine": "local", "threads": 1}
    assert _lines(killed) == _lines(whole)


def _groups(run: Path) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for line in (run / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.setdefault((r["checkpoint"], r["trace_id"]), []).append(line)
    return out


def _damage_cut_at_a_line_boundary(run: Path) -> None:
    lines = (run / "records.jsonl").read_text().splitlines(keepends=True)
    (run / "records.jsonl").write_text("".join(lines[:-2]))  # the last group loses 2 records


def _damage_altered(run: Path) -> None:
    text = (run / "records.jsonl").read_text()
    first = text.splitlines()[0]
    r = json.loads(first)
    r["kl"] = 123.0  # a plausible value, still a valid record
    (run / "records.jsonl").write_text(text.replace(first, json.dumps(r, sort_keys=True), 1))


def _damage_missing(run: Path) -> None:
    (run / "records.jsonl").unlink()


def _damage_duplicated(run: Path) -> None:
    text = (run / "records.jsonl").read_text()
    (run / "records.jsonl").write_text(text + text.splitlines(keepends=True)[0])


def _damage_torn_middle(run: Path) -> None:
    lines = (run / "records.jsonl").read_text().splitlines(keepends=True)
    lines[5] = lines[5][:30] + "\n"
    (run / "records.jsonl").write_text("".join(lines))


@pytest.mark.parametrize("damage", [_damage_cut_at_a_line_boundary, _damage_altered,
                                    _damage_missing, _damage_duplicated, _damage_torn_middle])
def test_damaged_groups_are_recomputed(killed, whole, study, damage):
    before = _groups(killed)
    damage(killed)
    assert main(["run", str(study), "--out", str(killed), "--quiet", "--resume"]) == 0
    assert _header(killed)["status"] == "success"
    assert _lines(killed) == _lines(whole)  # the records of an uninterrupted run, as sets
    assert _groups(killed).keys() == before.keys()
    progress = [json.loads(x) for x in (killed / "progress.jsonl").read_text().splitlines()]
    assert len(progress) == len(before)
    assert {p["count"] for p in progress} == {len(v) for v in before.values()}


def test_a_group_not_in_the_progress_log_is_recomputed(killed, whole, study):
    lines = (killed / "progress.jsonl").read_text().splitlines()
    (killed / "progress.jsonl").write_text("\n".join(lines[1:]) + "\n")
    assert main(["run", str(study), "--out", str(killed), "--quiet", "--resume"]) == 0
    assert _lines(killed) == _lines(whole)


def test_an_old_progress_log_without_proof_recomputes_everything(killed, whole, study):
    entries = [json.loads(x) for x in (killed / "progress.jsonl").read_text().splitlines()]
    (killed / "progress.jsonl").write_text("".join(
        json.dumps({"checkpoint": e["checkpoint"], "trace_id": e["trace_id"]}) + "\n"
        for e in entries))
    (killed / "records.jsonl").write_text("")  # were records kept, they would be duplicated
    assert main(["run", str(study), "--out", str(killed), "--quiet", "--resume"]) == 0
    assert _lines(killed) == _lines(whole)


def test_a_label_named_after_a_role_is_refused(study, tmp_path, capsys):
    study.write_text(study.read_text().replace("sft = ", "scorer = "))
    out = tmp_path / "run"
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[checkpoints.scorer]" in err and "reserved" in err
    assert not out.exists()


def test_the_scorers_hardware_is_a_roles_never_a_labels(study, tmp_path, tiny_folder):
    study.write_text(study.read_text() + f'[infogain]\nscorer = "{tiny_folder}"\n')
    out = tmp_path / "run"
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 0
    header = _header(out)
    assert set(header["hardware"]["checkpoints"]) == {"base", "sft"}
    assert set(header["hardware"]["roles"]) == {"scorer"}
    assert header["inputs"]["roles"]["scorer"]["files"] == \
        header["inputs"]["checkpoints"]["base"]["files"]
