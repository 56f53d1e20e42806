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
    ``patch`` (activation patching of step ``step`` at hook ``site``; ``value`` is the
    normalised effect, 0 = clean behaviour, 1 = corrupted behaviour),
    ``attribution`` (the same cell estimated by attribution patching, a gradient),
    ``attn_knockout`` and ``attention`` (knockout of the step's tokens; attention paid to them),
    ``resample`` (counterfactual resampling importance of step ``step``, with the answer
    distributions in ``detail``),
    ``cue`` (``step`` null; one per trace and cue kind, ``detail.variant`` the kind: the question
    answered with a cue pointing to ``detail.target``; ``orig_pred`` the uncued answer, ``pred``
    the cued one, ``value`` 1.0 when it is the target; ``detail`` also holds ``followed``,
    ``mentioned``, ``judge`` and both reasonings, see ``faithprobe.stages.cue``),
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
  ``infogain_ppl``, 0/1 for ``ki``, normalised effect for ``patch``), else null.
- ``status``: ``ok``, ``skipped`` (with ``reason``), ``no_answer`` or ``nonfinite`` (a NaN or
  infinite logit reached the measurement; counted in the summary, never averaged).
- ``detail``: a dict of kind-specific extras (``continuation``, ``scorer``, ``edited_step``...).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from faithprobe.errors import FaithprobeError
from faithprobe.io import atomic_write

__all__ = ["FLOAT_FIELDS", "STATUSES", "Record", "read_records", "record_key", "write_records"]

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
        if not isinstance(obj, dict):
            raise FaithprobeError("a record must be a JSON object", source=source, line=line)
        names = {f.name for f in fields(cls)}
        for key in obj:
            if key not in names:
                raise FaithprobeError("unknown record field", source=source, line=line, field=key)
        for key in ("trace_id", "checkpoint", "intervention"):
            if not isinstance(obj.get(key), str):
                raise FaithprobeError(
                    "missing or not a string", source=source, line=line, field=key
                )
        values = {k: _decode_float(v) if k in FLOAT_FIELDS else v for k, v in obj.items()}
        for key in FLOAT_FIELDS:
            v = values.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise FaithprobeError("expected a number", source=source, line=line, field=key)
        step = values.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise FaithprobeError("expected an integer", source=source, line=line, field="step")
        if values.get("status", "ok") not in STATUSES:
            raise FaithprobeError(
                f"unknown status (known: {', '.join(STATUSES)})", source=source, line=line,
                field="status",
            )
        if not isinstance(values.get("detail", {}), dict):
            raise FaithprobeError("expected an object", source=source, line=line, field="detail")
        return cls(**values)


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
