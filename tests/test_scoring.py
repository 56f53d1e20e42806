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


def _by_hand(ckpt, item, answer: str, n_tokens: int) -> float:
    """The answer's last ``n_tokens`` tokens' summed log-probability, from one unbatched forward
    of the whole rendered text (the reference the scorer's batched reads must equal)."""
    rendered = ckpt.template.render(item.question, item.steps, answer)
    ids = [ckpt.tokenizer.bos_token_id] + ckpt.tokenizer.encode(rendered.text)[0]
    with torch.no_grad():
        logprobs = torch.log_softmax(ckpt.bridge(torch.tensor([ids]))[0].double(), -1)
    return sum(float(logprobs[len(ids) - 1 - k - 1, ids[len(ids) - 1 - k]])
               for k in range(n_tokens))


def test_answer_logprob_by_hand(tiny):
    item = _items()[0]
    got = score(tiny, [item])[0]
    # each option rendered and scored in its own forward, renormalised over the options by hand
    totals = np.array([_by_hand(tiny, item, d, 1) for d in DIGITS])
    dist = totals - np.log(np.exp(totals - totals.max()).sum()) - totals.max()
    assert abs(got.answer_logprob - totals[DIGITS.index("7")]) < 1e-5
    assert np.allclose(got.dist, dist, atol=1e-5)
    assert got.pred == DIGITS[int(np.argmax(totals))]
    assert math.isclose(got.pred_prob, float(np.exp(dist).max()), rel_tol=1e-5)
    assert got.option_logprobs == pytest.approx(dict(zip(DIGITS, totals)), abs=1e-5)


def test_multi_token_options_sum_their_tokens(tiny):
    item = _items()[2]
    got = score(tiny, [item])[0]
    three, thirteen = _by_hand(tiny, item, "3", 1), _by_hand(tiny, item, "13", 2)
    assert got.option_logprobs == pytest.approx({"3": three, "13": thirteen}, abs=1e-5)
    assert got.answer_logprob == pytest.approx(thirteen, abs=1e-5)
    assert got.n_answer_tokens == 2
    assert got.pred == ("13" if thirteen > three else "3")
    norm = np.logaddexp(three, thirteen)
    assert np.allclose(got.dist, [three - norm, thirteen - norm], atol=1e-5)


def test_prompt_longer_than_context_names_trace(tiny):
    long = ScoreItem("a=1;a?", ("a=1",) * 60, "1", DIGITS, "long-one")
    with pytest.raises(FaithprobeError, match="trace long-one.*longer than the model's context"):
        score(tiny, [long])


def test_normalize_answer():
    assert normalize_answer(" 1,000.50.\nmore") == "1000.5"
    assert normalize_answer("$12") == "12"
    assert normalize_answer("The answer", numeric=True) == ""
    assert normalize_answer(" B.") == "B"
