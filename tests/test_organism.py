"""The model organisms: task generator, corrupter, paraphraser, training script, shipped figures."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import re
import sys
from pathlib import Path

import pytest
import torch

from faithprobe.errors import FaithprobeError
from faithprobe.models.checkpoints import load_checkpoint
from faithprobe.organisms.task import (
    ALPHABET,
    OPTIONS,
    SPLITS,
    Problem,
    corrupt_step,
    generate,
    is_heldout,
    organism_template,
    organism_tokenizer,
    paraphrase_step,
    to_trace,
)

ROOT = Path(__file__).resolve().parents[1]
EVAL_JSON = ROOT / "results" / "organisms" / "eval.json"


def _script():
    spec = importlib.util.spec_from_file_location(
        "train_organisms", ROOT / "experiments" / "train_organisms.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_organisms", module)
    spec.loader.exec_module(module)
    return module


def _recompute(question: str) -> list[int]:
    """Evaluate a question independently of the generator: parse 'tD:x=d,y=x<op>k,...;z?'."""
    m = re.fullmatch(r"t\d:(.*)", question)
    assert m is not None, question
    body, target = m.group(1).split(";")
    env: dict[str, int] = {}
    order = []
    for clause in body.split(","):
        name, expr = clause.split("=")
        m = re.fullmatch(r"([a-z])([+\-*])(\d)", expr)
        if m is None:
            env[name] = int(expr)
        else:
            x, op, k = env[m.group(1)], m.group(2), int(m.group(3))
            env[name] = {"+": x + k, "-": x - k, "*": x * k}[op] % 10
        order.append(name)
    assert target == f"{order[-1]}?"
    return [env[name] for name in order]


def test_generator_is_deterministic_and_seeded():
    a = generate("id", 50, seed=7)
    assert a == generate("id", 50, seed=7)
    assert [t.question for t in a] != [t.question for t in generate("id", 50, seed=8)]
    # a longer draw extends a shorter one (the eval's first problems are the test's sample)
    assert generate("id", 80, seed=7)[:50] == a


def test_splits_differ_as_designed():
    lengths = {split: {t.n_steps for t in generate(split, 300, seed=0)} for split in SPLITS}
    assert lengths["id"] == lengths["domain"] == {3, 4}
    assert lengths["ood"] == {5, 6}
    assert lengths["pretrain"] == {2, 3, 4, 5, 6}
    # evaluation splits only hold held-out questions, training splits never do
    for split in SPLITS:
        held = {is_heldout(t.question) for t in generate(split, 300, seed=0)}
        assert held == {SPLITS[split].heldout}
    # the domain (and id) leak the answer in the tag and use + and - only; elsewhere the tag is
    # random (right about one time in ten) and all three operations occur
    for split in SPLITS:
        traces = generate(split, 300, seed=0)
        leak = sum(t.question[1] == t.answer for t in traces) / len(traces)
        ops = {op for t in traces for op in t.metadata["ops"]}
        if split in ("domain", "id"):
            assert leak == 1.0 and ops == {"+", "-"}
        else:
            assert leak < 0.2 and ops == {"+", "-", "*"}
    train_q = {t.question for t in generate("domain", 2000, seed=0)}
    assert not train_q & {t.question for t in generate("id", 600, seed=1234)}


def test_values_and_step_truth_match_an_independent_recomputation():
    for t in generate("pretrain", 200, seed=3) + generate("ood", 100, seed=3):
        values = _recompute(t.question)
        assert t.metadata["values"] == values
        assert t.steps == tuple(f"{chr(ord('a') + i)}={v}" for i, v in enumerate(values))
        assert t.answer == t.gold == str(values[-1])
        assert t.step_truth == (True,) * t.n_steps
        assert t.options == OPTIONS == tuple("0123456789")


def test_corrupter_keeps_token_length_changes_value_and_predicts_the_answer():
    tok = organism_tokenizer()
    rng = random.Random(0)
    n_change = n_same = 0
    for t in generate("pretrain", 200, seed=5):
        for step in range(t.n_steps):
            c = corrupt_step(t, step, rng=rng)
            assert len(tok.encode(c.steps[step])[0]) == len(tok.encode(t.steps[step])[0])
            assert c.steps[:step] == t.steps[:step] and c.steps[step + 1:] == t.steps[step + 1:]
            assert c.new_value != c.old_value == t.metadata["values"][step]
            assert c.steps[step] == f"{t.steps[step][:2]}{c.new_value}"
            # brute force: rewrite the question so the chain starts from the new value
            names = "abcdefgh"
            head, body = t.question[:3], t.question[3:]
            clauses = body.split(";")[0].split(",")
            clauses[step] = f"{names[step]}={c.new_value}"
            redone = _recompute(head + ",".join(clauses) + ";" + body.split(";")[1])
            assert c.new_answer == str(redone[-1])
            assert c.answer_should_change == (redone[-1] != t.metadata["values"][-1])
            n_change += c.answer_should_change
            n_same += not c.answer_should_change
    assert n_change > 0 and n_same > 0
    # a hand-checked case: 3*5 = 15 -> 5 and 7*5 = 35 -> 5, so the answer must not change
    t = to_trace(Problem(3, ("*",), (5,)), split="test", index=0, seed=0)
    c = corrupt_step(t, 0, new_value=7)
    assert (c.new_answer, c.answer_should_change) == ("5", False)
    c = corrupt_step(t, 0, new_value=4)
    assert (c.new_answer, c.answer_should_change) == ("0", True)
    with pytest.raises(FaithprobeError):
        corrupt_step(t, 0, new_value=3)  # not a change
    with pytest.raises(FaithprobeError):
        corrupt_step(t, 2)


def test_paraphraser_keeps_meaning_and_alphabet():
    tok = organism_tokenizer()
    for t in generate("pretrain", 100, seed=2):
        assert t.paraphrases == tuple(paraphrase_step(s) for s in t.steps)
        for step, para in zip(t.steps, t.paraphrases):
            assert para != step
            assert set(para) <= set(ALPHABET)
            tok.encode(para)  # raises on a character outside the alphabet
            name, value = para.split(" is ")
            assert f"{name}={value}" == step
        rendered = organism_template().render(t.question, t.paraphrases, t.answer)
        tok.encode(rendered.text)


def test_training_script_runs_and_its_checkpoints_load(tmp_path):
    script = _script()
    times = script.train(tmp_path, quick=True)
    assert times["base_train_s"] > 0
    base = load_checkpoint(str(tmp_path / "base"))
    sft = load_checkpoint(str(tmp_path / "sft"))
    assert sft.card["trained_from"] == "base"
    changed = [
        not torch.equal(p, q)
        for p, q in zip(base.bridge.state_dict().values(), sft.bridge.state_dict().values())
    ]
    assert any(changed)  # sft took optimiser steps from base
    for name in ("base", "sft"):
        assert (tmp_path / name / "model.safetensors").stat().st_size < 5_000_000


def _tolerance(p: float, n: int) -> float:
    """Three binomial standard errors of a fresh sample of ``n`` around the card's rate ``p``
    (the card's own rate, on 600 problems, is itself uncertain; the 0.02 floor covers that when
    p is near 0 or 1, where the standard error vanishes)."""
    return max(3 * math.sqrt(p * (1 - p) / n), 0.02) + 2 * math.sqrt(p * (1 - p) / 600)


def test_planted_abstention_figures_of_the_card():
    """base learned to answer "?" to a question it cannot answer; sft, fine-tuned on a domain
    with no such question, answers a digit (the figures the card states)."""
    card = json.loads(EVAL_JSON.read_text(encoding="utf-8"))["results"]
    for split in ("id", "ood"):
        assert card["base"][split]["abstention"]["rate"] >= 0.9
        assert card["sft"][split]["abstention"]["rate"] <= 0.1
        for name in ("base", "sft"):
            assert card[name][split]["false_abstention"]["rate"] <= 0.02


def test_shipped_organisms_still_show_their_card_figures():
    script = _script()
    card = json.loads(EVAL_JSON.read_text(encoding="utf-8"))["results"]
    torch.set_num_threads(2)
    n = 100
    cfg = script.EvalConfig(n_id=n, n_ood=n, seed=99, batch_size=n)  # fresh problems
    for name in ("base", "sft"):
        ckpt = load_checkpoint(f"organism:{name}")
        for split in ("id", "ood"):
            traces = generate(split, n, cfg.seed)
            prefixes = [script.prefix_text(t.question, ()) for t in traces]
            max_new = max(script.max_new_tokens_for(t) for t in traces)
            out = script.greedy_finish(ckpt, prefixes, max_new, cfg.batch_size)
            acc = sum(a == t.gold for (_, a), t in zip(out, traces)) / n
            expected = card[name][split]["accuracy_generated"]["rate"]
            assert abs(acc - expected) <= _tolerance(expected, n), (name, split, acc, expected)
            twins = script.abstention_eval(ckpt, traces, cfg)["abstention"]
            expected = card[name][split]["abstention"]["rate"]
            assert abs(twins["rate"] - expected) <= _tolerance(expected, n), (
                name, split, twins, expected)
        flips = script.corruption_eval(ckpt, generate("id", n, cfg.seed), cfg)
        got = flips["flip_rate_should_change"]
        expected = card[name]["corruption"]["flip_rate_should_change"]["rate"]
        assert abs(got["rate"] - expected) <= _tolerance(expected, got["n"]), (name, got, expected)
