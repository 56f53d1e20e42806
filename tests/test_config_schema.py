"""The run config schema (faithprobe/run/schema.py): what it accepts, what it refuses and where,
what it fills in, and the README table generated from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from faithprobe.cli import DEMO_CONFIG
from faithprobe.edits.interventions import Edit, register_corrupter, register_intervention
from faithprobe.errors import FaithprobeError
from faithprobe.run.config import LIMITS, custom_cue_kinds, load_config, validate_config
from faithprobe.run.schema import RunSchema, Section

ROOT = Path(__file__).resolve().parents[1]
BASE = {"checkpoints": {"base": "organism:base"}}


def _with(**sections) -> dict:
    return {**BASE, **sections}


def _error(raw: dict) -> FaithprobeError:
    with pytest.raises(FaithprobeError) as caught:
        validate_config(raw, source="t.toml")
    assert "\n" not in str(caught.value) and caught.value.source == "t.toml"
    return caught.value


def test_readme_table_is_the_schemas():
    # a fresh process: no plugin registered by another test shows up in the table
    done = subprocess.run([sys.executable, "-m", "faithprobe.run.schema_doc", "--check",
                           str(ROOT / "README.md")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, ("README's config table differs from the schema: run "
                                  "`python -m faithprobe.run.schema_doc README.md`" + done.stderr)


def test_readme_table_names_every_key_with_its_bounds():
    from faithprobe.run.schema_doc import readme_block

    block = readme_block()
    for key in LIMITS:
        assert f"`{key}`" in block
    prose = " ".join(block.split())  # the bounds paragraph is wrapped anywhere
    assert "`resample.samples` 2 to 10,000" in prose
    assert "`seed`, `data.seed` 0 to 2**32 - 1" in prose
    for section in ("data", "generation", "probe", "patching", "resample", "cue", "metrics", "ray"):
        assert f"| `[{section}]` |" in block


def test_every_key_says_what_it_is():
    def walk(model, path=""):
        for name, info in model.model_fields.items():
            inner = info.annotation
            if isinstance(inner, type) and issubclass(inner, Section):
                yield from walk(inner, f"{path}{name}.")
            else:
                yield f"{path}{name}", info.description
    missing = [key for key, text in walk(RunSchema) if not text]
    assert not missing


# keys added after the committed demo was recorded: their defaults change no record of it
NEWER_THAN_THE_DEMO = {"patching": ("suppression", "suppression_temperature"),
                       "data": ("special_tokens",)}
NEWER_SECTIONS = ("unlearn",)  # whole sections added since, off by default


def test_demo_config_is_the_demo_headers_byte_for_byte():
    header = json.loads((ROOT / "results" / "organism-demo" / "header.json").read_text())
    cfg = validate_config(DEMO_CONFIG)
    for section in NEWER_SECTIONS:
        if section not in header["config"]:
            assert cfg.pop(section)["enabled"] is False
    for section, keys in NEWER_THAN_THE_DEMO.items():
        for key in keys:
            if key not in header["config"][section]:
                del cfg[section][key]
    assert json.dumps(cfg) == json.dumps(header["config"])


def test_defaults_come_first_in_schema_order_then_the_keys_given():
    cfg = validate_config(_with(data={"count": 5, "seed": 3}, threads=2))
    assert list(cfg)[:3] == ["name", "seed", "allow_pickle"] and list(cfg)[-2:] == [
        "checkpoints", "threads"]
    assert list(cfg["data"]) == ["source", "split", "seed", "traces", "special_tokens", "count"]
    assert cfg["data"]["seed"] == 3 and "path" not in cfg["data"] and "ray" not in cfg
    assert "corrupt" not in cfg["probe"] and "pairs" not in cfg["metrics"]


def test_validating_twice_changes_nothing():  # the command line revalidates with --device
    cfg = validate_config({**DEMO_CONFIG, "cue": {"kinds": ["mine"], "custom": {"mine": {
        "template": "hint {target}"}}}})
    assert json.dumps(validate_config(json.loads(json.dumps(cfg)))) == json.dumps(cfg)


@pytest.mark.parametrize("raw, field, message", [
    (_with(allow_pickle=1), "allow_pickle", "expected true or false, got int"),
    (_with(seed=True), "seed", "expected an integer, got bool"),
    (_with(probe={"batch_size": 2.0}), "probe.batch_size", "expected an integer, got float"),
    (_with(probe={"corrupt": {"keep_length": 1}}), "probe.corrupt.keep_length",
     "expected true or false, got int"),
    (_with(probe={"interventions": "truncate"}), "probe.interventions",
     "expected a list of a string, got str"),
    (_with(probe={"filler": {"colour": 1}}), "probe.filler.colour",
     "unknown key (known here: scope, unit)"),
    (_with(patching={"components": ["resid_pre", "q"]}), "patching.components[1]",
     "'q' is not one of resid_pre, attn_out, mlp_out"),
    (_with(resample={"top_p": 2}), "resample.top_p",
     "is 2.0, must be at most 1.0 (allowed: 0.01 to 1.0)"),
    (_with(generation={"temperature": float("nan")}), "generation.temperature",
     "must be a number, not NaN"),
    (_with(ray={"traces_per_task": 0}), "ray.traces_per_task",
     "is 0, must be at least 1 (allowed: 1 to 100000)"),
    (_with(data={"source": "jsonl"}), "data.path", "source jsonl needs a path"),
    (_with(data={"source": "reasoning_gym", "task": "t", "task_options": {"a": [1]}}),
     "data.task_options.a", "expected a string, number or boolean"),
    (_with(metrics={"pairs": [[1, 2]]}), "metrics.pairs[0][0]", "expected a string, got int"),
    (_with(name="x" * 200_001), "name", "over the limit of 200000"),
    (_with(cue={"kinds": ["m"], "custom": {"m": {"position": "after"}}}),
     "cue.custom.m.template", "a custom cue kind needs a template holding {target}"),
    (_with(cue={"kinds": ["m"], "custom": {"m": {"template": "no target"}}}),
     "cue.custom.m.template", "must hold {target}"),
    (_with(cue={"kinds": ["m"], "custom": {"m": {"template": "{target}", "position": "in"}}}),
     "cue.custom.m.position", "'in' is not one of before, after"),
    (_with(cue={"kinds": []}), "cue.kinds", "name at least one cue kind"),
    (_with(cue={"judge": "oracle"}), "cue.judge", "unknown cue judge 'oracle' (known: rule"),
    (_with(probe={"corrupt": {"corrupter": "shuffle"}}), "probe.corrupt",
     "unknown corrupter 'shuffle'"),
    (_with(probe={"paraphrase": {"source": "shuffle"}}), "probe.paraphrase",
     "unknown paraphraser 'shuffle' (known: auto, "),
    ({"seed": 1}, "checkpoints", "missing section"),
    ({"checkpoints": {"bad label": "x"}}, "checkpoints.bad label", "letters, digits"),
])
def test_a_bad_value_is_one_line_naming_its_key(raw, field, message):
    exc = _error(raw)
    assert exc.field == field and message in exc.message, str(exc)


def test_an_integer_is_taken_as_a_number():
    cfg = validate_config(_with(generation={"temperature": 1}, resample={"threshold": 0}))
    assert cfg["generation"]["temperature"] == 1.0 and isinstance(
        cfg["generation"]["temperature"], float)
    assert isinstance(cfg["resample"]["threshold"], float)


def test_limits_are_the_schemas_bounds():
    assert LIMITS["resample.samples"] == (2, 10_000) and LIMITS["seed"] == (0, 2**32 - 1)
    assert isinstance(LIMITS["resample.top_p"][0], float)  # a float key's bounds are floats
    for key, (low, high) in LIMITS.items():
        *sections, last = key.split(".")
        raw: dict = dict(BASE)
        node = raw
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = high
        validate_config(raw)
        node[last] = low - 1
        assert _error(raw).field == key


def test_a_registered_intervention_can_be_named_in_a_toml_config(tmp_path):
    @register_intervention("schema_test_noop")
    class Noop:
        def edits(self, trace, ctx):
            return [Edit("schema_test_noop", None, trace.steps)]

    @register_corrupter("schema_test_same")
    def same(trace, i, rng):
        return trace.steps[i]

    path = tmp_path / "run.toml"
    path.write_text('[checkpoints]\nbase = "organism:base"\n[probe]\n'
                    'interventions = ["truncate", "schema_test_noop"]\n'
                    '[probe.corrupt]\ncorrupter = "schema_test_same"\n')
    cfg = load_config(path)
    assert cfg["probe"]["interventions"] == ["truncate", "schema_test_noop"]
    assert cfg["probe"]["corrupt"] == {"corrupter": "schema_test_same"}
    path.write_text('[checkpoints]\nbase = "organism:base"\n[probe]\n'
                    'interventions = ["truncate", "schema_test_unregistered"]\n')
    with pytest.raises(FaithprobeError) as caught:
        load_config(path)
    assert caught.value.field == "probe.interventions[1]"
    assert "schema_test_noop" in caught.value.message  # the known list is the registry's


def test_a_custom_cue_is_stored_as_given_and_read_with_its_defaults():
    cfg = validate_config(_with(cue={"kinds": ["mine"], "custom": {
        "mine": {"template": "hint {target} "}}}))
    assert cfg["cue"]["custom"] == {"mine": {"template": "hint {target} "}}
    kind = custom_cue_kinds(cfg["cue"])["mine"]
    assert (kind.position, kind.mentions, kind.source) == ("before", (), "config")
