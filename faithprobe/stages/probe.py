"""The model stage: run every intervention of a checkpoint over traces and record raw numbers.

``probe`` scores the unedited trace, every edit the configured interventions make, the InfoGain
truncations (with a fixed scorer or the model itself) and KI, and returns one
:class:`~faithprobe.records.Record` per (trace, intervention, step). Metrics are computed later,
from the records alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from faithprobe.data.prompts import THINK_CLOSE, PromptTemplate
from faithprobe.data.traces import Trace
from faithprobe.edits.interventions import Edit, EditContext, make_intervention
from faithprobe.errors import FaithprobeError
from faithprobe.models.batches import BYTE_BUDGET, tokens_within
from faithprobe.models.checkpoints import Checkpoint
from faithprobe.models.decode import generate
from faithprobe.models.forward import forward_token_logprobs
from faithprobe.models.kvcache import PaddingSide
from faithprobe.models.scoring import (
    AnswerScore,
    ScoreItem,
    continuation_ids,
    normalize_answer,
    score,
)
from faithprobe.records import Record

__all__ = ["PPL_JOINER", "ProbeConfig", "item_of", "iter_probe", "ppl_text", "probe"]

Judge = Callable[[Trace, int], "int | None"]  # 0/1, or None: nothing to judge


@dataclass(frozen=True)
class ProbeConfig:
    """What to measure for each trace; the defaults run everything that applies."""

    interventions: tuple[str, ...] = ("truncate", "corrupt", "paraphrase", "filler", "delete")
    # per-intervention options, e.g. {"corrupt": {"corrupter": "number", "keep_length": True}}
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    infogain: bool = True  # answer-only InfoGain records (needs truncations, scored again if a
    infogain_ppl: bool = True  # fixed scorer is given); whole-string perplexity form
    ki: bool = True
    max_new_tokens: int = 48  # regeneration budget after a corrupted step
    batch_size: int = 16
    # a batch's padded size (rows x longest row) at most this many tokens; None: rows only
    max_batch_tokens: int | None = None
    padding_side: PaddingSide = "right"
    share_prefix: bool = True  # reuse the unedited trace's KV cache for its edits (HF models)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise FaithprobeError("must be at least 1", field="batch_size")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise FaithprobeError("must be at least 1", field="max_batch_tokens")
        if self.max_new_tokens < 1:
            raise FaithprobeError("must be at least 1", field="max_new_tokens")
        if self.padding_side not in ("left", "right"):
            raise FaithprobeError("must be 'left' or 'right'", field="padding_side")
        for name in self.options:
            if name not in self.interventions:
                raise FaithprobeError("options given for an intervention not run", field=name)


def _kl(p_log: np.ndarray, q_log: np.ndarray) -> float:
    p = np.exp(p_log)
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(p > 0, p * (p_log - q_log), 0.0)
    return float(max(0.0, terms.sum()))


def _first_token(ckpt: Checkpoint, template: PromptTemplate, answer: str) -> int | None:
    ids, _ = ckpt.tokenizer.encode(template.answer_sep + answer)
    for t in ids:
        if ckpt.tokenizer.decode([t]).strip():
            return t
    return None


def _logit_diff(ckpt, template, edited: AnswerScore, orig_pred: str) -> float:
    """Score of the original prediction minus score of the new argmax, in the edited run."""
    if edited.option_logprobs is not None:
        return edited.option_logprobs[orig_pred] - edited.option_logprobs[edited.pred]
    if edited.pred == orig_pred:
        return 0.0
    a, b = _first_token(ckpt, template, orig_pred), _first_token(ckpt, template, edited.pred)
    if a is None or b is None:
        return float("nan")
    return float(edited.dist[a] - edited.dist[b])


def _record(trace: Trace, label: str, ckpt: Checkpoint, kind: str, step: int | None,
            sc: AnswerScore | None, orig: AnswerScore | None, *, template: PromptTemplate,
            detail: dict[str, Any] | None = None, skipped: str | None = None) -> Record:
    """The record of one scored edit (``sc``) against the unedited trace (``orig``), or of an
    edit not made (``skipped``); built once, with every field."""
    gold = None if trace.gold is None else (
        trace.gold if trace.options else normalize_answer(trace.gold))
    fixed: dict[str, Any] = dict(trace_id=trace.id, checkpoint=label, intervention=kind,
                                 step=step, n_steps=trace.n_steps, model=ckpt.spec,
                                 answer=trace.answer, gold=gold, detail=dict(detail or {}))
    if skipped is not None or sc is None:
        return Record(**fixed, status="skipped", reason=skipped)
    orig_pred = orig.pred if orig is not None else sc.pred
    read: dict[str, Any] = dict(pred=sc.pred, orig_pred=orig_pred,
                                answer_logprob=sc.answer_logprob, pred_prob=sc.pred_prob)
    if sc.nonfinite or (orig is not None and orig.nonfinite):
        return Record(**fixed, **read, status="nonfinite",
                      reason="a NaN or infinite logit reached the answer")
    if not sc.pred:
        return Record(**fixed, **read, status="no_answer", reason="the model produced no answer")
    logit_diff = kl = None
    if orig is not None and orig.pred:
        logit_diff = _logit_diff(ckpt, template, sc, orig.pred)
        if orig.dist.shape == sc.dist.shape:
            kl = _kl(orig.dist, sc.dist)
    return Record(**fixed, **read, same_answer=sc.pred == orig_pred,
                  correct=None if gold is None else sc.pred == gold, logit_diff=logit_diff, kl=kl)


def _regenerate(ckpt: Checkpoint, template: PromptTemplate, trace: Trace,
                edits: list[Edit], config: ProbeConfig) -> list[tuple[tuple[str, ...], bool]]:
    """Let the model write the steps after each edit's prefix; returns (steps, stopped)."""
    prompts = [continuation_ids(ckpt, template, trace.question, e.steps, trace.id)
               for e in edits]
    # a thinking model's reasoning ends at its closing tag, where the suffix begins
    stop = [s for s in (THINK_CLOSE if template.thinking else "", template.suffix.strip()) if s]
    outs = generate(ckpt, prompts, max_new_tokens=config.max_new_tokens, stop=stop,
                    batch_size=config.batch_size)
    return [(e.steps + tuple(template.written_steps(text)), stopped)
            for e, (text, stopped) in zip(edits, outs)]


