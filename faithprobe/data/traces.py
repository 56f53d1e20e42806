"""Traces: a question, ordered reasoning steps and a final answer.

A trace is what every intervention edits and every metric is computed over. This module reads and
writes traces as JSONL (one trace a line, schema in README.md) and builds them from free text by
splitting a chain of thought into steps, keeping each step's character offsets.

Sizes are bounded before anything grows with them: a field holds at most ``MAX_FIELD_CHARS``
characters (metadata strings and keys too), a trace at most ``MAX_STEPS`` steps and
``MAX_OPTIONS`` options, metadata nests at most ``MAX_METADATA_DEPTH`` levels, and a line of a
trace file holds at most ``MAX_LINE_CHARS`` characters (read no further than that).
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from faithprobe.errors import FaithprobeError
from faithprobe.io import atomic_write

__all__ = [
    "MAX_FIELD_CHARS",
    "MAX_LINE_CHARS",
    "MAX_METADATA_DEPTH",
    "MAX_OPTIONS",
    "MAX_STEPS",
    "Step",
    "Trace",
    "read_traces",
    "check_fit",
    "split_steps",
    "trace_from_text",
    "trace_warnings",
    "write_traces",
]

MAX_FIELD_CHARS = 200_000  # a longer question or step is a broken file, not a chain of thought
MAX_STEPS = 10_000  # steps (and step_truth, paraphrases) of one trace
MAX_OPTIONS = 1_000  # answer options of one trace
MAX_METADATA_DEPTH = 32  # levels of objects and lists inside ``metadata``
MAX_LINE_CHARS = 16_000_000  # one line of a trace file
SplitMode = Literal["auto", "lines", "markers", "sentences"]

_KNOWN_KEYS = (
    "id",
    "question",
    "steps",
    "answer",
    "options",
    "gold",
    "step_truth",
    "paraphrases",
    "metadata",
    "unanswerable",
)


@dataclass(frozen=True)
class Trace:
    """One problem with its chain of thought.

    ``answer`` is the answer the trace reaches (what the model says after the full reasoning);
    ``gold`` is the correct answer, where known. They differ when the model is wrong.
    """

    id: str
    question: str
    steps: tuple[str, ...]
    answer: str
    options: tuple[str, ...] | None = None  # closed answer set; the argmax is taken over these
    gold: str | None = None
    # per step: is its knowledge correct (exact KI); None for a step with nothing to judge
    step_truth: tuple[bool | None, ...] | None = None
    paraphrases: tuple[str, ...] | None = None  # per step: a same-meaning rewording
    metadata: dict[str, Any] = field(default_factory=dict)
    # the question made unanswerable (a needed fact removed): the abstention test's twin
    unanswerable: str | None = None

    def __post_init__(self) -> None:
        _check_trace(self, source=None, line=None)

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    def with_steps(self, steps: Iterable[str]) -> Trace:
        """The same problem with other reasoning (per-step annotations dropped)."""
        return Trace(
            id=self.id,
            question=self.question,
            steps=tuple(steps),
            answer=self.answer,
            options=self.options,
            gold=self.gold,
            metadata=dict(self.metadata),
            unanswerable=self.unanswerable,
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("steps", "options", "step_truth", "paraphrases"):
            if out[key] is not None:
                out[key] = list(out[key])
        return {k: v for k, v in out.items() if v is not None and not (k == "metadata" and not v)}

    @classmethod
    def from_json(cls, obj: Any, *, source: str | None = None, line: int | None = None) -> Trace:
        """Validate one decoded JSON object and build the trace."""
        if not isinstance(obj, dict):
            raise FaithprobeError(
                f"a trace must be a JSON object, got {_type(obj)}", source=source, line=line
            )
        for key in obj:
            if key not in _KNOWN_KEYS:
                raise FaithprobeError(
                    f"unknown field (known: {', '.join(_KNOWN_KEYS)})",
                    source=source,
                    line=line,
                    field=str(key)[:60],
                )
        for key in ("id", "question", "steps", "answer"):
            if key not in obj:
                raise FaithprobeError("missing required field", source=source, line=line, field=key)

        def text(key: str, value: Any) -> str:
            if not isinstance(value, str):
                raise FaithprobeError(
                    f"expected a string, got {_type(value)}", source=source, line=line, field=key
                )
            return value

        def texts(key: str, value: Any) -> tuple[str, ...]:
            if not isinstance(value, list):
                raise FaithprobeError(
                    f"expected a list of strings, got {_type(value)}",
                    source=source,
                    line=line,
                    field=key,
                )
            return tuple(text(f"{key}[{i}]", v) for i, v in enumerate(value))

        step_truth = obj.get("step_truth")
        if step_truth is not None:
            if not isinstance(step_truth, list) or not all(
                v is None or isinstance(v, bool) or v in (0, 1) for v in step_truth
            ):
                raise FaithprobeError(
                    "expected a list of booleans (or 0/1, or null for a step not judged)",
                    source=source, line=line, field="step_truth",
                )
            step_truth = tuple(None if v is None else bool(v) for v in step_truth)
        metadata = obj.get("metadata", {})
        if not isinstance(metadata, dict):
            raise FaithprobeError(
                f"expected an object, got {_type(metadata)}", source=source, line=line,
                field="metadata",
            )
        options = obj.get("options")
        paraphrases = obj.get("paraphrases")
        gold = obj.get("gold")
        unanswerable = obj.get("unanswerable")
        trace = object.__new__(cls)
        values = dict(
            id=text("id", obj["id"]),
            question=text("question", obj["question"]),
            steps=texts("steps", obj["steps"]),
            answer=text("answer", obj["answer"]),
            options=None if options is None else texts("options", options),
            gold=None if gold is None else text("gold", gold),
            step_truth=step_truth,
            paraphrases=None if paraphrases is None else texts("paraphrases", paraphrases),
            metadata=metadata,
            unanswerable=None if unanswerable is None else text("unanswerable", unanswerable),
        )
        for key, value in values.items():
            object.__setattr__(trace, key, value)
        _check_trace(trace, source=source, line=line)
        return trace


def _type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(
        type(value), "null" if value is None else f"a {type(value).__name__}"
    )


def _visible(value: str) -> bool:
    """Whether ``value`` holds a character that shows: not whitespace, not a format character
    (zero-width spaces and joiners, direction marks, a BOM)."""
    return any(not c.isspace() and unicodedata.category(c) != "Cf" for c in value)


def _check_text(value: str, *, name: str, source: str | None, line: int | None, empty_ok=False):
    if len(value) > MAX_FIELD_CHARS:
        raise FaithprobeError(
            f"is {len(value)} characters long, over the limit of {MAX_FIELD_CHARS}",
            source=source,
            line=line,
            field=name,
        )
    if not empty_ok and not _visible(value):
        what = "blank" if not value.strip() else "only invisible characters"
        raise FaithprobeError(f"must not be empty ({what})", source=source, line=line,
                              field=name)
    if "\x00" in value:
        raise FaithprobeError("contains a NUL character", source=source, line=line, field=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FaithprobeError(
            "contains an unpaired surrogate (not valid Unicode text)",
            source=source,
            line=line,
            field=name,
        ) from None


def _check_count(values: tuple[Any, ...] | None, limit: int, name: str, source: str | None,
                 line: int | None) -> None:
    if values is not None and len(values) > limit:
        raise FaithprobeError(f"has {len(values)} entries, over the limit of {limit}",
                              source=source, line=line, field=name)


def _check_metadata(value: Any, *, source: str | None, line: int | None) -> None:
    """Plain JSON, walked without recursion: objects with string keys, lists, strings (the
    limits of a text field), finite numbers, booleans, null; at most MAX_METADATA_DEPTH deep."""
    stack: list[tuple[Any, str, int]] = [(value, "metadata", 0)]
    while stack:
        v, path, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise FaithprobeError(f"nests more than {MAX_METADATA_DEPTH} levels deep",
                                  source=source, line=line, field="metadata")
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    raise FaithprobeError(f"key {k!r} is not a string (not plain JSON)",
                                          source=source, line=line, field=path)
                _check_text(k, name=f"{path} key", source=source, line=line, empty_ok=True)
                stack.append((x, f"{path}.{k[:40]}", depth + 1))
        elif isinstance(v, (list, tuple)):
            stack.extend((x, f"{path}[{i}]", depth + 1) for i, x in enumerate(v))
        elif isinstance(v, str):
            _check_text(v, name=path, source=source, line=line, empty_ok=True)
        elif isinstance(v, float) and not math.isfinite(v):
            raise FaithprobeError(f"{v} is not a number JSON allows (NaN or infinite)",
                                  source=source, line=line, field=path)
        elif not (v is None or isinstance(v, (bool, int, float))):
            raise FaithprobeError(f"a {type(v).__name__} is not plain JSON", source=source,
                                  line=line, field=path)


def _check_trace(t: Trace, *, source: str | None, line: int | None) -> None:
    _check_count(t.steps, MAX_STEPS, "steps", source, line)
    _check_count(t.options, MAX_OPTIONS, "options", source, line)
    _check_text(t.id, name="id", source=source, line=line)
    _check_text(t.question, name="question", source=source, line=line)
    _check_text(t.answer, name="answer", source=source, line=line)
    for i, step in enumerate(t.steps):
        _check_text(step, name=f"steps[{i}]", source=source, line=line)
    if t.gold is not None:
        _check_text(t.gold, name="gold", source=source, line=line)
    if t.unanswerable is not None:
        _check_text(t.unanswerable, name="unanswerable", source=source, line=line)
    if t.options is not None:
        if len(t.options) < 2:
            raise FaithprobeError(
                "needs at least two answer options", source=source, line=line, field="options"
            )
        for i, opt in enumerate(t.options):
            _check_text(opt, name=f"options[{i}]", source=source, line=line)
        if len(set(t.options)) != len(t.options):
            raise FaithprobeError(
                "answer options repeat", source=source, line=line, field="options"
            )
        if t.answer not in t.options:
            raise FaithprobeError(
                f"answer {t.answer!r} is not one of the options", source=source, line=line,
                field="answer",
            )
    for name, values in (("step_truth", t.step_truth), ("paraphrases", t.paraphrases)):
        if values is not None and len(values) != len(t.steps):
            raise FaithprobeError(
                f"has {len(values)} entries for {len(t.steps)} steps",
                source=source,
                line=line,
                field=name,
            )
    if t.paraphrases is not None:
        for i, p in enumerate(t.paraphrases):
            _check_text(p, name=f"paraphrases[{i}]", source=source, line=line)
    if not isinstance(t.metadata, dict):
        raise FaithprobeError(f"expected an object, got {_type(t.metadata)}", source=source,
                              line=line, field="metadata")
    _check_metadata(t.metadata, source=source, line=line)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"duplicate key {k[:60]!r}")
            seen.add(k)
    return obj


def read_traces(path: str | os.PathLike[str]) -> list[Trace]:
    """Read a JSONL trace file; blank lines are skipped, ids must be unique."""
    return list(iter_traces(path))


def iter_traces(path: str | os.PathLike[str]) -> Iterator[Trace]:
    source = str(path)
    p = Path(path)
    if not p.is_file():  # a FIFO or a device is refused here, before it is opened
        raise FaithprobeError("trace file does not exist" if not p.exists() else "is not a file",
                              source=source)
    seen: dict[str, int] = {}
    try:
        handle = p.open(encoding="utf-8")
    except OSError as exc:
        raise FaithprobeError(f"cannot be read ({exc.strerror})", source=source) from None
    n = 0
    with handle:
        try:
            for n, raw in enumerate(iter(lambda: handle.readline(MAX_LINE_CHARS + 1), ""),
                                    start=1):
                if len(raw) > MAX_LINE_CHARS:
                    raise FaithprobeError(
                        f"line is over the limit of {MAX_LINE_CHARS} characters", source=source,
                        line=n)
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw, parse_constant=_reject_constant,
                                     object_pairs_hook=_unique_keys)
                except (json.JSONDecodeError, ValueError) as exc:
                    msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                    raise FaithprobeError(f"invalid JSON: {msg}", source=source, line=n) from None
                except RecursionError:
                    raise FaithprobeError("invalid JSON: nested too deeply", source=source,
                                          line=n) from None
                trace = Trace.from_json(obj, source=source, line=n)
                if trace.id in seen:
                    raise FaithprobeError(
                        f"duplicate trace id {trace.id!r} (first on line {seen[trace.id]})",
                        source=source,
                        line=n,
                        field="id",
                    )
                seen[trace.id] = n
                yield trace
        except UnicodeDecodeError:
            raise FaithprobeError("is not UTF-8 text", source=source, line=n + 1) from None
    if not seen:
        raise FaithprobeError("holds no traces", source=source)


def write_traces(path: str | os.PathLike[str], traces: Iterable[Trace]) -> None:
    """Write traces as JSONL, atomically (a temporary file renamed into place)."""
    with atomic_write(path) as handle:
        for t in traces:
            handle.write(json.dumps(t.to_json(), ensure_ascii=False, allow_nan=False) + "\n")


def _squeezed(text: str) -> str:
    return "".join(c for c in text if not c.isspace() and unicodedata.category(c) != "Cf")


def trace_warnings(traces: Iterable[Trace]) -> dict[str, list[str]]:
    """Doubtful but valid data, by kind: the ids of the traces concerned (empty kinds left out).

    - ``gold_not_in_options``: ``gold`` is not one of ``options``, so the argmax over the
      options can never be correct (accuracy is 0 by construction);
    - ``near_duplicate_options``: two options differ only in whitespace or invisible
      characters (" 5" and "5"), so which one "the answer" is depends on spacing.
    """
    found: dict[str, list[str]] = {}
    for t in traces:
        kinds = []
        if t.options is not None and t.gold is not None and t.gold not in t.options:
            kinds.append("gold_not_in_options")
        if t.options is not None and len({_squeezed(o) for o in t.options}) < len(t.options):
            kinds.append("near_duplicate_options")
        for kind in kinds:
            found.setdefault(kind, []).append(t.id)
    return found


def _culprit(exc: FaithprobeError, t: Trace, tokenizer: Any, template: Any) -> str:
    """The field of ``t`` (or of the template) behind a rendering or tokenizing error."""
    seg = exc.field or ""
    if seg.startswith("step."):
        return f"steps[{seg[5:]}]"
    named = {"chat": "template.chat", "question": "question", "answer": "answer",
             "suffix": "template.suffix", "preamble": "template"}
    if seg in named:
        return named[seg]
    fields = [("question", t.question), *((f"steps[{i}]", x) for i, x in enumerate(t.steps)),
              ("answer", t.answer), *((f"options[{i}]", x) for i, x in enumerate(t.options or ())),
              *((f"paraphrases[{i}]", x) for i, x in enumerate(t.paraphrases or ())),
              *((f"template.{k}", v) for k, v in template.to_json().items()
                if isinstance(v, str))]
    for name, text in fields:
        try:
            tokenizer.encode(text)
        except FaithprobeError:
            return name
    return "template"


def check_fit(traces: Iterable[Trace], tokenizer: Any, template: Any, n_ctx: int, *,
              source: str, label: str, generate: bool = False, paraphrases: bool = True) -> int:
    """Every trace renders through ``template`` (a PromptTemplate), tokenizes with ``tokenizer``
    (every character known, every segment a token of its own) and fits ``n_ctx`` tokens with
    each answer it is scored with (each option, or the answer; with ``paraphrases``, also with
    its paraphrased steps). With ``generate``, the question alone, with room for one new token.

    A trace is counted in tokens before it is aligned, so the check stays linear in its length.
    Returns the longest prompt in tokens; raises FaithprobeError naming ``source``, the trace,
    the field and the checkpoint (``label``).
    """
    from faithprobe.data.tokens import align
    from faithprobe.models.scoring import normalize_answer

    prefix = len(tokenizer.prefix_ids)
    longest = 0
    for t in traces:
        def fail(message: str, name: str, t: Trace = t) -> FaithprobeError:
            return FaithprobeError(f"trace {t.id!r} with checkpoint {label}: {message}",
                                   source=source, field=name)

        steps = () if generate else t.steps
        where = "steps" if steps else "question"
        if len(steps) + 3 + prefix > n_ctx:
            raise fail(f"its {len(steps)} steps cannot fit the model's context of {n_ctx} "
                       "tokens (a step needs one token at least)", where)
        answers: tuple[str | None, ...] = (None,) if generate else (
            t.options or (normalize_answer(t.answer) or t.answer,))
        variants = [steps] + ([t.paraphrases] if paraphrases and t.paraphrases and steps else [])
        for variant in variants:
            for answer in answers:
                try:
                    r = template.render(t.question, variant, answer, tokenizer=tokenizer)
                    n = prefix + len(tokenizer.encode(r.text, r.markup)[0]) + (answer is None)
                    if n > n_ctx:
                        alone = template.render(t.question, (), answer, tokenizer=tokenizer)
                        too_long = prefix + len(tokenizer.encode(alone.text, alone.markup)[0]) \
                            > n_ctx
                        raise fail(f"is {n} tokens long, longer than the model's context of "
                                   f"{n_ctx} tokens", "question" if too_long else where)
                    align(r.text, r.segments, tokenizer, markup=r.markup)
                except FaithprobeError as exc:
                    if exc.message.startswith(f"trace {t.id!r} with"):
                        raise
                    raise fail(exc.message, _culprit(exc, t, tokenizer, template)) from None
                longest = max(longest, n)
    return longest


# --- splitting free text into steps -------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """A step cut from a text, with its character offsets: ``text == source[start:end]``."""

    text: str
    start: int
    end: int


_MARKER = re.compile(r"(?im)(?:^|(?<=\s))step\s*\d+\s*[:.)]")
# Words after which a period does not end a sentence.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e eg ie approx fig no nos vol cf al inc ltd co "
    "jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)")


def _strip_span(text: str, start: int, end: int) -> Step | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start == end:
        return None
    return Step(text[start:end], start, end)


def _split_at(text: str, cuts: list[int]) -> list[Step]:
    bounds = [0, *cuts, len(text)]
    steps = [_strip_span(text, a, b) for a, b in zip(bounds, bounds[1:])]
    return [s for s in steps if s is not None]


def _sentence_cuts(text: str) -> list[int]:
    cuts = []
    for m in _SENTENCE_END.finditer(text):
        end = m.end()
        if m.group().startswith("."):
            # the word before the period: an abbreviation or a single initial does not end it
            word = re.search(r"([A-Za-z][A-Za-z.]*)$", text[: m.start()])
            if word:
                w = word.group(1).lower().rstrip(".")
                if w in _ABBREVIATIONS or (len(w) == 1 and word.group(1)[0].isupper()):
                    continue
        cuts.append(end)
    # a blank line always separates
    cuts.extend(m.start() for m in re.finditer(r"\n\s*\n", text))
    return sorted(set(cuts))


def split_steps(text: str, mode: SplitMode = "auto") -> list[Step]:
    """Split a chain of thought into steps, keeping character offsets.

    Modes: ``lines`` (one non-empty line a step), ``markers`` (a step begins at each
    "Step k:"), ``sentences`` (a period, "!" or "?" followed by space ends a step, except after an
    abbreviation or an initial; "3.50" and "$3.50" never split since no space follows the
    period), and ``auto`` (markers when there are two or more, else lines when there are two or
    more non-empty lines, else sentences). Whitespace around each step is dropped.
    """
    if not isinstance(text, str):
        raise FaithprobeError(f"expected text to split, got {_type(text)}", field="text")
    if mode == "auto":
        if len(_MARKER.findall(text)) >= 2:
            mode = "markers"
        elif sum(1 for ln in text.splitlines() if ln.strip()) >= 2:
            mode = "lines"
        else:
            mode = "sentences"
    if mode == "markers":
        return _split_at(text, [m.start() for m in _MARKER.finditer(text) if m.start() > 0])
    if mode == "lines":
        cuts = [m.end() for m in re.finditer(r"\r\n|\r|\n", text)]
        return _split_at(text, cuts)
    if mode == "sentences":
        return _split_at(text, _sentence_cuts(text))
    raise FaithprobeError(
        f"unknown split mode {mode!r} (known: auto, lines, markers, sentences)", field="mode"
    )


def trace_from_text(
    id: str,
    question: str,
    reasoning: str,
    answer: str,
    *,
    mode: SplitMode = "auto",
    **extra: Any,
) -> Trace:
    """Build a trace from a free-text chain of thought; offsets go in ``metadata["offsets"]``."""
    steps = split_steps(reasoning, mode)
    metadata = dict(extra.pop("metadata", {}) or {})
    metadata["offsets"] = [[s.start, s.end] for s in steps]
    return Trace(
        id=id,
        question=question,
        steps=tuple(s.text for s in steps),
        answer=answer,
        metadata=metadata,
        **extra,
    )
