"""Regenerate the bad-input corpus: python tests/data/bad/make_bad.py (from the repo root).

Each case is a file or folder here plus a line in cases.json: the command to run on it and a
fragment its one-line error must contain. tests/test_bad_inputs.py runs them all.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

from make_bad_runs import SUMMARY, full_record, round_three
from make_bad_text import text_cases

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
    rec = full_record()  # a record with every field (a missing field is itself bad input)
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
    more_cases(cases, trace_case, config_case, run_case, model, cfg, tok, header, rec)
    round_three(cases, config_case, run_case, HERE)
    text_cases(cases, HERE)
    (HERE / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(f"{len(cases)} cases")


def more_cases(cases, trace_case, config_case, run_case, model, cfg, tok, header, rec) -> None:
    """Round two: nesting, invisible and foreign characters, sizes, context, templates, config
    ranges, safetensors headers, native and Hugging Face configs against their weights, run
    folders with values out of range, and outputs that would land inside an input run."""
    deep = '{"a": ' * 10_000 + "1" + "}" * 10_000
    trace_case("deep_metadata.jsonl", line()[:-1] + f', "metadata": {deep}}}\n',
               "nested too deeply")
    nested = '{"a": ' * 40 + "1" + "}" * 40
    trace_case("metadata_too_deep.jsonl", line()[:-1] + f', "metadata": {nested}}}\n',
               "[metadata]")
    trace_case("metadata_huge_string.jsonl", line(metadata={"note": "x" * 200_001}) + "\n",
               "[metadata.note]")
    trace_case("metadata_lone_surrogate.jsonl",
               line()[:-1] + ', "metadata": {"x": "a\\udc00"}}\n', "surrogate")
    trace_case("metadata_not_object.jsonl", line(metadata=[1, 2]) + "\n", "[metadata]")
    trace_case("zero_width_step.jsonl", line(steps=["\u200b"]) + "\n", "[steps[0]]")
    trace_case("invisible_question.jsonl", line(question="\u200b\u200d\ufeff") + "\n",
               "[question]")
    trace_case("rtl_override_question.jsonl", line(question="a=1\u202e;a?") + "\n",
               "[question]")
    trace_case("char_outside_alphabet.jsonl", line(steps=["a=\u00e9"]) + "\n", "[steps[0]]")
    trace_case("option_outside_alphabet.jsonl", line(options=["1", "\u00a3"]) + "\n",
               "[options[1]]")
    trace_case("context_overflow.jsonl", line(steps=["a=1"] * 500) + "\n",
               "cannot fit the model's context of 96")
    trace_case("prompt_overflow.jsonl", line(question="a=1;" * 40 + "a?") + "\n",
               "longer than the model's context of 96")
    trace_case("too_many_steps.jsonl", line(steps=["a=1"] * 10_001) + "\n",
               "over the limit of 10000")
    trace_case("duplicate_key.jsonl", line()[:-1] + ', "id": "t2"}\n', "duplicate key")
    trace_case("step_truth_strings.jsonl", line(step_truth=["yes"]) + "\n", "[step_truth]")
    trace_case("single_option.jsonl", line(options=["1"]) + "\n", "[options]")
    trace_case("paraphrases_too_many.jsonl", line(paraphrases=["a=1", "a=1"]) + "\n",
               "[paraphrases]")
    trace_case("gold_is_number.jsonl", line(gold=1) + "\n", "[gold]")

    head = '[checkpoints]\nbase = "organism:base"\n'
    config_case("config_negative_seed.toml", "seed = -5\n" + head, "[seed]")
    config_case("config_huge_seed.toml", f"seed = {2**32}\n" + head, "[seed]")
    config_case("config_negative_data_seed.toml", head + "[data]\nseed = -1\n", "[data.seed]")
    config_case("config_huge_count.toml", head + f"[data]\ncount = {10**12}\n", "[data.count]")
    config_case("config_huge_n_boot.toml", head + f"[metrics]\nn_boot = {10**9}\n",
                "[metrics.n_boot]")
    config_case("config_huge_batch.toml", head + f"[probe]\nbatch_size = {10**9}\n",
                "[probe.batch_size]")
    config_case("config_negative_temperature.toml", head + "[generation]\ntemperature = -1.0\n",
                "[generation.temperature]")
    config_case("config_unknown_corrupter.toml",
                head + '[probe.corrupt]\ncorrupter = "shuffle"\n', "[probe.corrupt]")
    config_case("config_chat_without_chat_template.toml", head + "[template]\nchat = true\n",
                "[template.chat]")
    config_case("config_template_outside_alphabet.toml",
                head + '[template]\nsuffix = "\\u00dc:"\n', "[template.suffix]")
    config_case("config_template_overflow.toml",
                head + f'[template]\nquestion_prefix = "{"a" * 100}"\n',
                "longer than the model's context")
    config_case("config_different_tokenizers.toml",
                head + 'sft = "organism:base-llama"\n[data]\ncount = 2\n',
                "tokenize differently")
    config_case("config_long_label.toml", f'[checkpoints]\n{"a" * 65} = "organism:base"\n',
                "at most 64 characters")
    config_case("config_trace_path_is_folder.toml", head + '[data]\nsource = "jsonl"\n'
                'path = "."\n', "is not a file")
    config_case("config_missing_scorer.toml", head + '[infogain]\nscorer = "./no/such/scorer"\n',
                "[infogain.scorer]")

    def checkpoint_case(name: str, fragment: str, edit) -> None:
        import shutil as _sh

        from faithprobe.data.prompts import PromptTemplate
        from faithprobe.models.checkpoints import save_native

        _sh.rmtree(HERE / name, ignore_errors=True)
        save_native(HERE / name, model, cfg, tok, PromptTemplate())
        edit(HERE / name)
        cases.append({"input": name, "kind": "checkpoint", "expect": fragment})

    def header_bytes(folder: Path, header_obj) -> None:
        raw = json.dumps(header_obj).encode()
        (folder / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw)

    def native_config(**kw):
        def edit(folder: Path) -> None:
            meta = json.loads((folder / "faithprobe.json").read_text())
            for key, value in kw.items():
                if key == "config":
                    meta["config"].update(value)
                else:
                    meta[key] = value
            (folder / "faithprobe.json").write_text(json.dumps(meta))
        return edit

    checkpoint_case("safetensors_header_list", "not an object of tensors",
                    lambda f: header_bytes(f, [1, 2, 3]))
    checkpoint_case("safetensors_header_bad_tensor", "no valid dtype, shape and data_offsets",
                    lambda f: header_bytes(f, {"embed.weight": {"dtype": "F32", "shape": [2]}}))
    checkpoint_case("safetensors_header_wrong_bytes", "has shape [4] but 8 bytes",
                    lambda f: header_bytes(f, {"w": {"dtype": "F32", "shape": [4],
                                                     "data_offsets": [0, 8]}}))
    checkpoint_case("native_huge_d_model", "[config.d_model]",
                    native_config(config={"d_model": 10**9}))
    checkpoint_case("native_many_layers", "[config.n_layers]",
                    native_config(config={"n_layers": 10**6}))
    checkpoint_case("native_negative_d_mlp", "[config.d_mlp]",
                    native_config(config={"d_mlp": -4}))
    checkpoint_case("native_template_not_object", "[template]", native_config(template=[1]))
    checkpoint_case("native_bad_tokenizer", "[tokenizer]",
                    native_config(tokenizer={"kind": "char", "alphabet": 5}))
    checkpoint_case("native_config_not_json", "damaged",
                    lambda f: (f / "faithprobe.json").write_text("{format: native"))

    def hf_case(name: str, fragment: str, edit) -> None:
        build_hf(HERE / name)
        edit(HERE / name)
        cases.append({"input": name, "kind": "checkpoint", "expect": fragment})

    def hf_config(**kw):
        def edit(folder: Path) -> None:
            config = json.loads((folder / "config.json").read_text())
            config.update(kw)
            (folder / "config.json").write_text(json.dumps(config, indent=1))
        return edit

    hf_case("hf_huge_hidden_size", "the config implies (50, 1000000000)",
            hf_config(hidden_size=10**9))
    hf_case("hf_many_layers", "[num_hidden_layers]", hf_config(num_hidden_layers=10**6))
    hf_case("hf_wrong_intermediate_size", "does not match its weights",
            hf_config(intermediate_size=24))
    hf_case("hf_config_not_json", "damaged",
            lambda f: (f / "config.json").write_text('{"model_type": "llama",'))
    hf_case("hf_broken_tokenizer", "cannot load",
            lambda f: (f / "tokenizer.json").write_text('{"version": "1.0", "model": 7}'))
    (HERE / "garbage.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 4)
    cases.append({"input": "garbage.gguf", "kind": "checkpoint", "expect": "cannot load"})
    shutil.rmtree(HERE / "no_weights", ignore_errors=True)
    (HERE / "no_weights").mkdir()
    (HERE / "no_weights" / "README.txt").write_text("a folder with no weights in it\n")
    cases.append({"input": "no_weights", "kind": "checkpoint", "expect": "holds no safetensors"})

    good_cfg = {"seed": 0, "metrics": {"n_boot": 10}}
    run_case("run_negative_seed", {"header.json": json.dumps(
        {"schema_version": 1, "status": "success", "config": {**good_cfg, "seed": -5}}),
        "records.jsonl": rec + "\n"}, "score", "[config.seed]")
    run_case("run_huge_n_boot", {"header.json": json.dumps(
        {"schema_version": 1, "status": "success",
         "config": {**good_cfg, "metrics": {"n_boot": 10**9}}}),
        "records.jsonl": rec + "\n"}, "score", "[config.metrics.n_boot]")
    run_case("run_header_list", {"header.json": "[1, 2]", "records.jsonl": rec + "\n"},
             "report", "not a JSON object")
    run_case("run_deep_records", {"header.json": header,
                                  "records.jsonl": "[" * 10_000 + "]" * 10_000 + "\n"},
             "score", "nested too deeply")
    run_case("run_ok", {"header.json": header, "records.jsonl": rec + "\n",
                        "summary.json": json.dumps(SUMMARY)}, "report", "")
    cases.pop()  # run_ok is an input of the cases below, not a bad input itself
    cases.append({"input": "run_ok", "kind": "compare", "expect": "inside one",
                  "argv": ["compare", "{bad}/run_ok", "--out", "{bad}/run_ok/comparison"]})
    cases.append({"input": "run_ok", "kind": "score", "expect": "is one of the runs being scored",
                  "argv": ["score", "{bad}/run_ok", "{bad}/run_no_summary", "--out",
                           "{bad}/run_ok"]})
    cases.append({"input": "garbage.gguf", "kind": "compare", "expect": "not a folder",
                  "argv": ["compare", "{bad}/run_ok", "--out", "{bad}/garbage.gguf"]})
    pair_cases(cases, config_case, run_case, good_cfg, rec)


def pair_cases(cases, config_case, run_case, good_cfg, rec) -> None:
    """Comparison pairs (``metrics.pairs``, ``score --pair``) naming no checkpoint, or one twice."""
    head = '[checkpoints]\nbase = "organism:base"\nsft = "organism:sft"\n'
    config_case("config_pair_unknown_label.toml",
                head + '[metrics]\npairs = [["base", "nobody"]]\n', "[metrics.pairs[0]]")
    config_case("config_pair_same_label.toml",
                head + '[metrics]\npairs = [["base", "sft"], ["sft", "sft"]]\n',
                "[metrics.pairs[1]]")
    run_case("run_bad_pairs", {"header.json": json.dumps(
        {"schema_version": 1, "status": "success",
         "config": {**good_cfg, "metrics": {"n_boot": 10, "pairs": "base"}}}),
        "records.jsonl": rec + "\n"}, "score", "[config.metrics.pairs]")
    cases.append({"input": "run_ok", "kind": "score", "expect": "[--pair 'base' 'nobody']",
                  "argv": ["score", "{bad}/run_ok", "--pair", "base", "nobody"]})


def build_hf(folder: Path) -> None:
    """A tiny Llama (hidden 8, one layer) with the organisms' character tokenizer."""
    import shutil as _sh

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from faithprobe.organisms.task import organism_hf_tokenizer

    _sh.rmtree(folder, ignore_errors=True)
    tok = organism_hf_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=8, intermediate_size=16,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=96, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, architectures=["LlamaForCausalLM"])
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)


if __name__ == "__main__":
    main()
