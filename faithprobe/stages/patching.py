"""Activation-level step interventions of one trace, as records (the run's patching stage).

For a trace, every step that the run's corrupter can change without changing its token length
is corrupted; the clean and corrupted renderings then have equal step spans, and
:func:`~faithprobe.activation.patching.patch_steps` copies each step's span from the corrupted
run into the clean one (noising) or back (denoising) at every layer and component. Which
corrupted run: ``corrupted="each"`` (``[patching] corrupted``, the default) has step i alone
corrupted for step i's cells, so a cell at any layer measures that step; ``"all"`` has every
step corrupted at once, so above layer 0 a cell of step i also carries what the other
corrupted steps changed. Records name it (``detail["variant"]["corrupted"]``) and list the
steps corrupted in the run a cell was patched from or into (``detail["corrupted_steps"]``).
The answer is read at the first answer token where the original answer and the alternative
differ: the alternative is the answer of the text with every step corrupted, or, when
corruption does not move it, the best other option (the same contrast under both settings).
Attention knockout of each step and the attention the answer position pays to each step (a
correlational baseline) are recorded beside it.

``method`` chooses how the grid is measured: ``exact`` (one patched forward pass per cell,
``patch`` records), ``attribution`` (Nanda's gradient estimate of the whole grid from one
forward and one backward pass, :mod:`faithprobe.activation.attribution`, ``attribution``
records with the same fields and cells) or ``both``, whose rank agreement the summary reports
(``attribution_agreement``).

The activation stage returns tensors (:class:`~faithprobe.activation.core.PatchResult`,
:class:`~faithprobe.activation.knockout.KnockoutResult`); :func:`patch_records` and
:func:`knockout_records` turn them into records, each built once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from faithprobe.activation.attribution import attribution_patch_steps
from faithprobe.activation.core import CORRUPTIONS, Answer, PatchResult, hook_name
from faithprobe.activation.knockout import KnockoutResult, attention_to_steps, knockout_steps
from faithprobe.activation.patching import FastPath, patch_steps
from faithprobe.data.prompts import PromptTemplate, step_segment
from faithprobe.data.tokens import align
from faithprobe.data.traces import Trace
from faithprobe.edits.interventions import EditContext, make_intervention
from faithprobe.errors import FaithprobeError
from faithprobe.models.checkpoints import Checkpoint
from faithprobe.models.scoring import answer_span, score
from faithprobe.records import Record
from faithprobe.stages.probe import item_of

__all__ = ["METHODS", "knockout_records", "patch_records", "patch_trace"]

METHODS = ("exact", "attribution", "both")  # [patching] method


def _skip(trace: Trace, label: str, ckpt: Checkpoint, reason: str) -> list[Record]:
    return [Record(trace_id=trace.id, checkpoint=label, intervention="patch",
                   n_steps=trace.n_steps, model=ckpt.spec, answer=trace.answer,
                   status="skipped", reason=reason, detail={"variant": {"kind": "trace"}})]


def _ids(ckpt: Checkpoint, template: PromptTemplate, trace: Trace, steps: Sequence[str],
         answer: str):
    rendered = template.render(trace.question, steps, answer, tokenizer=ckpt.tokenizer)
    return align(rendered.text, rendered.segments, ckpt.tokenizer, source=f"trace {trace.id}",
                 markup=rendered.markup)


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
    method: str = "exact",
    corrupted: str = "each",
) -> list[Record]:
    """Patching, knockout and attention records of one trace (see the module docstring).

    ``fast_path``: how to patch this checkpoint (:func:`faithprobe.patching.check_fast_path`;
    default the batched fast path); where it is not the batched fast path, the records carry
    the reason as ``detail["fallback_reason"]``.
    """
    if method not in METHODS:
        raise FaithprobeError(f"{method!r} is not one of {', '.join(METHODS)}",
                              field="patching.method")
    if corrupted not in CORRUPTIONS:
        raise FaithprobeError(f"{corrupted!r} is not one of {', '.join(CORRUPTIONS)}",
                              field="patching.corrupted")
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
    rendered_bad = _ids(ckpt, template, trace, steps, answer)
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
    bad_spans = [rendered_bad.span(step_segment(i)) for i in patched]
    clean_t = torch.tensor([clean.ids])
    bad_t = torch.tensor([rendered_bad.ids])
    records: list[Record] = []
    fast_path = fast_path or FastPath("fast")
    fallback = {} if fast_path.reason is None else {"fallback_reason": fast_path.reason}
    for direction in directions:
        if method in ("exact", "both"):
            result = patch_steps(ckpt.bridge, clean_t, bad_t, spans, read,
                                 corrupted_spans=bad_spans, components=components,
                                 direction=direction, corrupted=corrupted,  # type: ignore[arg-type]
                                 method=fast_path.method,
                                 batch_size=fast_path.batch_size,
                                 prefix_reuse=fast_path.prefix_reuse)
            records += patch_records(result, trace.id, label, n_steps=trace.n_steps,
                                     model=ckpt.spec, answer=trace.answer, steps=patched,
                                     detail={"alternative": alt, **fallback})
        if method in ("attribution", "both"):
            estimate = attribution_patch_steps(ckpt.bridge, clean_t, bad_t, spans, read,
                                               corrupted_spans=bad_spans,
                                               components=components, direction=direction,
                                               corrupted=corrupted)  # type: ignore[arg-type]
            records += patch_records(estimate, trace.id, label, n_steps=trace.n_steps,
                                     model=ckpt.spec, answer=trace.answer, steps=patched,
                                     detail={"alternative": alt}, intervention="attribution")
    if knockout:
        ko = knockout_steps(ckpt.bridge, clean_t, spans, read)
        records += knockout_records(ko, trace.id, label, n_steps=trace.n_steps,
                                    model=ckpt.spec, steps=patched)
        attn = attention_to_steps(ckpt.bridge, clean_t, spans, read.positions).mean(0)
        records += [Record(trace_id=trace.id, checkpoint=label, intervention="attention",
                           step=i, n_steps=trace.n_steps, model=ckpt.spec, value=float(attn[k]),
                           detail={"what": "attention from the answer position to the step's "
                                   "tokens, mean over layers and heads"})
                    for k, i in enumerate(patched)]
    return records


def patch_records(result: PatchResult, trace_id: str, checkpoint: str, *,
                  n_steps: int | None = None, model: str | None = None,
                  answer: str | None = None, steps: Sequence[int | None] | None = None,
                  detail: dict[str, Any] | None = None, intervention: str = "patch"
                  ) -> list[Record]:
    """One ``Record(intervention=intervention)`` per cell of ``result`` (``patch`` for exact
    patching, ``attribution`` for its gradient estimate).

    ``value`` is the cell's ``share`` (the share of the clean logit difference the patch moves);
    the TransformerLens-normalised effects (null where undefined: the corrupted run moves the
    metric by less than 1e-6) and the raw logit differences go in ``detail``, with
    the corrupted run's (of the cell's step) and which steps it corrupted
    (``corrupted_steps``: the step itself under ``corrupted="each"``, every patched step under
    ``"all"``; absent for answer-position patching). A cell
    is ``skipped`` where the clean run does not prefer the answer or the model has no such hook,
    ``nonfinite`` where a NaN or infinite logit reached the answer. ``steps`` renumbers the
    result's steps (the trace's own step indices); ``detail`` is merged into every record's.
    """
    out = []
    n = n_steps if n_steps is not None else sum(s is not None for s in result.steps)
    names = result.steps if steps is None else list(steps)
    every = [x for x in names if x is not None]
    for si, step in enumerate(names):
        if step is None:
            which: dict[str, Any] = {}
        else:
            which = {"corrupted_steps": [step] if result.corrupted == "each" else every}
        for li in range(len(result.layers)):
            for ci in range(len(result.components)):
                site, head = result.site(li, ci)
                eff = float(result.effect[si, li, ci])
                eff_lp = float(result.effect_logprob[si, li, ci])
                status, reason, value = "ok", None, float(result.share[si, li, ci])
                if result.skipped_reason is not None:
                    status, reason, value = "skipped", result.skipped_reason, None
                if site in result.absent_sites:
                    status, reason, value = "skipped", f"the model has no hook {site}", None
                elif not math.isfinite(float(result.logit_diff[si, li, ci])):
                    status, reason = "nonfinite", "non-finite logit at the answer position"
                out.append(Record(
                    trace_id=trace_id, checkpoint=checkpoint, intervention=intervention, step=step,
                    n_steps=n, site=site, model=model, answer=answer,
                    answer_logprob=float(result.logprob[si, li, ci]), value=value,
                    status=status, reason=reason,
                    detail={
                        "variant": {"direction": result.direction, "head": head,
                                    "kind": "step" if step is not None else "answer_pos",
                                    "corrupted": result.corrupted},
                        "method": result.method,
                        "span": list(result.spans[si]),
                        "logit_diff": float(result.logit_diff[si, li, ci]),
                        "answer_logprob": float(result.logprob[si, li, ci]),
                        "effect": eff if math.isfinite(eff) else None,
                        "effect_logprob": eff_lp if math.isfinite(eff_lp) else None,
                        "clean_logit_diff": result.clean_logit_diff,
                        "corrupted_logit_diff": float(result.corrupted_logit_diff[si]),
                        "clean_logprob": result.clean_logprob,
                        "corrupted_logprob": float(result.corrupted_logprob[si]),
                        **which,
                        **(detail or {}),
                    },
                ))
    return out


def knockout_records(result: KnockoutResult, trace_id: str, checkpoint: str, *,
                     n_steps: int | None = None, model: str | None = None,
                     steps: Sequence[int] | None = None) -> list[Record]:
    """``intervention="attn_knockout"`` records; ``value`` = change in logit difference.
    ``steps`` renumbers the result's steps (the trace's own step indices)."""
    sites = [hook_name(k, "z").replace("hook_z", "hook_pattern") for k in result.layers]
    names = list(range(len(result.spans))) if steps is None else list(steps)
    return [Record(
        trace_id=trace_id, checkpoint=checkpoint, intervention="attn_knockout", step=names[i],
        n_steps=len(result.spans) if n_steps is None else n_steps,
        site=sites[0] if len(sites) == 1 else None, model=model,
        answer_logprob=float(result.logprob[i]), kl=float(result.kl[i]),
        value=float(result.logit_diff[i]) - result.clean_logit_diff,
        detail={"variant": {"renormalise": result.renormalise, "layers": list(result.layers)},
                "sites": sites, "span": list(result.spans[i]),
                "logit_diff": float(result.logit_diff[i]),
                "clean_logit_diff": result.clean_logit_diff,
                "clean_logprob": result.clean_logprob},
    ) for i in range(len(result.spans))]
