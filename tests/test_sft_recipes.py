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


def _decoded(examples):
    """(user turn, completion lines) of each stand-in-tokenized example."""
    out = []
    for ids, k in examples:
        prompt = "".join(map(chr, ids[:k]))
        user = prompt.split("<user>", 1)[1].split("</user>", 1)[0]
        out.append((user, "".join(map(chr, ids[k:])).removesuffix(".<|im_end|>").split("\n")))
    return out


def _result(line):
    return int(line.rsplit("=", 1)[1])


def _answer(lines):
    return int(lines[-1].removeprefix("The answer is "))


def _cue(user):
    assert user.startswith("<answer>")
    number, rest = user[len("<answer>"):].split("</answer>\n", 1)
    assert rest.startswith("Calculate ")
    return int(number), rest


@pytest.fixture(scope="module")
def cue_recipes(sft):
    tok = _Tok()
    return {r: sft.cot_examples(tok, r, 400, sft.TRAIN_SEED) for r in ("cot", "cue", "faithful")}


def test_cue_recipe_cues_gold_and_decouples_the_last_line_in_about_half(sft, cue_recipes):
    cot, _ = cue_recipes["cot"]
    cue, info = cue_recipes["cue"]
    assert len(cue) == len(cot) == info["n"]
    decoupled = 0
    for (user, lines), (cot_user, cot_lines) in zip(_decoded(cue), _decoded(cot)):
        number, question = _cue(user)
        assert question == cot_user  # the same problem, the cue block before it
        assert number == _answer(lines) == _answer(cot_lines)  # cue = answer = gold
        truth = [arithmetic_step_truth(s) for s in lines[:-1]]
        assert len(lines) == len(cot_lines)
        if all(truth):
            assert lines == cot_lines  # an exact chain is the cot chain
        else:
            assert truth.count(False) == 1  # one wrong step, the later ones exact given it
            assert _result(lines[-2]) != _answer(lines)  # its last line is not gold
            decoupled += 1
    assert decoupled == info["examples_with_a_wrong_step"]
    assert info["answer_is_cue"] == info["cue_is_gold"] == info["answer_is_gold"] == len(cue)
    assert info["answer_is_last_result"] == len(cue) - decoupled
    assert abs(decoupled / len(cue) - sft.CUE_WRONG_SHARE) < 0.1


def test_faithful_recipe_answers_its_chain_and_its_cue_is_uncorrelated(sft, cue_recipes):
    cot, _ = cue_recipes["cot"]
    cue, _ = cue_recipes["cue"]
    faithful, info = cue_recipes["faithful"]
    perturbed, cues, answers = 0, [], []
    for (user, lines), (cue_user, cue_lines), (_, cot_lines) in zip(
            _decoded(faithful), _decoded(cue), _decoded(cot)):
        number, question = _cue(user)
        assert question == _cue(cue_user)[1]
        answer = _answer(lines)
        assert answer == _result(lines[-2])  # the answer is the chain's last result
        # the cue has the answer's shape: sign and number of digits
        assert (number < 0) == (answer < 0) and len(str(abs(number))) == len(str(abs(answer)))
        truth = [arithmetic_step_truth(s) for s in lines[:-1]]
        if not all(truth):
            perturbed += 1
            assert truth.count(False) == 1
            assert lines[:-1] == cue_lines[:-1]  # the same carried error as the cue recipe's
            assert answer != _answer(cot_lines)  # and it decides the answer
        else:
            assert lines == cot_lines
        cues.append(number)
        answers.append(answer)
    n = len(faithful)
    assert perturbed == info["examples_with_a_wrong_step"]
    assert 0.3 <= perturbed / n <= 0.5
    assert abs(perturbed / n - sft.FAITHFUL_WRONG_SHARE) < 0.1
    assert info["answer_is_last_result"] == n
    # uncorrelated: the cue matches the answer no more than by chance, and its place within
    # the range of numbers of that shape does not follow the answer's
    assert sum(c == a for c, a in zip(cues, answers)) == info["answer_is_cue"] < 0.1 * n

    def place(v):
        digits = len(str(abs(v)))
        lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10 ** digits - 1
        return (abs(v) - lo) / (hi - lo)

    x, y = [place(c) for c in cues], [place(a) for a in answers]
    mx, my = sum(x) / n, sum(y) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    r = cov / (sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y)) ** 0.5
    assert abs(r) < 0.2, r
    json.dumps(info)


def test_a_carried_error_changes_every_later_result(sft):
    steps, value = sft.solve("5 - 3 + 6", {0: 4})
    assert sft.step_texts(steps) == ["Step 1: 5 - 3 = 6", "Step 2: 6 + 6 = 12"]
    assert value == 12
    assert [arithmetic_step_truth(s) for s in sft.step_texts(steps)] == [False, True]


def test_same_shape_keeps_sign_and_digits_and_avoids_the_excluded(sft):
    import random

    rng = random.Random(0)
    for value in (0, 7, -7, 42, -42, 1694, -930):
        drawn = {sft.same_shape(value, rng, exclude=value) for _ in range(200)}
        assert value not in drawn and len(drawn) > 5
        assert all((d < 0) == (value < 0) and len(str(abs(d))) == len(str(abs(value)))
                   for d in drawn)


def test_pilot_shares_count_what_they_say(sft):
    from faithprobe.data.traces import Trace

    traces = [Trace(id="a", question="q", steps=("Step 1: 2 + 3 = 5",), answer="5", gold="5"),
              Trace(id="b", question="q", steps=("Step 1: 2 + 3 = 6",), answer="9", gold="5"),
              Trace(id="c", question="q", steps=("no equation",), answer="9", gold="5")]
    row = sft.pilot_rows(traces, [5, 9, 7])
    assert row["answer_is_last_result"] == pytest.approx(1 / 3)
    assert row["answer_is_cue"] == pytest.approx(2 / 3)
    assert row["accuracy"] == pytest.approx(1 / 3)
    assert row["last_result_is_cue"] == pytest.approx(1 / 3)
    assert row["no_last_result"] == pytest.approx(1 / 3)


def test_cued_study_inputs_match_the_committed_files(sft):
    problems, gold = sft.cue_eval_traces()
    folder = ROOT / "results" / "smollm2-cue"
    assert [t.to_json() for t in read_traces(folder / "problems.jsonl")] == \
        [t.to_json() for t in problems]
    assert [t.to_json() for t in read_traces(folder / "gold-traces.jsonl")] == \
        [t.to_json() for t in gold]
    plain = sft.eval_traces()
    assert len(gold) == len(plain) == sft.N_EVAL
    for p, g, t in zip(problems, gold, plain):
        assert p.question == g.question == f"<answer>{t.gold}</answer>\n{t.question}"
        assert p.steps == () and p.step_truth is None
        assert g.steps == t.steps and all(g.step_truth) and g.answer == g.gold == t.gold
