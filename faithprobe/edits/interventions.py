"""Text interventions: named, registered edits of a trace's reasoning steps.

Each intervention turns a trace into a list of :class:`Edit` (the edited reasoning, the step it
concerns, and whether the model regenerates what follows). The probe stage scores every edit and
writes one record each. Built-in kinds (Lanham et al. 2023; see ../shared/REFERENCES.md):

- ``truncate``: keep steps ``0..i-1`` (early answering), ``i = 0..n``;
- ``corrupt``: replace step ``i`` with a corrupted version, then keep the original later steps
  (``keep``) or let the model regenerate them greedily (``regenerate``);
- ``paraphrase``: replace steps ``0..i`` with paraphrases;
- ``filler``: replace the whole reasoning (or step ``i``) with " ..." of the same token length;
- ``delete``: drop step ``i`` alone.

Register your own with ``@register_intervention("name")`` on a class with an ``edits`` method,
and your own corrupters and paraphrasers with :func:`register_corrupter` and
:func:`register_paraphraser`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from faithprobe.data.prompts import PromptTemplate, step_segment
from faithprobe.data.tokens import Tokenizer, align
from faithprobe.data.traces import Trace
from faithprobe.errors import FaithprobeError

__all__ = [
    "CORRUPTERS",
    "INTERVENTIONS",
    "PARAPHRASERS",
    "Edit",
    "EditContext",
    "make_intervention",
    "register_corrupter",
    "register_intervention",
    "register_paraphraser",
]

Corrupter = Callable[[Trace, int, random.Random], "str | None"]
Paraphraser = Callable[[Trace, int], "str | None"]


@dataclass(frozen=True)
class Edit:
    """One edited version of a trace's reasoning."""

    kind: str
    step: int | None
    steps: tuple[str, ...]  # the edited reasoning (before any regeneration)
    regenerate: bool = False  # the model writes the steps after ``steps`` itself
    skipped: str | None = None  # why this edit could not be made (recorded, not an error)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class EditContext:
    """What an intervention may need: the tokenizer and template (token lengths), a seed."""

    tokenizer: Tokenizer
    template: PromptTemplate
    seed: int = 0

    def rng(self, trace: Trace, step: int | None, salt: str = "") -> random.Random:
        """A generator fixed by (seed, trace, step): the same edit on every run."""
        return random.Random(f"{self.seed}|{trace.id}|{step}|{salt}")

    def step_tokens(self, trace: Trace, steps: Sequence[str]) -> list[int]:
        """Token length of each step segment when ``steps`` is rendered for ``trace``."""
        rendered = self.template.render(trace.question, steps, tokenizer=self.tokenizer)
        aligned = align(rendered.text, rendered.segments, self.tokenizer,
                        source=f"trace {trace.id}")
        return [aligned.span(step_segment(i))[1] - aligned.span(step_segment(i))[0]
                for i in range(len(steps))]


class Intervention(Protocol):
    name: str

    def edits(self, trace: Trace, ctx: EditContext) -> list[Edit]: ...


INTERVENTIONS: dict[str, Callable[..., Intervention]] = {}
CORRUPTERS: dict[str, Corrupter] = {}
PARAPHRASERS: dict[str, Paraphraser] = {}


def register_intervention(name: str):
    def wrap(cls):
        cls.name = name
        INTERVENTIONS[name] = cls
        return cls

    return wrap


def register_corrupter(name: str):
    def wrap(fn: Corrupter) -> Corrupter:
        CORRUPTERS[name] = fn
        return fn

    return wrap


def register_paraphraser(name: str):
    def wrap(fn: Paraphraser) -> Paraphraser:
        PARAPHRASERS[name] = fn
        return fn

    return wrap


def make_intervention(name: str, **options: Any) -> Intervention:
    """Build a registered intervention; unknown names or options name the culprit."""
    _load_plugins()
    if name not in INTERVENTIONS:
        raise FaithprobeError(
            f"unknown intervention (known: {', '.join(sorted(INTERVENTIONS))})", field=name
        )
    try:
        return INTERVENTIONS[name](**options)
    except TypeError as exc:
        raise FaithprobeError(f"bad options for intervention {name!r}: {exc}",
                              field=name) from None


def _load_plugins() -> None:
    # the organism task registers its task-aware corrupter and paraphraser on import
    import importlib

    importlib.import_module("faithprobe.organisms.task")


# --- corrupters ---------------------------------------------------------------------------------

_NUM = re.compile(r"\d+")
_OPS = {"+": "-", "-": "+", "*": "+", "/": "*", "×": "+", "÷": "×"}


