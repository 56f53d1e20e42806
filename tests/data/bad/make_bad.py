"""Regenerate the bad-input corpus: python tests/data/bad/make_bad.py (from the repo root).

Each case is a file or folder here plus a line in cases.json: the command to run on it and a
fragment its one-line error must contain. tests/test_bad_inputs.py runs them all.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

HERE = Path(__file__).parent
GOOD = {"id": "t1", "question": "a=1;a?", "steps": ["a=1"], "answer": "1"}


def line(**kw) -> str:
    return json.dumps({**GOOD, **kw})


def main() -> None:
    cases = []

    def trace_case(name: str, text: str | bytes, fragment: str) -> None:
        path = HERE / name
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
        cases.append({"input": name, "kind": "traces", "expect": fragment})

    trace_case("broken_json.jsonl", '{"id": "a", "question": \n', "invalid JSON")
    trace_case("steps_not_list.jsonl", line(steps="a=1") + "\n", "[steps]")
    trace_case("answer_is_number.jsonl", line(answer=1) + "\n", "[answer]")
    trace_case("missing_answer.jsonl",
               json.dumps({k: v for k, v in GOOD.items() if k != "answer"}) + "\n", "[answer]")
    trace_case("empty_step.jsonl", line(steps=["a=1", " "]) + "\n", "[steps[1]]")
    trace_case("empty_question.jsonl", line(question="  ") + "\n", "[question]")
    trace_case("huge_question.jsonl", line(question="a" * 200_001) + "\n", "over the limit")
    trace_case("lone_surrogate.jsonl", line().replace('"a=1;a?"', '"a=1\\ud800"') + "\n",
               "surrogate")
    trace_case("nul_character.jsonl", line(question="a\u0000b") + "\n", "NUL")
    trace_case("duplicate_ids.jsonl", line() + "\n" + line() + "\n", "duplicate trace id")
    trace_case("nan_in_metadata.jsonl", line()[:-1] + ', "metadata": {"x": NaN}}\n', "NaN")
    trace_case("infinity_step.jsonl", line()[:-1].replace('["a=1"]', "[Infinity]") + "}\n",
               "Infinity")
    trace_case("unknown_field.jsonl", line(colour="red") + "\n", "[colour]")
    trace_case("step_truth_too_short.jsonl", line(step_truth=[]) + "\n", "[step_truth]")
    trace_case("answer_not_an_option.jsonl", line(options=["2", "3"]) + "\n",
               "not one of the options")
    trace_case("not_utf8.jsonl", line(question="cafe").encode().replace(b"cafe", b"caf\xe9")
               + b"\n",
               "not UTF-8")
    trace_case("empty_file.jsonl", "\n\n", "holds no traces")
    trace_case("array_not_object.jsonl", "[1, 2, 3]\n", "JSON object")
    trace_case("id_is_null.jsonl", line(id=None) + "\n", "[id]")

    def config_case(name: str, text: str, fragment: str) -> None:
        (HERE / name).write_text(text)
        cases.append({"input": name, "kind": "config", "expect": fragment})

    head = '[checkpoints]\nbase = "organism:base"\n'
    config_case("config_unknown_key.toml", head + "[probe]\ncolour = 1\n", "[probe.colour]")
    config_case("config_wrong_type.toml", head + "[probe]\nbatch_size = \"8\"\n",
                "[probe.batch_size]")
    config_case("config_missing_section.toml", "seed = 1\n", "[checkpoints]")
    config_case("config_invalid_toml.toml", "[checkpoints\nbase = 1\n", "invalid TOML")
    config_case("config_bad_choice.toml", head + '[data]\nsource = "web"\n', "[data.source]")
    config_case("config_zero_count.toml", head + "[data]\ncount = 0\n", "[data.count]")
    config_case("config_nan.toml", head + "[generation]\ntemperature = nan\n",
                "[generation.temperature]")
    config_case("config_missing_checkpoint.toml",
                '[checkpoints]\nbase = "./no/such/model"\n', "does not exist")
    config_case("config_unknown_organism.toml", '[checkpoints]\nbase = "organism:nope"\n',
                "no such organism")

    # checkpoints: built from a tiny model by tests/test_bad_inputs.py at run time would hide
    # the files from a reader; they are small, so they are written here from a real model.
    from faithprobe.data.prompts import PromptTemplate
    from faithprobe.data.tokens import CharTokenizer
    from faithprobe.models.checkpoints import build_native, save_native

    tok = CharTokenizer("ab=1;?\n ")
    cfg = dict(d_model=8, n_layers=1, n_heads=2, d_head=4, d_mlp=16, d_vocab=tok.vocab_size,
               n_ctx=32, act_fn="gelu", normalization_type="LN", seed=0)
    model = build_native(cfg)
    for name in ("truncated_weights", "pickle_weights", "mismatched_config"):
        shutil.rmtree(HERE / name, ignore_errors=True)
        save_native(HERE / name, model, cfg, tok, PromptTemplate())
    weights = HERE / "truncated_weights" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    (HERE / "pickle_weights" / "model.safetensors").unlink()
    import torch

    torch.save(model.state_dict(), HERE / "pickle_weights" / "model.pt")
    meta = json.loads((HERE / "mismatched_config" / "faithprobe.json").read_text())
    meta["config"]["d_mlp"] = 32
    (HERE / "mismatched_config" / "faithprobe.json").write_text(json.dumps(meta))
    cases += [
        {"input": "truncated_weights", "kind": "checkpoint", "expect": "truncated"},
        {"input": "pickle_weights/model.pt", "kind": "checkpoint", "expect": "pickle-based"},
        {"input": "mismatched_config", "kind": "checkpoint",
         "expect": "does not match its weights"},
    ]
    (HERE / "evil.pkl").write_bytes(pickle.dumps({"weights": [1.0]}))
    cases.append({"input": "evil.pkl", "kind": "checkpoint", "expect": "pickle-based"})

    # damaged run folders for score / report / compare
    def run_case(name: str, files: dict[str, str], command: str, fragment: str) -> None:
        folder = HERE / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for fname, text in files.items():
            (folder / fname).write_text(text)
        cases.append({"input": name, "kind": command, "expect": fragment})

    header = json.dumps({"schema_version": 1, "status": "success",
                         "config": {"seed": 0, "metrics": {"n_boot": 10}}})
    rec = json.dumps({"trace_id": "t1", "checkpoint": "base", "intervention": "none"})
    run_case("run_torn_records", {"header.json": header,
                                  "records.jsonl": rec + "\n" + rec[:25] + "\n" + rec + "\n"},
             "score", "invalid JSON in records")
    run_case("run_missing_header", {"records.jsonl": rec + "\n"}, "score", "header")
    run_case("run_header_not_json", {"header.json": "{status: ok", "records.jsonl": rec + "\n"},
             "report", "damaged")
    run_case("run_no_summary", {"header.json": header, "records.jsonl": rec + "\n"}, "report",
             "summary")
    run_case("run_no_records", {"header.json": header}, "compare", "records file is missing")
    run_case("run_record_bad_field", {"header.json": header,
                                      "records.jsonl": rec[:-1] + ', "kl": "high"}\n'},
             "score", "[kl]")
    (HERE / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(f"{len(cases)} cases")


if __name__ == "__main__":
    main()
