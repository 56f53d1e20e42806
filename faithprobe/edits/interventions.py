"""Text interventions: named, registered edits of a trace's reasoning steps.

Each intervention turns a trace into a list of :class:`Edit` (the edited reasoning, the step it
concerns, and whether the model regenerates what follows). The probe stage scores every edit and
writes one record each. Built-in kinds (Lanham et al. 2023; see docs/metrics.md), in
:mod:`faithprobe.edits.kinds`:

- ``truncate``: keep steps ``0..i-1`` (early answering), ``i = 0..n``;
- ``corrupt``: replace step ``i`` with a corrupted version, then keep the original later steps
  (``keep``) or let the model regenerate them greedily (``regenerate``);
- ``paraphrase``: replace steps ``0..i`` with paraphrases;
- ``filler``: replace the whole reasoning (or step ``i``) with " ..." of the same token length;
- ``delete``: drop step ``i`` alone.

Interventions, corrupters and paraphrasers live in three :class:`~faithprobe.registry.Registry`
(:data:`INTERVENTIONS`, :data:`CORRUPTERS`, :data:`PARAPHRASERS`). Register your own with
``@register_intervention("name")`` on a class with an ``edits`` method, and your own corrupters
and paraphrasers with :func:`register_corrupter` and :func:`register_paraphraser`; a name
registered twice raises. The built-ins and the organism task's corrupter (``organism``) and
paraphraser (``chain-mod10``) are registered lazily, as ``"module:object"``: each module is
imported when one of its names is first used, and none of them imports this one's registries
to register itself.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from faithprobe.data.prompts import PromptTemplate, step_segment
from faithprobe.data.tokens import Tokenizer, align
from faithprobe.data.traces import Trace
from faithprobe.errors import FaithprobeError
from faithprobe.registry import Registry

__all__ = [
    "CONTINUATIONS",
    "CORRUPTERS",
    "INTERVENTIONS",
    "PARAPHRASERS",
    "Continuation",
    "Corrupter",
    "Edit",
    "EditContext",
    "Intervention",
    "Paraphraser",
    "make_intervention",
    "register_corrupter",
    "register_intervention",
    "register_paraphraser",
]

Corrupter = Callable[[Trace, int, random.Random], "str | None"]
Paraphraser = Callable[[Trace, int], "str | None"]
# what follows a corrupted step: the original later steps, or the model's own
Continuation = Literal["keep", "regenerate"]
CONTINUATIONS: tuple[Continuation, ...] = ("keep", "regenerate")


@dataclass(frozen=True)
class Edit:
    """One edited version of a trace's reasoning."""

    kind: str  # the intervention's registered name
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
                        source=f"trace {trace.id}", markup=rendered.markup)
        return [aligned.span(step_segment(i))[1] - aligned.span(step_segment(i))[0]
                for i in range(len(steps))]


class Intervention(Protocol):
    name: str

    def edits(self, trace: Trace, ctx: EditContext) -> list[Edit]: ...


INTERVENTIONS: Registry[Callable[..., Intervention]] = Registry("intervention")
CORRUPTERS: Registry[Corrupter] = Registry("corrupter")
PARAPHRASERS: Registry[Paraphraser] = Registry("paraphraser")


def _register_lazily(registry: Registry[Any], targets: dict[str, str]) -> None:
    for name, target in targets.items():
        registry.register_lazy(name, target)


_register_lazily(INTERVENTIONS, {
    "truncate": "faithprobe.edits.kinds:Truncate",
    "corrupt": "faithprobe.edits.kinds:Corrupt",
    "paraphrase": "faithprobe.edits.kinds:Paraphrase",
    "filler": "faithprobe.edits.kinds:Filler",
    "delete": "faithprobe.edits.kinds:Delete",
})
_register_lazily(CORRUPTERS, {
    "number": "faithprobe.edits.corrupters:corrupt_number",
    "off_by_one": "faithprobe.edits.corrupters:corrupt_off_by_one",
    "operator": "faithprobe.edits.corrupters:corrupt_operator",
    "generic": "faithprobe.edits.corrupters:corrupt_generic",
    "auto": "faithprobe.edits.corrupters:corrupt_auto",
    # the organism task (a plugin): its own same-length corruption of a step's value
    "organism": "faithprobe.organisms.task:corrupt_organism",
})
_register_lazily(PARAPHRASERS, {
    "trace": "faithprobe.edits.corrupters:paraphrase_from_trace",
    "equations": "faithprobe.edits.corrupters:paraphrase_equations",
    # reasoning-gym's one-operation-a-step arithmetic: its equations said in words
    "basic_arithmetic": "faithprobe.edits.corrupters:paraphrase_equations",
    # the organism task's rule, under its task's name (what a trace's metadata["task"] says)
    "chain-mod10": "faithprobe.organisms.task:paraphrase_organism",
})

_Kind = TypeVar("_Kind", bound=type)


def register_intervention(name: str) -> Callable[[_Kind], _Kind]:
    """Class decorator: register an intervention (a class with an ``edits`` method) as ``name``
    (sets the class's ``name``); a name registered twice raises :class:`FaithprobeError`."""
    def wrap(cls: _Kind) -> _Kind:
        INTERVENTIONS.add(name, cls)
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return wrap


def register_corrupter(name: str) -> Callable[[Corrupter], Corrupter]:
    """Decorator: register ``(trace, i, rng) -> str | None`` as corrupter ``name``; a name
    registered twice raises :class:`FaithprobeError`."""
    return CORRUPTERS.register(name)


def register_paraphraser(name: str) -> Callable[[Paraphraser], Paraphraser]:
    """Decorator: register ``(trace, i) -> str | None`` as paraphraser ``name``; a name
    registered twice raises :class:`FaithprobeError`."""
    return PARAPHRASERS.register(name)


def make_intervention(name: str, **options: Any) -> Intervention:
    """Build a registered intervention; unknown names or options name the culprit."""
    factory = INTERVENTIONS.get(name)
    try:
        return factory(**options)
    except TypeError as exc:
        raise FaithprobeError(f"bad options for intervention {name!r}: {exc}",
                              field=name) from None