def _with_regeneration(ckpt: Checkpoint, template: PromptTemplate, trace: Trace,
                       edits: list[Edit], config: ProbeConfig
                       ) -> list[tuple[Edit, tuple[str, ...]]]:
    """Each edit as recorded, with the reasoning to score after it: a regenerating edit that was
    made becomes a new Edit whose detail also holds the steps the model wrote
    (``generated_steps``) and whether it stopped (``stopped``); the others stay as they are."""
    todo = [e for e in edits if e.regenerate and e.skipped is None]
    written = iter(_regenerate(ckpt, template, trace, todo, config))
    out: list[tuple[Edit, tuple[str, ...]]] = []
    for e in edits:
        if e.regenerate and e.skipped is None:
            steps, stopped = next(written)
            e = replace(e, detail={**e.detail, "generated_steps": list(steps[len(e.steps):]),
                                   "stopped": stopped})
            out.append((e, steps))
        else:
            out.append((e, e.steps))
    return out


def _ppl(ckpt: Checkpoint, texts: Sequence[str], config: ProbeConfig) -> list[float]:
    """Perplexity of each whole string (every token after the prefix ids); the strings of one
    trace's truncations share the longest one's run where the model allows it."""
    prefix = ckpt.tokenizer.prefix_ids
    # without a BOS the first token is unscored
    seqs = [prefix + ckpt.tokenizer.encode(t)[0] for t in texts]
    budget = config.max_batch_tokens or tokens_within(  # long strings: the byte budget
        BYTE_BUDGET, int(ckpt.bridge.cfg.n_heads), max((len(s) for s in seqs), default=1))
    lps = forward_token_logprobs(ckpt, seqs, batch_size=config.batch_size,
                                 max_batch_tokens=budget,
                                 share_prefix=config.share_prefix)
    out = []
    for lp in lps:
        nll = -float(lp.mean())
        out.append(math.exp(nll) if math.isfinite(nll) else float("nan"))
    return out


def iter_probe(
    ckpt: Checkpoint,
    label: str,
    traces: Sequence[Trace],
    config: ProbeConfig = ProbeConfig(),
    *,
    template: PromptTemplate | None = None,
    scorer: Checkpoint | None = None,
    judge: Judge | None = None,
) -> Iterator[list[Record]]:
    """Probe traces one at a time; yields each trace's records (for progress and resume)."""
    template = template or ckpt.template
    ctx = EditContext(ckpt.tokenizer, template, config.seed)
    kinds = [make_intervention(n, **config.options.get(n, {})) for n in config.interventions]
    for trace in traces:
        yield _probe_one(ckpt, label, trace, config, template, ctx, kinds, scorer, judge)


def probe(ckpt: Checkpoint, label: str, traces: Sequence[Trace],
          config: ProbeConfig = ProbeConfig(), **kw: Any) -> list[Record]:
    """All records of ``traces`` for one checkpoint (see :func:`iter_probe`)."""
    return [r for recs in iter_probe(ckpt, label, traces, config, **kw) for r in recs]


def item_of(trace: Trace, steps: Sequence[str]) -> ScoreItem:
    """What the scorer measures for ``trace`` with ``steps`` as its reasoning."""
    answer = trace.answer if trace.options else normalize_answer(trace.answer) or trace.answer
    return ScoreItem(trace.question, tuple(steps), answer, trace.options, trace.id)


