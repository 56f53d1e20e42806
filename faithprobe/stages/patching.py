"""Activation-level step interventions of one trace, as records (the run's patching stage).

For a trace, every step that the run's corrupter can change without changing its token length
is corrupted at once; the clean and corrupted renderings then have equal step spans, and
:func:`faithprobe.patching.patch_steps` copies each step's span from the corrupted run into the
clean one (noising) or back (denoising) at every layer and component. The answer is read at the
first answer token where the original answer and the alternative differ: the alternative is
the corrupted run's answer, or, when corruption does not move it, the best other option.
Attention knockout of each step and the attention the answer position pays to each step (a
correlational baseline) are recorded beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from faithprobe.activation.patching import (
    Answer,
    FastPath,
    attention_to_steps,
    knockout_steps,
    patch_steps,
)
from faithprobe.data.prompts import PromptTemplate, step_segment
from faithprobe.data.tokens import align
from faithprobe.data.traces import Trace
from faithprobe.edits.interventions import EditContext, make_intervention
from faithprobe.models.checkpoints import Checkpoint
from faithprobe.models.scoring import answer_span, score
from faithprobe.records import Record
from faithprobe.stages.probe import item_of

__all__ = ["patch_trace"]


def _skip(trace: Trace, label: str, ckpt: Checkpoint, reason: str) -> list[Record]:
    return [Record(trace_id=trace.id, checkpoint=label, intervention="patch",
                   n_steps=trace.n_steps, model=ckpt.spec, answer=trace.answer,
                   status="skipped", reason=reason, detail={"variant": {"kind": "trace"}})]


def _ids(ckpt: Checkpoint, template: PromptTemplate, trace: Trace, steps: Sequence[str],
         answer: str):
    rendered = template.render(trace.question, steps, answer, tokenizer=ckpt.tokenizer)
    return align(rendered.text, rendered.segments, ckpt.tokenizer, source=f"trace {trace.id}")


def patch_trace(
    ckpt: Checkpoint,
    label: str,
    trace: Trace,
    template: PromptTemplate,
    *,
    components: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
    directions: Sequence[str] = ("noising",),
    knockout: bool = True,
    corrupter: str | Any = "auto",
    seed: int = 0,
    fast_path: FastPath | None = None,
) -> list[Record]:
    """Patching, knockout and attention records of one trace (see the module docstring).

    ``fast_path``: how to patch this checkpoint (:func:`faithprobe.patching.check_fast_path`;
    default the batched fast path); where it is not the batched fast path, the records carry
    the reason as ``detail["fallback_reason"]``.
    """
    if not trace.n_steps:
        return _skip(trace, label, ckpt, "trace has no steps")
    ctx = EditContext(ckpt.tokenizer, template, seed)
    corrupt = make_intervention("corrupt", corrupter=corrupter, continuations=["keep"],
                                keep_length=True)
    steps = list(trace.steps)
    patched: list[int] = []
    for i in range(trace.n_steps):
        new, _reason = corrupt.corrupt(trace, i, ctx)
        if new is not None:
            steps[i] = new
            patched.append(i)
    if not patched:
        return _skip(trace, label, ckpt, "no step can be corrupted at the same token length")
    clean_item = item_of(trace, trace.steps)
    answer = clean_item.answer
    clean_sc, bad_sc = score(ckpt, [clean_item, item_of(trace, steps)], template)
    alt = bad_sc.pred if bad_sc.pred and bad_sc.pred != answer else None
    if alt is None and bad_sc.option_logprobs:
        alt = max((o for o in bad_sc.option_logprobs if o != answer),
                  key=lambda o: bad_sc.option_logprobs[o])
    if alt is None:
        return _skip(trace, label, ckpt, "no alternative answer to contrast with")
    clean = _ids(ckpt, template, trace, trace.steps, answer)
    corrupted = _ids(ckpt, template, trace, steps, answer)
    other = _ids(ckpt, template, trace, trace.steps, alt)
    a0, a1 = answer_span(ckpt, clean)
    b0, b1 = answer_span(ckpt, other)
    ans_toks, alt_toks = clean.ids[a0:a1], other.ids[b0:b1]
    j = next((k for k, (x, y) in enumerate(zip(ans_toks, alt_toks)) if x != y), None)
    if a0 != b0 or j is None:
        return _skip(trace, label, ckpt, f"answers {answer!r} and {alt!r} cannot be told "
                     "apart at one token position")
    read = Answer.of(a0 + j - 1, ans_toks[j], alt_toks[j])
    spans = [clean.span(step_segment(i)) for i in patched]
    bad_spans = [corrupted.span(step_segment(i)) for i in patched]
    clean_t = torch.tensor([clean.ids])
    bad_t = torch.tensor([corrupted.ids])
    records: list[Record] = []
    fast_path = fast_path or FastPath("fast")
    fallback = {} if fast_path.reason is None else {"fallback_reason": fast_path.reason}
    for direction in directions:
        result = patch_steps(ckpt.bridge, clean_t, bad_t, spans, read,
                             corrupted_spans=bad_spans, components=components,
                             direction=direction, method=fast_path.method,
                             batch_size=fast_path.batch_size,
                             prefix_reuse=fast_path.prefix_reuse)
        records += result.to_records(trace.id, label, n_steps=trace.n_steps, model=ckpt.spec,
                                     answer=trace.answer, steps=patched,
                                     detail={"alternative": alt, **fallback})
    if knockout:
        ko = knockout_steps(ckpt.bridge, clean_t, spans, read)
        recs = ko.to_records(trace.id, label, model=ckpt.spec)
        attn = attention_to_steps(ckpt.bridge, clean_t, spans, read.positions).mean(0)
        for r, i in zip(recs, patched):
            r.step, r.n_steps = i, trace.n_steps
        for k, i in enumerate(patched):
            recs.append(Record(trace_id=trace.id, checkpoint=label, intervention="attention",
                               step=i, n_steps=trace.n_steps, model=ckpt.spec,
                               value=float(attn[k]),
                               detail={"what": "attention from the answer position to the "
                                       "step's tokens, mean over layers and heads"}))
        records += recs
    return records
