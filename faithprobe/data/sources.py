"""Where traces come from: a JSONL file, the organism task, or reasoning-gym.

``load_traces(data_config)`` returns the traces a run probes. For reasoning-gym's
``gsm_symbolic`` the gold step-by-step solution (``metadata["answer_cot"]``) becomes the steps,
with exact per-step truth from :func:`arithmetic_step_truth` (None for a step with nothing to
check: unjudged, and KI leaves it out); tasks without a solution give
traces with no steps (use ``traces = "generate"`` to have each checkpoint write its own).

A run probes at most ``MAX_TRACES`` traces: a JSONL file is read no further than its ``count``
(or refused when it holds more than ``MAX_TRACES`` and no count is given), and the generators
are asked for no more than ``count``, itself at most ``MAX_TRACES`` (``faithprobe.run.config``).
"""

from __future__ import annotations

import ast
import itertools
import operator
import re
from typing import Any

from faithprobe.data.traces import Trace, iter_traces, split_steps
from faithprobe.errors import FaithprobeError

__all__ = ["ARITHMETIC_JUDGE", "arithmetic_step_truth", "load_traces"]

DEFAULT_COUNT = 100  # problems drawn from a generator when the config gives no count
MAX_TRACES = 100_000  # traces of one run (the limit of data.count)
_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv}
_EQUATION = re.compile(r"([\d.\s()+\-*/×x]+?)\s*=\s*\$?(-?[\d,]*\.?\d+)")


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        return _BIN[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    raise ValueError("not arithmetic")


ARITHMETIC_JUDGE = "arithmetic equations"  # the judge named in KI records of these truths


def arithmetic_step_truth(step: str) -> bool | None:
    """Whether every written equation ``expr = value`` in a step holds; None (unjudged) when the
    step holds no equation that computes something, so a step with nothing to check never
    counts as correct knowledge. Units and currency signs around the numbers are ignored."""
    text = re.sub(r"[£$€]", "", step).replace("×", "*")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # 400,000 -> 400000
    text = re.sub(r"(\d)\s*x\s*(\d)", r"\1*\2", text)
    text = re.sub(r"/[a-zA-Z]+", "", text)  # "per unit" (/day, /month) is a unit, not a division
    text = re.sub(r"(?<=\d)\s*[a-zA-Z]+", " ", text)  # units after numbers
    checked = False
    for m in _EQUATION.finditer(text):
        expr, value = m.group(1).strip(), m.group(2).replace(",", "")
        if not re.search(r"\d\s*[-+*/]\s*\(?\s*-?\s*\d", expr):
            continue  # a bare number restated is not a computation
        try:
            got = _eval(ast.parse(expr, mode="eval"))
        except (ValueError, SyntaxError, ZeroDivisionError):
            continue
        if abs(got - float(value)) > 1e-9 * max(1.0, abs(got)):  # float noise, not a digit
            return False
        checked = True
    return True if checked else None


def _reasoning_gym(task: str, count: int, seed: int, options: dict[str, Any] | None = None
                   ) -> list[Trace]:
    try:
        import reasoning_gym
    except ImportError:
        raise FaithprobeError("needs reasoning-gym (pip install -e '.[data]')",
                              field="data.source") from None
    try:
        dataset = reasoning_gym.create_dataset(task, size=count, seed=seed, **(options or {}))
    except Exception as exc:  # noqa: BLE001 - reasoning-gym raises its own kinds
        raise FaithprobeError(f"reasoning-gym cannot build task {task!r} ({exc})",
                              field="data.task") from None
    traces = []
    for i, entry in enumerate(dataset):
        meta: dict[str, Any] = entry.get("metadata", {}) or {}
        cot = meta.get("answer_cot")
        steps: tuple[str, ...] = ()
        if isinstance(cot, str):
            body = cot.split("####")[0]
            steps = tuple(s.text for s in split_steps(body, "lines"))
        answer = str(entry["answer"]).strip()
        traces.append(Trace(
            id=f"{task}-{seed}-{i}",
            question=entry["question"],
            steps=steps,
            answer=answer,
            gold=answer,
            step_truth=tuple(arithmetic_step_truth(s) for s in steps) if steps else None,
            metadata={"task": task, "source": "reasoning_gym", "seed": seed, "index": i,
                      **({"step_truth_judge": ARITHMETIC_JUDGE} if steps else {})},
        ))
    return traces


def load_traces(data: dict[str, Any]) -> list[Trace]:
    """The traces a run config's ``[data]`` section names."""
    source = data["source"]
    count = data.get("count")
    if count is not None and not 1 <= count <= MAX_TRACES:
        raise FaithprobeError(f"must be 1 to {MAX_TRACES}", field="data.count")
    if source == "jsonl":
        traces = list(itertools.islice(iter_traces(data["path"]), count or MAX_TRACES + 1))
        if len(traces) > MAX_TRACES:
            raise FaithprobeError(f"holds more than {MAX_TRACES} traces; give [data] count",
                                  source=str(data["path"]))
        return traces
    if source == "organism":
        from faithprobe.organisms.task import generate

        return generate(data["split"], data.get("count", DEFAULT_COUNT), data["seed"])
    if source == "reasoning_gym":
        return _reasoning_gym(data["task"], data.get("count", DEFAULT_COUNT), data["seed"],
                              data.get("task_options"))
    raise FaithprobeError(f"unknown source {source!r}", field="data.source")