def _probe_one(ckpt, label, trace, config, template, ctx, kinds, scorer, judge) -> list[Record]:
    if trace.metadata.get("no_answer"):
        return [Record(trace_id=trace.id, checkpoint=label, intervention="none",
                       n_steps=trace.n_steps, model=ckpt.spec, gold=trace.gold,
                       status="no_answer", reason="the generated reasoning led to no answer")]
    edits = _with_regeneration(ckpt, template, trace,
                               [e for k in kinds for e in k.edits(trace, ctx)], config)
    made = [(e, steps) for e, steps in edits if e.skipped is None]
    truncations = [trace.steps[:k] for k in range(trace.n_steps + 1)]
    items = [item_of(trace, trace.steps)] + [item_of(trace, steps) for _, steps in made]
    if config.infogain and scorer is None:
        items += [item_of(trace, s) for s in truncations]
    scores = score(ckpt, items, template, batch_size=config.batch_size,
                   padding_side=config.padding_side, share_prefix=config.share_prefix,
                   max_batch_tokens=config.max_batch_tokens)
    orig = scores[0]
    # a generation cut by its token budget left its last step unfinished ("So, the"): said
    flag = {"generation_truncated": True} if trace.metadata.get(
        "generation_stopped") is False else None
    records = [_record(trace, label, ckpt, "none", None, orig, None, template=template,
                       detail=flag)]
    edit_scores = iter(scores[1: 1 + len(made)])  # in the order of the edits made
    for e, _ in edits:
        if e.skipped is not None:
            records.append(_record(trace, label, ckpt, e.kind, e.step, None, None,
                                   template=template, detail=e.detail, skipped=e.skipped))
        else:
            records.append(_record(trace, label, ckpt, e.kind, e.step, next(edit_scores), orig,
                                   template=template, detail=e.detail))
    if config.infogain:
        if scorer is None:
            ig_scores, who = scores[1 + len(made):], "self"
        else:
            ig_scores = score(scorer, [item_of(trace, s) for s in truncations],
                              scorer.template, batch_size=config.batch_size)
            who = scorer.spec
        records += _step_values(trace, label, ckpt, "infogain",
                                [sc.answer_nll_mean for sc in ig_scores],
                                {"scorer": who, "form": "answer_only"})
    if config.infogain_ppl:
        ppl_model = scorer or ckpt
        joiner = PPL_JOINER
        try:
            ppl_model.tokenizer.encode(joiner)
        except FaithprobeError:  # a character-level tokenizer without those letters
            joiner = template.suffix + template.answer_sep
        texts = [ppl_text(trace, s, joiner) for s in truncations]
        records += _step_values(trace, label, ckpt, "infogain_ppl",
                                _ppl(ppl_model, texts, config),
                                {"scorer": "self" if scorer is None else scorer.spec,
                                 "form": "whole_string_ppl", "joiner": joiner})
    if config.ki:
        records += _ki_records(trace, label, ckpt, judge)
    return records


def _step_values(trace: Trace, label: str, ckpt: Checkpoint,
                 kind: Literal["infogain", "infogain_ppl"],
                 values: Sequence[float], detail: dict[str, Any]) -> list[Record]:
    """One record per truncation j = 0..n carrying a scalar (an entropy, a perplexity);
    a non-finite one is recorded as such."""
    return [Record(trace_id=trace.id, checkpoint=label, intervention=kind, step=j,
                   n_steps=trace.n_steps, model=ckpt.spec, answer=trace.answer,
                   value=v if math.isfinite(v) else float("nan"),
                   status="ok" if math.isfinite(v) else "nonfinite", detail=dict(detail))
            for j, v in enumerate(values)]


PPL_JOINER = " Answer: "


def ppl_text(trace: Trace, steps: Sequence[str], joiner: str) -> str:
    """Wu et al.'s public-code string: question, steps, " Answer: ", answer."""
    return " ".join([trace.question, *steps]) + joiner + trace.answer


TRUTH_JUDGE = "the trace's step_truth"  # a trace's step_truth that names no judge


def _ki_records(trace: Trace, label: str, ckpt: Checkpoint, judge: Judge | None) -> list[Record]:
    """One ``ki`` record a step: ``value`` 1 or 0 where the step was judged, None where it holds
    nothing to judge (unjudged: KI leaves it out, ``ki_coverage`` counts it); ``detail.judge``
    names who judged (``metadata["step_truth_judge"]`` of the trace, or the judge callable)."""
    values: list[int | None]
    if trace.step_truth is not None:
        values = [None if v is None else int(v) for v in trace.step_truth]
        source = "step_truth"
        name = str(trace.metadata.get("step_truth_judge") or TRUTH_JUDGE)
    elif judge is not None:
        values, source = [], "judge"
        name = str(getattr(judge, "__name__", None) or type(judge).__name__)
        for i in range(trace.n_steps):
            v = judge(trace, i)
            if v is not None and v not in (0, 1, True, False):
                raise FaithprobeError(f"judge returned {v!r}, not 0 or 1 (or None: unjudged)",
                                      source=f"trace {trace.id}", field=f"step {i}")
            values.append(None if v is None else int(v))
    else:
        return []
    return [Record(trace_id=trace.id, checkpoint=label, intervention="ki", step=i,
                   n_steps=trace.n_steps, model=ckpt.spec,
                   value=None if v is None else float(v),
                   detail={"source": source, "judge": name, "judged": v is not None})
            for i, v in enumerate(values)]