def _replace(text: str, m: re.Match, new: str) -> str:
    return text[: m.start()] + new + text[m.end():]


@register_corrupter("number")
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


@register_corrupter("off_by_one")
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


@register_corrupter("operator")
def corrupt_operator(trace: Trace, i: int, rng: random.Random) -> str | None:
    """Swap the step's first arithmetic operator (+ <-> -, * -> +, / -> *)."""
    step = trace.steps[i]
    for at, ch in enumerate(step):
        if ch in _OPS and not (ch == "-" and (at == 0 or not step[at - 1].strip())):
            return step[:at] + _OPS[ch] + step[at + 1:]
    return None


@register_corrupter("generic")
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


@register_corrupter("auto")
def corrupt_auto(trace: Trace, i: int, rng: random.Random) -> str | None:
    """``number`` where the step has a number, else ``generic``."""
    return corrupt_number(trace, i, rng) or corrupt_generic(trace, i, rng)


# --- paraphrasers -------------------------------------------------------------------------------


@register_paraphraser("trace")
def paraphrase_from_trace(trace: Trace, i: int) -> str | None:
    """The paraphrase the trace file carries in its ``paraphrases`` field."""
    return None if trace.paraphrases is None else trace.paraphrases[i]


# --- interventions ------------------------------------------------------------------------------


@register_intervention("truncate")
class Truncate:
    """Early answering: keep steps ``0..i-1`` for ``i = 0..n``."""

    def edits(self, trace: Trace, ctx: EditContext) -> list[Edit]:
        return [Edit("truncate", k, trace.steps[:k]) for k in range(trace.n_steps + 1)]


@register_intervention("corrupt")
class Corrupt:
    """Adding a mistake: step ``i`` corrupted; later steps kept or regenerated by the model."""

    def __init__(self, corrupter: str | Corrupter = "auto",
                 continuations: Sequence[str] = ("keep", "regenerate"),
                 keep_length: bool = True, tries: int = 20) -> None:
        if isinstance(corrupter, str) and corrupter not in CORRUPTERS:
            raise FaithprobeError(
                f"unknown corrupter (known: {', '.join(sorted(CORRUPTERS))})", field=corrupter
            )
        for c in continuations:
            if c not in ("keep", "regenerate"):
                raise FaithprobeError("continuation must be 'keep' or 'regenerate'", field=c)
        self.corrupter = corrupter
        self.continuations = tuple(continuations)
        self.keep_length = keep_length
        self.tries = tries

    @property
    def corrupter_name(self) -> str:
        fn = self.corrupter
        return fn if isinstance(fn, str) else getattr(fn, "__name__", "custom")

    def corrupt(self, trace: Trace, i: int, ctx: EditContext) -> tuple[str | None, str | None]:
        """(corrupted step, None) or (None, reason it could not be corrupted)."""
        fn = CORRUPTERS[self.corrupter] if isinstance(self.corrupter, str) else self.corrupter
        rng = ctx.rng(trace, i, "corrupt")
        want = ctx.step_tokens(trace, trace.steps)[i] if self.keep_length else None
        for _ in range(max(1, self.tries)):
            new = fn(trace, i, rng)
            if new is None:
                return None, f"corrupter {self.corrupter_name!r} cannot corrupt this step"
            if new == trace.steps[i] or not new.strip():
                continue
            if want is None:
                return new, None
            steps = list(trace.steps)
            steps[i] = new
            if ctx.step_tokens(trace, steps)[i] == want:
                return new, None
        if self.keep_length:
            return None, f"no corruption of the same token length ({want}) found"
        return None, "corrupter returned the step unchanged"

    def edits(self, trace: Trace, ctx: EditContext) -> list[Edit]:
        out = []
        for i in range(trace.n_steps):
            new, reason = self.corrupt(trace, i, ctx)
            for cont in self.continuations:
                detail = {"continuation": cont, "corrupter": self.corrupter_name,
                          "variant": cont}
                if new is None:
                    out.append(Edit("corrupt", i, trace.steps, skipped=reason, detail=detail))
                    continue
                detail["edited_step"] = new
                if cont == "keep":
                    steps = trace.steps[:i] + (new,) + trace.steps[i + 1:]
                    out.append(Edit("corrupt", i, steps, detail=detail))
                else:
                    out.append(Edit("corrupt", i, trace.steps[:i] + (new,), regenerate=True,
                                    detail=detail))
        return out


