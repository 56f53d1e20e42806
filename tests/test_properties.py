"""Property-based tests: any input either parses and round-trips, or raises FaithprobeError."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faithprobe.data.prompts import PromptTemplate
from faithprobe.data.tokens import CharTokenizer, align
from faithprobe.data.traces import Trace, split_steps
from faithprobe.errors import FaithprobeError

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
texts = st.text(max_size=200)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
trace_like = st.fixed_dictionaries(
    {"id": texts | st.integers(), "question": texts, "steps": st.lists(texts, max_size=5) | texts,
     "answer": texts | st.integers()},
    optional={"options": st.lists(texts, max_size=4), "gold": texts | st.none(),
              "step_truth": st.lists(st.booleans() | st.integers(), max_size=5),
              "paraphrases": st.lists(texts, max_size=5), "metadata": json_values,
              "extra": json_values},
)


@SETTINGS
@given(obj=trace_like | json_values)
def test_trace_parser_parses_and_round_trips_or_refuses(obj):
    try:
        trace = Trace.from_json(obj, source="prop.jsonl", line=1)
    except FaithprobeError as exc:
        assert "\n" not in str(exc)
        return
    again = Trace.from_json(json.loads(json.dumps(trace.to_json())))
    assert again == trace


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
    try:
        aligned = align(rendered.text, rendered.segments, tok)
    except FaithprobeError:
        return
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

    def encode(self, text):
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
