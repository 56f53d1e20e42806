"""Property-based tests with specific oracles: a generator of valid traces (every field within
the README's rules) must round-trip through JSON and a trace file; a generator of invalid ones
(one named defect planted in a valid trace) must be refused naming exactly that field; a config
value outside its documented range must be refused naming its key."""

from __future__ import annotations

import json
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faithprobe.data.prompts import PromptTemplate
from faithprobe.data.tokens import CharTokenizer, align
from faithprobe.data.traces import (
    MAX_FIELD_CHARS,
    MAX_METADATA_DEPTH,
    MAX_STEPS,
    Trace,
    read_traces,
    split_steps,
    write_traces,
)
from faithprobe.errors import FaithprobeError
from faithprobe.run.config import LIMITS, validate_config

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
texts = st.text(max_size=200)
# valid text: no surrogates, no NUL, at least one visible character
visible = st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Zs", "Zl", "Zp"))
valid_text = st.builds(lambda a, b, c: a + b + c,
                       st.text(st.characters(blacklist_categories=("Cs",),
                                             blacklist_characters="\x00"), max_size=20),
                       st.text(visible, min_size=1, max_size=10),
                       st.text(st.characters(blacklist_categories=("Cs",),
                                             blacklist_characters="\x00"), max_size=20))
json_leaf = (st.none() | st.booleans() | st.integers(-2**53, 2**53)
             | st.floats(allow_nan=False, allow_infinity=False)
             | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                       max_size=30))
meta_keys = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                    max_size=8)
plain_json = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    meta_keys, inner, max_size=3), max_leaves=10)


@st.composite
def valid_traces(draw) -> dict:
    """A trace object as a file holds it, in canonical form (what to_json writes back)."""
    steps = draw(st.lists(valid_text, max_size=5))
    answer = draw(valid_text)
    obj = {"id": draw(valid_text), "question": draw(valid_text), "steps": steps,
           "answer": answer}
    if draw(st.booleans()):
        others = draw(st.lists(valid_text, min_size=1, max_size=4))
        options = list(dict.fromkeys([answer, *others]))
        if len(options) >= 2:
            obj["options"] = draw(st.permutations(options))
    if draw(st.booleans()):
        obj["gold"] = draw(valid_text)
    if draw(st.booleans()):
        obj["step_truth"] = draw(st.lists(st.booleans(), min_size=len(steps),
                                          max_size=len(steps)))
    if draw(st.booleans()):
        obj["paraphrases"] = draw(st.lists(valid_text, min_size=len(steps),
                                           max_size=len(steps)))
    if draw(st.booleans()):
        metadata = draw(st.dictionaries(meta_keys, plain_json, min_size=1, max_size=4))
        obj["metadata"] = metadata
    return obj


@SETTINGS
@given(obj=valid_traces())
def test_valid_traces_round_trip_through_json_and_a_file(obj):
    trace = Trace.from_json(json.loads(json.dumps(obj)), source="prop.jsonl", line=1)
    assert trace.to_json() == obj
    assert Trace(**{k: tuple(v) if isinstance(v, list) and k != "metadata" else v
                    for k, v in obj.items()}) == trace  # the Python API agrees
    fd, name = tempfile.mkstemp(suffix=".jsonl")
    os.close(fd)
    try:
        write_traces(name, [trace])
        assert read_traces(name) == [trace]
    finally:
        os.unlink(name)


def _nest(depth: int):
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


