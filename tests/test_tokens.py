from __future__ import annotations

import pytest

from faithprobe.data.prompts import PromptTemplate, step_segment
from faithprobe.data.tokens import CharTokenizer, align
from faithprobe.errors import FaithprobeError


def _check_alignment(tok, template, question, steps, answer):
    rendered = template.render(question, steps, answer, tokenizer=tok)
    aligned = align(rendered.text, rendered.segments, tok)
    n_prefix = len(tok.prefix_ids)
    _ids, offsets = tok.encode(rendered.text)
    for name, start, end in rendered.segments:
        if end == start:
            continue
        t0, t1 = aligned.span(name)
        # every token of the span starts inside the segment (the documented rule)
        for t in range(t0, t1):
            assert start <= offsets[t - n_prefix][0] < end, (name, t)
    # spans are contiguous and cover every token after the prefix
    spans = sorted(aligned.spans.values())
    assert spans[0][0] == n_prefix and spans[-1][1] == len(aligned.ids)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    return rendered, aligned


def test_char_alignment_exact():
    tok = CharTokenizer("abcns=0123456789;?\n :")
    tpl = PromptTemplate(suffix="\nans:", answer_sep=" ")
    rendered, aligned = _check_alignment(tok, tpl, "a=1;b?", ["a=1", "b=2"], "2")
    assert aligned.ids[0] == tok.bos_token_id
    s0, s1 = aligned.span(step_segment(1))
    assert tok.decode(aligned.ids[s0:s1]) == "\nb=2"
    assert tok.decode(aligned.ids[slice(*aligned.span("answer"))]) == " 2"


def test_char_tokenizer_rejects_unknown_character():
    with pytest.raises(FaithprobeError, match="not in the tokenizer's alphabet"):
        CharTokenizer("abc").encode("abd")


def test_segment_inside_a_token_is_refused():
    class Words:
        """Whitespace-free word tokenizer: 'ab' is one token."""

        prefix_ids: list[int] = []
        name = "words"

        def encode(self, text, markup=()):
            return [0], [(0, len(text))]

    with pytest.raises(FaithprobeError, match="has no token of its own"):
        align("ab", [("x", 0, 1), ("y", 1, 2)], Words())


def test_segments_must_tile():
    tok = CharTokenizer("ab")
    with pytest.raises(FaithprobeError, match="do not tile"):
        align("ab", [("x", 0, 1), ("y", 0, 2)], tok)


@pytest.mark.slow
def test_smollm2_bpe_alignment(smollm2_tokenizer):
    tpl = PromptTemplate(chat=True)
    steps = ["Tom has 3.50 dollars.", "He buys 2 apples at $1.25 each, i.e. 2.50.",
             "So 3.50-2.50=1.00 remains."]
    rendered, aligned = _check_alignment(smollm2_tokenizer, tpl, "How much is left?", steps,
                                         "1")
    assert "<|im_start|>user" in rendered.text
    text = smollm2_tokenizer.decode(aligned.ids[slice(*aligned.span(step_segment(2)))])
    assert text.strip() == steps[2]
    plain = PromptTemplate()
    _check_alignment(smollm2_tokenizer, plain, "Q: 12+7?", ["12+7=19"], "19")
