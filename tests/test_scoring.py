from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from faithprobe.errors import FaithprobeError
from faithprobe.models.scoring import ScoreItem, normalize_answer, score

DIGITS = tuple("0123456789")


def _items():
    return [
        ScoreItem("a=3,b=a+4;b?", ("a=3", "b=7"), "7", DIGITS, "t1"),
        ScoreItem("a=3;a?", (), "3", None, "t2"),
        ScoreItem("a=3;a?", ("a=3",), "13", ("3", "13"), "t3"),
        ScoreItem("a=12,b=a*2,c=b+1,d=c-4;d?", ("a=12", "b=24", "c=25", "d=21"), "21", None, "t4"),
    ]


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_equals_unbatched(tiny, side):
    batched = score(tiny, _items(), padding_side=side, batch_size=16)
    single = [score(tiny, [it], batch_size=1)[0] for it in _items()]
    for b, s in zip(batched, single):
        assert abs(b.answer_logprob - s.answer_logprob) < 1e-5
        assert b.pred == s.pred
        assert np.allclose(b.dist, s.dist, atol=1e-5)


def test_answer_logprob_by_hand(tiny):
    item = _items()[0]
    got = score(tiny, [item])[0]
    rendered = tiny.template.render(item.question, item.steps, "7")
    ids = [tiny.tokenizer.bos_token_id] + tiny.tokenizer.encode(rendered.text)[0]
    logits = tiny.bridge(torch.tensor([ids]))
    lp = torch.log_softmax(logits[0, -2], -1)[ids[-1]]
    assert abs(got.answer_logprob - float(lp)) < 1e-5
    probs = np.exp(got.dist)
    assert abs(probs.sum() - 1) < 1e-6
    assert got.pred == DIGITS[int(np.argmax(got.dist))]
    assert math.isclose(got.pred_prob, probs.max(), rel_tol=1e-6)


def test_multi_token_options_sum_their_tokens(tiny):
    got = score(tiny, [_items()[2]])[0]
    assert set(got.option_logprobs) == {"3", "13"}
    assert got.answer_logprob == got.option_logprobs["13"]
    assert got.n_answer_tokens == 2


def test_prompt_longer_than_context_names_trace(tiny):
    long = ScoreItem("a=1;a?", ("a=1",) * 60, "1", DIGITS, "long-one")
    with pytest.raises(FaithprobeError, match="trace long-one.*longer than the model's context"):
        score(tiny, [long])


def test_normalize_answer():
    assert normalize_answer(" 1,000.50.\nmore") == "1000.5"
    assert normalize_answer("$12") == "12"
    assert normalize_answer("The answer", numeric=True) == ""
    assert normalize_answer(" B.") == "B"