# (defect, how it is planted in a valid trace object, the field the refusal must name)
DEFECTS = [
    ("id not a string", lambda o: o.update(id=5), "id"),
    ("blank id", lambda o: o.update(id="  \t"), "id"),
    ("invisible id", lambda o: o.update(id="\u200b\u2060"), "id"),
    ("question is null", lambda o: o.update(question=None), "question"),
    ("NUL in question", lambda o: o.update(question="a\x00b"), "question"),
    ("surrogate in question", lambda o: o.update(question="a\ud800"), "question"),
    ("question too long", lambda o: o.update(question="q" * (MAX_FIELD_CHARS + 1)), "question"),
    ("steps not a list", lambda o: o.update(steps="a=1"), "steps"),
    ("too many steps", lambda o: o.update(steps=["s"] * (MAX_STEPS + 1)), "steps"),
    ("a step not a string", lambda o: o.update(steps=[*o["steps"], 3]), "steps[{n}]"),
    ("a blank step", lambda o: o.update(steps=[*o["steps"], " \n"]), "steps[{n}]"),
    ("answer missing", lambda o: o.pop("answer"), "answer"),
    ("unknown field", lambda o: o.update(colour="red"), "colour"),
    ("one option", lambda o: o.update(options=[o["answer"]]), "options"),
    ("options repeat", lambda o: o.update(options=[o["answer"], o["answer"]]), "options"),
    ("answer not an option", lambda o: o.update(options=[o["answer"] + "x",
                                                         o["answer"] + "y"]), "answer"),
    ("gold not a string", lambda o: o.update(gold=7), "gold"),
    ("step_truth too long", lambda o: o.update(step_truth=[True] * (len(o["steps"]) + 1)),
     "step_truth"),
    ("step_truth of strings", lambda o: o.update(step_truth=["yes"] * max(1, len(o["steps"]))),
     "step_truth"),  # checked as a type before it is counted against the steps
    ("paraphrases too long", lambda o: o.update(paraphrases=["p"] * (len(o["steps"]) + 1)),
     "paraphrases"),
    ("metadata a list", lambda o: o.update(metadata=[1]), "metadata"),
    ("metadata too deep", lambda o: o.update(metadata=_nest(MAX_METADATA_DEPTH + 1)),
     "metadata"),
    ("metadata string too long", lambda o: o.update(metadata={"note": "x" * (
        MAX_FIELD_CHARS + 1)}), "metadata.note"),
    ("metadata surrogate", lambda o: o.update(metadata={"k": ["ok", "\udc00"]}),
     "metadata.k[1]"),
]


@SETTINGS
@given(obj=valid_traces(), defect=st.sampled_from(DEFECTS))
def test_invalid_traces_are_refused_naming_the_field(obj, defect):
    _, plant, expected = defect
    n_steps = len(obj["steps"])
    plant(obj)
    with pytest.raises(FaithprobeError) as caught:
        Trace.from_json(obj, source="prop.jsonl", line=7)
    exc = caught.value
    assert exc.field == expected.format(n=n_steps), (defect[0], str(exc))
    assert exc.source == "prop.jsonl" and exc.line == 7 and "\n" not in str(exc)


def test_non_json_metadata_from_python_is_refused_naming_the_path():
    base = dict(id="t", question="q", steps=("s",), answer="a")
    for metadata, field in [({"x": float("nan")}, "metadata.x"), ({"x": {1, 2}}, "metadata.x"),
                            ({3: "three"}, "metadata"), ({"x": [float("inf")]}, "metadata.x[0]"),
                            (_nest(10_000), "metadata")]:
        with pytest.raises(FaithprobeError) as caught:
            Trace(**base, metadata=metadata)
        assert caught.value.field == field


any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12)
KNOWN = {"id", "question", "steps", "answer", "options", "gold", "step_truth", "paraphrases",
         "metadata"}


@SETTINGS
@given(obj=any_json | st.fixed_dictionaries(
    {"id": texts | st.integers(), "question": texts, "steps": st.lists(texts, max_size=5) | texts,
     "answer": texts | st.integers()},
    optional={"options": st.lists(texts, max_size=4), "gold": texts | st.none(),
              "step_truth": st.lists(st.booleans() | st.integers(), max_size=5),
              "paraphrases": st.lists(texts, max_size=5), "metadata": any_json,
              "extra": any_json}))
def test_arbitrary_json_parses_and_round_trips_or_names_what_is_wrong(obj):
    try:
        trace = Trace.from_json(obj, source="prop.jsonl", line=1)
    except FaithprobeError as exc:
        assert exc.source == "prop.jsonl" and exc.line == 1 and "\n" not in str(exc)
        if not isinstance(obj, dict):
            assert exc.field is None and "must be a JSON object" in exc.message
        else:  # a field of the trace, or the unknown key itself
            root = (exc.field or "").split("[")[0].split(".")[0]
            assert root in KNOWN or exc.field in {str(k)[:60] for k in obj}, str(exc)
        return
    assert Trace.from_json(json.loads(json.dumps(trace.to_json()))) == trace


