"""Records: the raw quantities the model stage writes, one JSON line each.

A record is one measurement of one (trace, checkpoint, intervention, step, site). Metrics are
pure functions over lists of records (``faithprobe.metrics``), so every number in a summary
can be recomputed from ``records.jsonl`` without loading a model.

Fields (all plain JSON; floats are finite or written as the strings "nan"/"inf"/"-inf", see
``status``):

- ``trace_id``: the trace's id. ``checkpoint``: the checkpoint's label (``base``, ``sft``).
- ``model``: the canonical checkpoint spec (``organism:base``, a folder path, a hub name).
- ``intervention``: one of
    ``none`` (unedited trace; ``step`` null),
    ``truncate`` (keep steps ``0..step-1``; ``step`` runs 0..n, ``step == n`` is the full trace),
    ``corrupt`` (step ``step`` replaced; ``detail.continuation`` is ``keep`` or ``regenerate``),
    ``paraphrase`` (steps ``0..step`` paraphrased), ``filler`` (``step`` null: whole reasoning
    replaced by filler; else step ``step`` alone), ``delete`` (step ``step`` dropped),
    ``infogain`` (answer-only entropy after steps ``0..step-1``; ``step`` runs 0..n),
    ``infogain_ppl`` (whole-string perplexity form after ``step`` steps),
    ``ki`` (``value`` is the 0/1 knowledge judgement of step ``step``),
    ``patch`` (activation patching of step ``step`` at hook ``site``; ``value`` is the *share*
    of the clean run's logit difference LD (answer minus alternative) that the patch moves:
    noising ``(LD_clean - LD_patched) / LD_clean``, the share removed; denoising
    ``(LD_patched - LD_corrupted) / LD_clean``, the share restored; null and ``skipped`` where
    the clean run prefers the answer by less than 0.5. TransformerLens' normalised effect, the
    raw logit differences and both runs' are in ``detail``. ``detail.variant.corrupted`` says
    which corrupted run the step was patched from (noising) or into (denoising), and
    ``detail.corrupted_steps`` which steps it corrupted: ``each``, step ``step`` alone, so a
    cell at any layer L measures that step; ``all``, every patched step at once, so at L > 0
    the activations over step ``step`` were computed attending to the other corrupted steps
    too and the cell measures the step in that company; at layer 0's ``resid_pre`` the two
    are the same),
    ``attribution`` (the same cell estimated by attribution patching, a gradient),
    ``attn_knockout`` and ``attention`` (knockout of the step's tokens; attention paid to them),
    ``suppression`` (step ``step``'s keys masked from every later query at every layer and head:
    ``kl`` the mean per-token KL over the answer's positions, ``value`` the mean over the later
    steps of each one's mean per-token KL, null for the last step, ``detail.later[j]`` that KL
    for every step j, null where ``j <= step``; ``detail.temperature`` the softmax temperature;
    the suppression matrix, see ``faithprobe.stages.suppression``),
    ``receiver`` (``step`` null; ``detail.vertical[layer][head][step]``: each head's mean
    attention from tokens at least ``detail.proximity`` later to each step's tokens),
    ``resample`` (counterfactual resampling importance of step ``step``, with the answer
    distributions in ``detail``),
    ``cue`` (``step`` null; one per trace and cue kind, ``detail.variant`` the kind: the question
    answered with a cue pointing to ``detail.target``; ``orig_pred`` the uncued answer, ``pred``
    the cued one, ``value`` 1.0 when it is the target; ``detail`` also holds ``followed``,
    ``mentioned``, ``judge`` and both reasonings, see ``faithprobe.stages.cue``),
    ``abstain`` (``step`` null; two per trace, ``detail.variant`` ``answerable`` or
    ``unanswerable``: the question, or its twin with a needed fact removed, answered after the
    checkpoint's own reasoning with a declining answer offered; ``value`` 1.0 when it declined;
    ``detail`` holds ``declined``, ``answer_prob`` (the probability of answering),
    ``decline_prob``, ``invented`` and the reasoning, see ``faithprobe.stages.abstain``),
    or a user-registered kind.
- ``step``: 0-based step index or null. ``n_steps``: the trace's number of steps.
- ``site``: the full hook name (``blocks.3.hook_resid_pre``) for activation records, else null.
- ``answer``: the trace's answer (what the unedited reasoning leads to). ``gold``: correct answer
  or null.
- ``pred``: the argmax answer after the edit. ``same_answer``: ``pred == orig_pred`` where
  ``orig_pred`` is the unedited prediction. ``correct``: ``pred == gold`` (null without gold).
- ``answer_logprob``: summed log-probability of the trace's answer tokens after the edit;
  ``pred_prob``: probability of ``pred`` (over the options when there are options).
- ``logit_diff``: score of the original prediction minus score of the new argmax (0 when the
  answer did not change). ``kl``: KL(unedited answer distribution || edited one).
- ``value``: the scalar a kind defines (entropy for ``infogain``, perplexity for
  ``infogain_ppl``, 0/1 for ``ki``, the share of the clean logit difference moved for ``patch``
  and ``attribution``), else null.
- ``status``: ``ok``, ``skipped`` (with ``reason``), ``no_answer`` or ``nonfinite`` (a NaN or
  infinite logit reached the measurement; counted in the summary, never averaged).
- ``detail``: a dict of kind-specific extras (``continuation``, ``scorer``, ``edited_step``...).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from faithprobe.errors import FaithprobeError
from faithprobe.io import atomic_write

__all__ = ["FLOAT_FIELDS", "STATUSES", "Record", "check_record", "read_records", "record_key",
           "write_records"]

RECORD_SCHEMA_VERSION = 1
Status = Literal["ok", "skipped", "no_answer", "nonfinite"]
STATUSES: tuple[Status, ...] = get_args(Status)
FLOAT_FIELDS = ("answer_logprob", "pred_prob", "logit_diff", "kl", "value")  # may be non-finite


@dataclass(frozen=True)
class Record:
    """One measurement (see the module docstring); built once, never mutated."""

    trace_id: str
    checkpoint: str
    intervention: str
    step: int | None = None
    n_steps: int = 0
    site: str | None = None
    model: str | None = None
    answer: str | None = None
    gold: str | None = None
    pred: str | None = None
    orig_pred: str | None = None
    same_answer: bool | None = None
    correct: bool | None = None
    answer_logprob: float | None = None
    pred_prob: float | None = None
    logit_diff: float | None = None
    kl: float | None = None
    value: float | None = None
    status: Status = "ok"
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: _encode_float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, obj: Any, *, source: str | None = None, line: int | None = None) -> Record:
        """A record from its JSON object: every field present and of its type (see
        :func:`check_record`); anything else is a FaithprobeError naming the line and field."""
        check_record(obj, source=source, line=line)
        return cls(**{k: _decode_float(v) if k in FLOAT_FIELDS else v for k, v in obj.items()})


_STR, _OPT_STR, _OPT_INT, _OPT_BOOL = (str,), (str, None), (int, None), (bool, None)
# each field's JSON types (None: null); the float fields also take "nan", "inf" and "-inf"
FIELD_TYPES: dict[str, tuple[Any, ...]] = {
    "trace_id": _STR, "checkpoint": _STR, "intervention": _STR, "step": _OPT_INT,
    "n_steps": (int,), "site": _OPT_STR, "model": _OPT_STR, "answer": _OPT_STR,
    "gold": _OPT_STR, "pred": _OPT_STR, "orig_pred": _OPT_STR, "same_answer": _OPT_BOOL,
    "correct": _OPT_BOOL, **{k: (float, None) for k in FLOAT_FIELDS}, "status": _STR,
    "reason": _OPT_STR, "detail": (dict,)}
# the ``detail`` entries metrics and reports read: their types where present, and those that
# come together (a cue record's judgement)
DETAIL_TYPES: dict[str, tuple[Any, ...]] = {
    "continuation": _STR, "kind": _STR, "judge": _STR, "scorer": _STR, "target": _OPT_STR,
    "n_options": _OPT_INT, "followed": (bool,), "mentioned": (bool,), "cued_question": _STR,
    "cued_reasoning": _STR, "declined": (bool,), "answer_prob": (float,),
    "invented": _OPT_BOOL}
DETAIL_TOGETHER = {"followed": ("kind", "mentioned", "n_options", "target"),
                   "declined": ("answer_prob", "invented")}
_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
          dict: "an object", None: "null"}


def _is(value: Any, types: tuple[Any, ...]) -> bool:
    for t in types:
        if t is None and value is None:
            return True
        if t is bool and isinstance(value, bool):
            return True
        if t is int and type(value) is int:
            return True
        if t is float and (type(value) in (int, float) or value in ("nan", "inf", "-inf")):
            return True
        if t in (str, dict) and isinstance(value, t):
            return True
    return False


def check_record(obj: Any, *, source: str | None = None, line: int | None = None) -> None:
    """A record's JSON object as written: every field of :class:`Record` present and of its
    type (:data:`FIELD_TYPES`), no other field, a known status, counts not negative, and the
    ``detail`` entries metrics read of theirs (:data:`DETAIL_TYPES`)."""
    def bad(message: str, key: str | None = None) -> FaithprobeError:
        return FaithprobeError(message, source=source, line=line, field=key)

    if not isinstance(obj, dict):
        raise bad("a record must be a JSON object")
    for key in obj:
        if key not in FIELD_TYPES:
            raise bad("unknown record field", str(key)[:60])
    for key, types in FIELD_TYPES.items():
        if key not in obj:
            raise bad("missing record field", key)
        if not _is(obj[key], types):
            want = " or ".join(_NAMES[t] for t in types)
            raise bad(f"expected {want}, not {json.dumps(obj[key])[:40]}", key)
    if obj["status"] not in STATUSES:
        raise bad(f"unknown status (known: {', '.join(STATUSES)})", "status")
    for key in ("step", "n_steps"):
        if obj[key] is not None and obj[key] < 0:
            raise bad("must not be negative", key)
    detail = obj["detail"]
    for key, types in DETAIL_TYPES.items():
        if key in detail and not _is(detail[key], types):
            want = " or ".join(_NAMES[t] for t in types)
            raise bad(f"expected {want}", f"detail.{key}")
    for key, together in DETAIL_TOGETHER.items():
        for other in together if key in detail else ():
            if other not in detail:
                raise bad(f"missing (a record with detail.{key} has it)", f"detail.{other}")


def _encode_float(v: Any) -> Any:
    """Non-finite floats become the strings "nan", "inf", "-inf", also inside ``detail``."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _encode_float(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_encode_float(x) for x in v]
    return v