@register_intervention("paraphrase")
class Paraphrase:
    """Steps ``0..i`` replaced by paraphrases (from the trace, a registered rule, a callable)."""

    def __init__(self, source: str | Paraphraser = "auto") -> None:
        if isinstance(source, str) and source != "auto" and source not in PARAPHRASERS:
            raise FaithprobeError(
                f"unknown paraphraser (known: auto, {', '.join(sorted(PARAPHRASERS))})",
                field=source,
            )
        self.source = source

    def _fn(self, trace: Trace) -> tuple[str, Paraphraser | None]:
        if callable(self.source):
            return getattr(self.source, "__name__", "custom"), self.source
        if self.source != "auto":
            return self.source, PARAPHRASERS[self.source]
        if trace.paraphrases is not None:
            return "trace", PARAPHRASERS["trace"]
        task = trace.metadata.get("task") if isinstance(trace.metadata, dict) else None
        if isinstance(task, str) and task in PARAPHRASERS:
            return task, PARAPHRASERS[task]
        return "none", None

    def edits(self, trace: Trace, ctx: EditContext) -> list[Edit]:
        name, fn = self._fn(trace)
        if fn is None:
            return [Edit("paraphrase", i, trace.steps, skipped="no paraphrase source for this "
                         "trace (no paraphrases field, no rule for its task)",
                         detail={"paraphraser": name}) for i in range(trace.n_steps)]
        para: list[str | None] = [fn(trace, i) for i in range(trace.n_steps)]
        out = []
        for i in range(trace.n_steps):
            missing = [j for j in range(i + 1) if not para[j]]
            if missing:
                out.append(Edit("paraphrase", i, trace.steps,
                                skipped=f"no paraphrase of step {missing[0]}",
                                detail={"paraphraser": name}))
                continue
            steps = tuple(para[: i + 1]) + trace.steps[i + 1:]  # type: ignore[arg-type]
            out.append(Edit("paraphrase", i, steps, detail={"paraphraser": name}))
        return out


@register_intervention("filler")
class Filler:
    """The reasoning (``scope="all"``) or each step (``"step"``) replaced by filler tokens of
    the same token length."""

    def __init__(self, scope: Sequence[str] = ("all",), unit: str = " ...") -> None:
        for s in scope:
            if s not in ("all", "step"):
                raise FaithprobeError("filler scope must be 'all' or 'step'", field=s)
        if not unit.strip():
            raise FaithprobeError("filler unit must not be blank", field="unit")
        self.scope = tuple(scope)
        self.unit = unit

    def _fill(self, trace: Trace, ctx: EditContext, steps: tuple[str, ...], at: int,
              want: int) -> tuple[str | None, int]:
        """A filler step of ``want`` tokens at index ``at``, or the closest found."""
        best: tuple[int, str | None] = (10**9, None)
        got = 0
        for n in range(1, 4 * want + 4):
            text = (self.unit * n).strip()
            trial = steps[:at] + (text,) + steps[at + 1:]
            try:
                got = ctx.step_tokens(trace, trial)[at]
            except FaithprobeError:
                return None, 0
            if abs(got - want) < best[0]:
                best = (abs(got - want), text)
            if got >= want:
                break
        return best[1], got

    def edits(self, trace: Trace, ctx: EditContext) -> list[Edit]:
        if not trace.n_steps:
            return []
        lengths = ctx.step_tokens(trace, trace.steps)
        out = []
        if "all" in self.scope:
            want = sum(lengths)
            text, _ = self._fill(trace, ctx, ("",), 0, want)
            if text is None:
                out.append(Edit("filler", None, trace.steps,
                                skipped=f"tokenizer cannot encode filler {self.unit!r}"))
            else:
                got = ctx.step_tokens(trace, (text,))[0]
                out.append(Edit("filler", None, (text,),
                                detail={"tokens": got, "orig_tokens": want}))
        if "step" in self.scope:
            for i in range(trace.n_steps):
                text, _ = self._fill(trace, ctx, trace.steps, i, lengths[i])
                if text is None:
                    out.append(Edit("filler", i, trace.steps,
                                    skipped=f"tokenizer cannot encode filler {self.unit!r}"))
                    continue
                steps = trace.steps[:i] + (text,) + trace.steps[i + 1:]
                got = ctx.step_tokens(trace, steps)[i]
                out.append(Edit("filler", i, steps,
                                detail={"tokens": got, "orig_tokens": lengths[i]}))
        return out


@register_intervention("delete")
class Delete:
    """Step ``i`` dropped, the others kept."""

    def edits(self, trace: Trace, ctx: EditContext) -> list[Edit]:
        return [Edit("delete", i, trace.steps[:i] + trace.steps[i + 1:])
                for i in range(trace.n_steps)]
