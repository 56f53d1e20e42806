"""Round three of the bad-input corpus (called by make_bad.py): damaged records and summaries,
shards that do not make one study, resumes whose inputs changed, reserved labels."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from faithprobe.records import Record

FULL = Record(trace_id="t1", checkpoint="base", intervention="none", n_steps=1,
              model="organism:base", answer="1", pred="1", orig_pred="1", same_answer=True,
              pred_prob=0.9).to_json()
GOOD_CFG = {"seed": 0, "metrics": {"n_boot": 10}}
ESTIMATE = {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 1}
SUMMARY = {"schema_version": 1, "checkpoints": {"base": {"accuracy": ESTIMATE}},
           "comparisons": []}


def full_record(**kw) -> str:
    return json.dumps({**FULL, **kw})


def header(**kw) -> str:
    return json.dumps({"schema_version": 1, "status": "success", "config": GOOD_CFG, **kw})


def round_three(cases, config_case, run_case, here: Path) -> None:
    record_cases(run_case)
    summary_cases(run_case)
    merge_cases(cases, here)
    resume_cases(cases, config_case, here)


def record_cases(run_case) -> None:
    def bad_record(name: str, fragment: str, text: str, command: str = "score") -> None:
        run_case(name, {"header.json": header(), "records.jsonl": full_record() + "\n" + text
                        + "\n", "summary.json": json.dumps(SUMMARY)}, command, fragment)

    bad_record("run_record_number_as_word", ":2 [n_steps]: expected an integer",
               full_record(n_steps="three"))
    bad_record("run_record_string_for_number", ":2 [pred_prob]: expected a number",
               full_record(pred_prob="0.5"), "report")
    bad_record("run_record_int_for_string", ":2 [answer]: expected a string or null",
               full_record(answer=7), "compare")
    missing = dict(FULL)
    del missing["status"]
    bad_record("run_record_missing_field", ":2 [status]: missing record field",
               json.dumps(missing))
    bad_record("run_record_bool_as_word", ":2 [same_answer]: expected true or false",
               full_record(same_answer="yes"), "report")
    bad_record("run_record_negative_steps", ":2 [n_steps]: must not be negative",
               full_record(n_steps=-1))
    bad_record("run_record_float_step", ":2 [step]: expected an integer",
               full_record(step=1.5), "compare")
    bad_record("run_record_detail_list", ":2 [detail]: expected an object",
               full_record(detail=[1]))
    bad_record("run_record_cue_without_judgement", ":2 [detail.kind]: missing",
               full_record(intervention="cue", detail={"followed": True}), "report")
    bad_record("run_record_null_trace_id", ":2 [trace_id]: expected a string",
               full_record(trace_id=None), "compare")
    run_case("run_header_checkpoints_list",
             {"header.json": header(config={**GOOD_CFG, "checkpoints": ["base"]}),
              "records.jsonl": full_record() + "\n"}, "score", "[config.checkpoints]")


def summary_cases(run_case) -> None:
    def bad_summary(name: str, fragment: str, summary, command: str = "report") -> None:
        text = summary if isinstance(summary, str) else json.dumps(summary)
        run_case(name, {"header.json": header(), "records.jsonl": full_record() + "\n",
                        "summary.json": text}, command, fragment)

    bad_summary("run_summary_list", "not a JSON object", "[1, 2]")
    bad_summary("run_summary_no_schema", "[schema_version]", {"checkpoints": {}})
    bad_summary("run_summary_checkpoints_list", "[checkpoints]: expected an object",
                {**SUMMARY, "checkpoints": ["base"]}, "compare")
    bad_summary("run_summary_value_as_word", "[checkpoints.base.accuracy.value]",
                {**SUMMARY, "checkpoints": {"base": {"accuracy": {**ESTIMATE,
                                                                  "value": "high"}}}})
    bad_summary("run_summary_n_not_a_count", "[checkpoints.base.accuracy.n]: expected a count",
                {**SUMMARY, "checkpoints": {"base": {"accuracy": {**ESTIMATE, "n": 1.5}}}},
                "compare")
    bad_summary("run_summary_comparisons_object", "[comparisons]: expected a list",
                {**SUMMARY, "comparisons": {"a": "base"}})
    bad_summary("run_summary_comparison_no_delta", "[comparisons[0].delta]: missing",
                {**SUMMARY, "comparisons": [{"a": "base", "b": "sft", "metric": "accuracy",
                                             "ci_low": 0, "ci_high": 0, "n": 1}]}, "compare")


def _folder(path: Path, files: dict[str, str]) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)


def merge_cases(cases, here: Path) -> None:
    """Two shard folders per case (s1, s2); ``score s1 s2 --out`` is refused naming one."""
    traces = {"source": "jsonl", "file": "t.jsonl", "file_sha256": "a" * 64, "sha256": "b" * 64,
              "count": 2}

    def shard(k: int, n: int = 2, **kw) -> dict[str, str]:
        h = {"shard": [k, n], "inputs": {"traces": traces}, **kw}
        rec = full_record(trace_id=f"t{k}")
        return {"header.json": header(**h), "records.jsonl": rec + "\n"}

    def merge_case(name: str, fragment: str, first: dict, second: dict | None,
                   extra: list[str] = ()) -> None:
        _folder(here / name / "s1", first)
        dirs = ["{bad}/" + f"{name}/s1"]
        if second is not None:
            _folder(here / name / "s2", second)
            dirs.append("{bad}/" + f"{name}/s2")
        cases.append({"input": name, "kind": "score", "expect": fragment,
                      "argv": ["score", *dirs, "--out", "{bad}/" + f"{name}/merged", *extra]})

    merge_case("merge_not_finished", "s2: is not a finished run (status 'cancelled')",
               shard(1), shard(2, status="cancelled"))
    merge_case("merge_other_n", "s2: is shard 2 of 3, but", shard(1), shard(2, 3))
    merge_case("merge_k_twice", "s2: is shard 1 of 2, given twice", shard(1), shard(1))
    merge_case("merge_k_missing", "shard 1 of 2 is missing", shard(2), None)
    merge_case("merge_other_config", "s2: is not a shard of the same study",
               shard(1), shard(2, config={**GOOD_CFG, "seed": 5}))
    merge_case("merge_other_traces", "s2 [inputs.traces.file_sha256]: read other traces",
               shard(1), shard(2, inputs={"traces": {**traces, "file_sha256": "c" * 64}}))


def resume_cases(cases, config_case, here: Path) -> None:
    """A killed run folder and the config it began with, but one input changed since: ``run
    CONFIG --out RUN --resume`` is refused naming it, and writes nothing."""
    from faithprobe.run.config import load_config
    from faithprobe.run.preflight import prepare_run

    config_case("config_label_is_a_role",
                '[checkpoints]\nbase = "organism:base"\nscorer = "organism:sft"\n',
                "[checkpoints.scorer]")
    toml = ('[checkpoints]\nbase = "organism:base"\n[data]\nsource = "organism"\ncount = 2\n'
            '[probe]\ninterventions = ["truncate"]\n[infogain]\nenabled = false\n'
            '[patching]\nenabled = false\n[metrics]\nn_boot = 10\n')
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.toml"
        path.write_text(toml)
        cfg = load_config(path)
        inputs = prepare_run(cfg, Path(tmp) / "run").inputs

    def resume_case(name: str, fragment: str, config: dict, run_inputs, shard=None,
                    flags: list[str] = ()) -> None:
        _folder(here / name, {"study.toml": toml})
        _folder(here / name / "run", {
            "header.json": json.dumps({"schema_version": 1, "status": "cancelled",
                                       "config": config, "shard": shard,
                                       "inputs": run_inputs}),
            "records.jsonl": full_record() + "\n"})
        cases.append({"input": name, "kind": "run", "expect": fragment,
                      "argv": ["run", "{bad}/" + f"{name}/study.toml", "--out",
                               "{bad}/" + f"{name}/run", "--resume", "--quiet", *flags]})

    probe = {**cfg["probe"], "max_new_tokens": cfg["probe"]["max_new_tokens"] + 1}
    resume_case("resume_config_differs", "[config.probe.max_new_tokens]: differs from the run",
                {**cfg, "probe": probe}, inputs)
    resume_case("resume_shard_differs", "[--shard]: the shard differs", cfg, inputs,
                shard=[1, 2])
    resume_case("resume_without_fingerprints", "[inputs]: the run being resumed records no "
                "fingerprints", cfg, None)
    resume_case("resume_traces_changed", "[inputs.traces]: the traces changed", cfg,
                {**inputs, "traces": {**inputs["traces"], "sha256": "0" * 64}})
    resume_case("resume_other_version", "[inputs.faithprobe]: faithprobe's version changed",
                cfg, {**inputs, "faithprobe": "0.0.0-old"})
    weights = {**inputs["checkpoints"]["base"],
               "files": {k: "0" * 64 for k in inputs["checkpoints"]["base"]["files"]}}
    resume_case("resume_weights_changed", "[inputs.checkpoints.base]: checkpoint 'base' "
                "(organism:base) changed: its weights differ", cfg,
                {**inputs, "checkpoints": {"base": weights}})