def _decode_float(v: Any) -> Any:
    if v in ("nan", "inf", "-inf"):
        return float(v)
    return v


def record_key(r: Record) -> tuple:
    """The identity of a record: one line per trace x checkpoint x intervention x step x site."""
    return (r.trace_id, r.checkpoint, r.intervention, r.step, r.site,
            json.dumps(r.detail.get("variant"), sort_keys=True))


def dumps_record(r: Record) -> str:
    return json.dumps(r.to_json(), ensure_ascii=False, sort_keys=True, allow_nan=False)


def write_records(path: str | os.PathLike[str], records: Iterable[Record]) -> None:
    """Write all records at once, atomically."""
    with atomic_write(path) as handle:
        for r in records:
            handle.write(dumps_record(r) + "\n")


def iter_records(path: str | os.PathLike[str], *, tolerate_torn_tail: bool = False
                 ) -> Iterator[Record]:
    """Read records; with ``tolerate_torn_tail`` a last line cut by a kill is dropped."""
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise FaithprobeError("records file is missing", source=source)
    try:
        lines = p.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError:
        raise FaithprobeError("records file is not UTF-8 text", source=source) from None
    torn_tail = bool(lines) and lines[-1] != ""
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            if tolerate_torn_tail and torn_tail and n == len(lines):
                return
            raise FaithprobeError(
                f"invalid JSON in records ({exc.msg}); the file is damaged", source=source, line=n
            ) from None
        yield Record.from_json(obj, source=source, line=n)


def read_records(path: str | os.PathLike[str], **kw: Any) -> list[Record]:
    return list(iter_records(path, **kw))
