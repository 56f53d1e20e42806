"""The built-in corrupters and paraphrasers: plain functions of a trace and a step index.

A corrupter ``(trace, i, rng) -> str | None`` returns step ``i`` with a mistake in it (``None``
when it cannot corrupt that step); a paraphraser ``(trace, i) -> str | None`` returns step ``i``
said in other words (``None`` when it has none). They are registered, lazily and by name, in
:mod:`faithprobe.edits.interventions`; this module knows nothing of the registries.
"""

from __future__ import annotations

import random
import re

from faithprobe.data.traces import Trace

__all__ = [
    "corrupt_auto",
    "corrupt_generic",
    "corrupt_number",
    "corrupt_off_by_one",
    "corrupt_operator",
    "paraphrase_equations",
    "paraphrase_from_trace",
]

_NUM = re.compile(r"\d+")
_OPS = {"+": "-", "-": "+", "*": "+", "/": "*", "×": "+", "÷": "×"}


def _replace(text: str, m: re.Match, new: str) -> str:
    return text[: m.start()] + new + text[m.end():]


def corrupt_number(trace: Trace, i: int, rng: random.Random) -> str | None:
    """Change one number of the step (the last one) to another of the same digit count."""
    nums = list(_NUM.finditer(trace.steps[i]))
    if not nums:
        return None
    m = nums[-1]
    digits = len(m.group())
    lo, hi = (0, 9) if digits == 1 else (10 ** (digits - 1), 10**digits - 1)
    choices = [v for v in range(lo, hi + 1) if str(v) != m.group()] if hi - lo < 200 else None
    new = rng.choice(choices) if choices else rng.randint(lo, hi)
    while str(new) == m.group():
        new = rng.randint(lo, hi)
    return _replace(trace.steps[i], m, str(new))


def corrupt_off_by_one(trace: Trace, i: int, rng: random.Random) -> str | None:
    """Move the step's last number by one (up or down, keeping its digit count when possible)."""
    nums = list(_NUM.finditer(trace.steps[i]))
    if not nums:
        return None
    m = nums[-1]
    v = int(m.group())
    candidates = [c for c in (v + 1, v - 1) if c >= 0 and len(str(c)) == len(m.group())]
    candidates = candidates or [v + 1]
    return _replace(trace.steps[i], m, str(rng.choice(candidates)))


def corrupt_operator(trace: Trace, i: int, rng: random.Random) -> str | None:
    """Swap the step's first arithmetic operator (+ <-> -, * -> +, / -> *)."""
    step = trace.steps[i]
    for at, ch in enumerate(step):
        if ch in _OPS and not (ch == "-" and (at == 0 or not step[at - 1].strip())):
            return step[:at] + _OPS[ch] + step[at + 1:]
    return None


def corrupt_generic(trace: Trace, i: int, rng: random.Random) -> str | None:
    """Swap two different words of the step (works on any text with two distinct words)."""
    words = list(re.finditer(r"\w+", trace.steps[i]))
    pairs = [(a, b) for a in range(len(words)) for b in range(a + 1, len(words))
             if words[a].group() != words[b].group()]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    wa, wb, s = words[a], words[b], trace.steps[i]
    return s[: wa.start()] + wb.group() + s[wa.end(): wb.start()] + wa.group() + s[wb.end():]


def corrupt_auto(trace: Trace, i: int, rng: random.Random) -> str | None:
    """``number`` where the step has a number, else ``generic``."""
    return corrupt_number(trace, i, rng) or corrupt_generic(trace, i, rng)


def paraphrase_from_trace(trace: Trace, i: int) -> str | None:
    """The paraphrase the trace file carries in its ``paraphrases`` field."""
    return None if trace.paraphrases is None else trace.paraphrases[i]


_NUMBER = r"-?\d+(?:\.\d+)?"
_BINARY_EQUATION = re.compile(rf"({_NUMBER})\s*([-+*/×÷x])\s*({_NUMBER})\s*=\s*({_NUMBER})")
_OP_WORDS = {"+": "plus", "-": "minus", "*": "times", "×": "times", "x": "times",
             "/": "divided by", "÷": "divided by"}


_JOINS = "+-*/×÷x=^%·−–—(.0123456789"  # a character that makes an equation part of more


def paraphrase_equations(trace: Trace, i: int) -> str | None:
    """Each one-operation equation ``a op b = c`` of step ``i`` said in words (``a times b is
    c``), the numbers and the rest of the step unchanged; None when the step has no such
    equation, or one that may be part of something longer: a longer expression (``3 + 4 * 2 =
    11``: rewording ``4 * 2 = 11`` alone would change what it says), a chained equation, or a
    term glued to a letter (``2x-3 = 7``, ``n-3 * 2 = 4``)."""
    step, out, at = trace.steps[i], [], 0
    for m in _BINARY_EQUATION.finditer(step):
        before, after = step[:m.start()].rstrip(), step[m.end():].lstrip()
        glued = m.start() > 0 and step[m.start() - 1].isalnum()
        op_text = step[m.end(1):m.start(3)]  # "x" is "times" only with a space on each side
        loose_x = m.group(2) == "x" and not (op_text[0].isspace() and op_text[-1].isspace())
        if glued or loose_x or (before and before[-1] in _JOINS.replace("(", "")) \
                or (after and after[0] in _JOINS.replace(".", "")):
            return None
        a, op, b, c = m.groups()
        out.append(step[at:m.start()] + f"{a} {_OP_WORDS[op]} {b} is {c}")
        at = m.end()
    return "".join(out) + step[at:] if out else None
