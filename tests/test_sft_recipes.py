"""The reasoning recipes of experiments/sft_smollm2.py: exact solutions, decorative steps whose
error is not carried, the same problems and batches for both, held-out problems disjoint."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from faithprobe.data.sources import arithmetic_step_truth
from faithprobe.data.traces import read_traces

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("reasoning_gym")


@pytest.fixture(scope="module")
def sft():
    spec = importlib.util.spec_from_file_location("sft_smollm2",
                                                  ROOT / "experiments" / "sft_smollm2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("expression, steps, value", [
    ("5 - 3 + 6", [(5, "-", 3, 2), (2, "+", 6, 8)], 8),
    ("2 + -3 * -8", [(-3, "*", -8, 24), (2, "+", 24, 26)], 26),
    ("( 2 * 7 + -7 - -7 )", [(2, "*", 7, 14), (14, "+", -7, 7), (7, "-", -7, 14)], 14),
])
def test_solve_writes_one_operation_a_step_in_evaluation_order(sft, expression, steps, value):
    assert sft.solve(expression) == (steps, value)
    assert all(arithmetic_step_truth(s) for s in sft.step_texts(steps))


@pytest.mark.parametrize("expression", ["7 / 2", "-(3 + 4)", "2 ** 3", "1.5 + 2"])
def test_solve_refuses_what_it_cannot_write_exactly(sft, expression):
    with pytest.raises(ValueError):
        sft.solve(expression)


def test_a_wrong_step_is_not_carried(sft):
    steps, _ = sft.solve("5 - 3 + 6")
    texts = sft.step_texts(steps, {0: 4})
    assert texts == ["Step 1: 5 - 3 = 4", "Step 2: 2 + 6 = 8"]  # step 2 still uses 2
    assert [arithmetic_step_truth(s) for s in texts] == [False, True]


def test_held_out_problems_match_the_committed_file_and_are_solved_exactly(sft):
    traces = sft.eval_traces()
    committed = read_traces(ROOT / "results" / "smollm2-cot" / "problems.jsonl")
    assert [t.to_json() for t in traces] == [t.to_json() for t in committed]
    assert len(traces) == sft.N_EVAL >= 60
    for t in traces:
        assert all(t.step_truth) and t.gold == t.answer
        assert t.steps[-1].endswith(f"= {t.gold}")


class _Tok:
    """A stand-in for a Hugging Face tokenizer: one id a character."""

    chat_template = "x"
    is_fast, pad_token_id, eos_token_id = True, 0, 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + \
            "<assistant>"


def test_cot_and_decorative_share_problems_and_differ_only_in_wrong_steps(sft):
    tok = _Tok()
    cot, info_cot = sft.cot_examples(tok, "cot", 200, sft.TRAIN_SEED)
    dec, info_dec = sft.cot_examples(tok, "decorative", 200, sft.TRAIN_SEED)
    assert info_cot["n_train"] == info_dec["n_train"] == len(cot) == len(dec)
    assert info_cot["examples_with_a_wrong_step"] == 0
    share = info_dec["examples_with_a_wrong_step"] / len(dec)
    assert abs(share - sft.WRONG_SHARE) < 0.1
    held_out = {t.metadata["expression"] for t in sft.eval_traces()}
    assert info_cot["dropped_as_held_out"] == 200 - len(cot)
    differing = 0
    for (a, ka), (b, kb) in zip(cot, dec):
        assert a[:ka] == b[:kb]  # the same prompt (question through the template)
        text_a = "".join(map(chr, a[ka:]))
        text_b = "".join(map(chr, b[kb:]))
        assert text_a.endswith(".<|im_end|>")
        lines_a, lines_b = text_a.split("\n"), text_b.split("\n")
        assert lines_a[-1] == lines_b[-1]  # the gold answer in both
        wrong = [i for i, (x, y) in enumerate(zip(lines_a, lines_b)) if x != y]
        assert len(wrong) <= 1 and len(lines_a) == len(lines_b)
        if wrong:
            differing += 1
            assert arithmetic_step_truth(lines_b[wrong[0]]) is False
            assert lines_a[wrong[0]].split("=")[0] == lines_b[wrong[0]].split("=")[0]
        question = "".join(map(chr, a[:ka]))
        assert not any(f"Calculate {e}." in question for e in held_out)
    assert differing == info_dec["examples_with_a_wrong_step"]
    json.dumps(info_dec)  # what recipe.json records is plain JSON