@SETTINGS
@given(key=st.sampled_from(sorted(LIMITS)), data=st.data())
def test_config_values_outside_their_range_name_the_key(key, data):
    low, high = LIMITS[key]
    is_float = isinstance(low, float)
    outside = data.draw(st.floats(high + 1e-3, 1e12) | st.floats(-1e12, low - 1e-3)) if is_float \
        else data.draw(st.integers(high + 1, 2**62) | st.integers(-2**62, low - 1))
    inside = data.draw(st.floats(low, high) if is_float else st.integers(low, high))

    def config(value):
        raw: dict = {"checkpoints": {"base": "organism:base"}}
        *sections, last = key.split(".")
        node = raw
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = value
        return raw

    with pytest.raises(FaithprobeError) as caught:
        validate_config(config(outside), source="prop.toml")
    assert caught.value.field == key and caught.value.source == "prop.toml"
    cfg = validate_config(config(inside), source="prop.toml")
    node = cfg
    for part in key.split("."):
        node = node[part]
    assert node == inside


@SETTINGS
@given(text=texts, mode=st.sampled_from(["auto", "lines", "markers", "sentences"]))
def test_splitter_offsets_are_exact(text, mode):
    steps = split_steps(text, mode)
    last = 0
    for s in steps:
        assert text[s.start : s.end] == s.text and s.text == s.text.strip() and s.text
        assert s.start >= last
        last = s.end
    # no non-space character is lost between steps
    covered = "".join(s.text for s in steps)
    assert sorted(c for c in covered if not c.isspace()) == sorted(
        c for c in text if not c.isspace())


ALPHA = "ab=1+;?\n :."
small_texts = st.text(alphabet=ALPHA, min_size=1, max_size=12).filter(lambda s: s.strip())


@SETTINGS
@given(question=small_texts, steps=st.lists(small_texts, max_size=5), answer=small_texts,
       sep=st.sampled_from(["\n", " ", ";"]))
def test_alignment_covers_every_token_once(question, steps, answer, sep):
    tok = CharTokenizer(ALPHA)
    tpl = PromptTemplate(step_sep=sep, suffix="\n:", answer_sep=" ")
    rendered = tpl.render(question, steps, answer)
    aligned = align(rendered.text, rendered.segments, tok)  # one token a character: never fails
    spans = sorted(v for v in aligned.spans.values())
    assert spans[0][0] == 1 and spans[-1][1] == len(aligned.ids)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    for name, start, end in rendered.segments:
        if end > start:
            t0, t1 = aligned.span(name)
            assert tok.decode(aligned.ids[t0:t1]) == rendered.text[start:end]


class _Words:
    """A word-level tokenizer whose tokens swallow the space before them (like BPE's 'Ġ')."""

    prefix_ids: list[int] = []
    name = "words"

    def encode(self, text, markup=()):
        import re

        spans = [(m.start(), m.end()) for m in re.finditer(r"\s*\S+|\s+$", text)]
        return list(range(len(spans))), spans


@SETTINGS
@given(question=small_texts, steps=st.lists(small_texts, max_size=4), answer=small_texts)
def test_alignment_with_merging_tokens_follows_the_rule(question, steps, answer):
    tpl = PromptTemplate(step_sep=" ", reasoning_prefix=" ", suffix=" so", answer_sep=" ")
    rendered = tpl.render(question, steps, answer)
    tok = _Words()
    _, offsets = tok.encode(rendered.text)
    try:
        aligned = align(rendered.text, rendered.segments, tok)
    except FaithprobeError as exc:
        assert "has no token of its own" in str(exc)
        return
    for name, start, end in rendered.segments:
        if end > start:
            t0, t1 = aligned.span(name)
            assert all(start <= offsets[t][0] < end for t in range(t0, t1))
