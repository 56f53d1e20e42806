"""The suppression matrix and receiver-head scores of one trace, as records.

For a trace the run patches (``[patching] suppression = true``), every step is suppressed in
turn (:func:`~faithprobe.activation.suppression.suppress_steps`: S + 1 forward passes) and the
clean pass reads every head's vertical attention score. Records, each built once:

- ``suppression``, one per step i: ``kl`` is the answer's row (mean KL over the answer's
  positions with step i suppressed), ``value`` the mean over the later steps of their KL (None
  for the last step), ``detail.later`` the whole column (KL of each step j, None where
  ``j <= i``), ``detail.temperature`` the KL's softmax temperature;
- ``receiver``, one per trace (``step`` null): ``detail.vertical[l][h][i]``, head (l, h)'s mean
  attention from tokens at least ``detail.proximity`` later to step i's tokens (None where no
  token is that far).

A checkpoint whose patterns cannot be edited (:func:`suppression_support`) gets one skipped
``suppression`` record per trace with the reason.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch

from faithprobe.activation.suppression import (
    PROXIMITY,
    SuppressionResult,
    pattern_names,
    suppress_steps,
    suppression_support,
)
from faithprobe.data.prompts import PromptTemplate, step_segment
from faithprobe.data.tokens import align
from faithprobe.data.traces import Trace
from faithprobe.models.checkpoints import Checkpoint
from faithprobe.models.scoring import answer_span
from faithprobe.records import Record
from faithprobe.stages.probe import item_of

__all__ = ["suppression_records", "suppression_trace"]

# bridge -> suppression_support(bridge), checked once a loaded model
_SUPPORT: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def suppression_trace(ckpt: Checkpoint, label: str, trace: Trace, template: PromptTemplate, *,
                      temperature: float = 1.0, proximity: int = PROXIMITY) -> list[Record]:
    """The ``suppression`` and ``receiver`` records of one trace (see the module docstring)."""
    def skip(reason: str) -> list[Record]:
        return [Record(trace_id=trace.id, checkpoint=label, intervention="suppression",
                       n_steps=trace.n_steps, model=ckpt.spec, answer=trace.answer,
                       status="skipped", reason=reason,
                       detail={"variant": {"temperature": float(temperature)}})]

    key = ckpt.bridge
    if key not in _SUPPORT:
        _SUPPORT[key] = suppression_support(ckpt.bridge)
    if _SUPPORT[key] is not None:
        return skip(str(_SUPPORT[key]))
    if not trace.n_steps:
        return skip("trace has no steps")
    item = item_of(trace, trace.steps)
    rendered = template.render(trace.question, trace.steps, item.answer,
                               tokenizer=ckpt.tokenizer)
    aligned = align(rendered.text, rendered.segments, ckpt.tokenizer, source=f"trace {trace.id}",
                    markup=rendered.markup)
    spans = [aligned.span(step_segment(i)) for i in range(trace.n_steps)]
    empty = [i for i, (s, e) in enumerate(spans) if e <= s]
    if empty:
        return skip(f"step {empty[0]} has no token of its own")
    a0, a1 = answer_span(ckpt, aligned)
    tokens = torch.tensor([aligned.ids], device=ckpt.device)
    result = suppress_steps(ckpt.bridge, tokens, spans, list(range(a0 - 1, a1 - 1)),
                            temperature=temperature, proximity=proximity)
    return suppression_records(result, trace.id, label, model=ckpt.spec, answer=trace.answer,
                               n_layers=len(pattern_names(ckpt.bridge)))


def suppression_records(result: SuppressionResult, trace_id: str, checkpoint: str, *,
                        model: str | None = None, answer: str | None = None,
                        n_layers: int | None = None) -> list[Record]:
    """``suppression`` records (one per step) and a ``receiver`` record of ``result``."""
    n = len(result.spans)
    variant = {"temperature": result.temperature}
    out = []
    for i in range(n):
        later = [_num(result.matrix[j, i]) for j in range(n)]
        defined = [v for v in later[i + 1:] if v is not None]
        out.append(Record(
            trace_id=trace_id, checkpoint=checkpoint, intervention="suppression", step=i,
            n_steps=n, model=model, answer=answer, kl=float(result.answer_kl[i]),
            value=sum(defined) / len(defined) if defined else None,
            detail={"variant": variant, "later": later, "span": list(result.spans[i]),
                    "answer_positions": list(result.answer_positions),
                    "temperature": result.temperature,
                    "sites": f"blocks.0-{n_layers - 1}.attn.hook_pattern" if n_layers
                    else "every layer's attn.hook_pattern"}))
    if result.vertical is not None:
        vertical: Any = [[[_num(v) for v in head] for head in layer]
                         for layer in result.vertical.tolist()]
        out.append(Record(
            trace_id=trace_id, checkpoint=checkpoint, intervention="receiver", n_steps=n,
            model=model, answer=answer,
            detail={"vertical": vertical, "proximity": result.proximity,
                    "spans": [list(s) for s in result.spans],
                    "what": "vertical[layer][head][step]: mean attention from tokens at least "
                            "`proximity` later to the step's tokens"}))
    return out
