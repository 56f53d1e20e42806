"""Answer scoring: the primitive every metric uses.

For a checkpoint and a batch of (question, steps) with a known answer, render the prompt up to the
forced-answer suffix, and measure

- the log-probability of the answer's tokens (tokenized in context, after the suffix),
- the argmax answer: over the options when the trace has options, else the greedy continuation,
  normalised (numbers canonicalised),
- the answer distribution for KL: over the options (renormalised), or the next-token
  distribution at the first answer position when there are no options.

Sequences are padded into batches (left or right); batched results equal unbatched ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from faithprobe.data.prompts import PromptTemplate
from faithprobe.data.tokens import Aligned, align
from faithprobe.errors import FaithprobeError
from faithprobe.models.batches import BYTE_BUDGET, tokens_within
from faithprobe.models.checkpoints import Checkpoint
from faithprobe.models.decode import generate
from faithprobe.models.forward import GreedyAfter, forward_logprobs
from faithprobe.models.kvcache import PaddingSide

__all__ = [
    "AnswerScore",
    "ScoreItem",
    "answer_span",
    "continuation_ids",
    "normalize_answer",
    "score",
]


@dataclass(frozen=True)
class ScoreItem:
    question: str
    steps: tuple[str, ...]
    answer: str  # the answer whose log-probability is measured
    options: tuple[str, ...] | None = None
    id: str = "?"  # names the trace in errors


@dataclass(frozen=True)
class AnswerScore:
    answer_logprob: float  # summed over the answer's tokens
    answer_nll_mean: float  # mean negative log-probability per answer token (InfoGain's H)
    n_answer_tokens: int
    pred: str  # argmax option, or the normalised greedy continuation ("" = no answer)
    pred_prob: float  # probability of pred (renormalised over options)
    option_logprobs: dict[str, float] | None  # per option: summed log-probability
    dist: np.ndarray  # log-probabilities of the answer distribution (options or vocabulary)
    nonfinite: bool = False  # a NaN or infinite logit reached the measurement


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalize_answer(text: str, *, numeric: bool | None = None) -> str:
    """First line, stripped of spaces and end punctuation; numbers canonicalised (1,000.50 ->
    1000.5). ``numeric=None`` treats the text as a number when it starts with one."""
    line = text.strip().split("\n", 1)[0].strip()
    line = line.strip(" .;:!*\"'`").strip()
    if numeric is None:
        numeric = bool(_NUMBER.match(line.lstrip("$")))
    if numeric:
        m = _NUMBER.search(line)
        if m is None:
            return ""
        raw = m.group().replace(",", "")
        if "." in raw:
            raw = raw.rstrip("0").rstrip(".")
        return "0" if raw in ("-0", "") else raw
    return line


def answer_span(ckpt: Checkpoint, aligned: Aligned) -> tuple[int, int]:
    """The answer's tokens; leading tokens that hold only the separator (a space token of a
    character-level tokenizer) are context, not answer."""
    start, end = aligned.span("answer")
    while end - start > 1 and not ckpt.tokenizer.decode([aligned.ids[start]]).strip():
        start += 1
    return start, end


def _render(
    ckpt: Checkpoint, template: PromptTemplate, item: ScoreItem, answer: str | None
) -> Aligned:
    rendered = template.render(item.question, item.steps, answer, tokenizer=ckpt.tokenizer)
    aligned = align(rendered.text, rendered.segments, ckpt.tokenizer, source=f"trace {item.id}",
                    markup=rendered.markup)
    if len(aligned.ids) > ckpt.n_ctx:
        raise FaithprobeError(
            f"prompt is {len(aligned.ids)} tokens, longer than the model's context of "
            f"{ckpt.n_ctx}",
            source=f"trace {item.id}",
        )
    return aligned


# How an item's answer is read back from the forward passes:
# "one_token": every option is one token after the same context (one sequence, one read);
# "options": each option scored in its own sequence, token by token;
# "free_form": no options: the answer teacher-forced, the greedy answer checked along the way.
_ReadMode = Literal["one_token", "options", "free_form"]


@dataclass(frozen=True)
class _ItemPlan:
    """One item's sequences in the batch and how to read its numbers back."""

    mode: _ReadMode
    candidates: tuple[str, ...]  # the options, or the answer alone (free form)
    first: int  # index of the item's first sequence in the batch
    tokens: tuple[tuple[int, ...], ...]  # each candidate's answer tokens
    skip: int = 0  # free form: positions read before the answer's first token (separator)
    segment: tuple[int, ...] = ()  # free form: the tokens from the separator to the answer's end


@dataclass(frozen=True)
class _Reads:
    """The per-token log-probabilities an item's plan reads."""

    per_token: list[list[float]]  # each candidate's answer tokens' log-probabilities
    first_dist: torch.Tensor  # log-probabilities at the first answer position


def _plan(ckpt: Checkpoint, template: PromptTemplate, item: ScoreItem, first: int
          ) -> tuple[_ItemPlan, list[tuple[int, ...]], list[list[int]]]:
    """The item's plan, its sequences and the positions each one reads."""
    candidates = tuple(item.options) if item.options else (item.answer,)
    if item.options and item.answer not in item.options:
        raise FaithprobeError(f"answer {item.answer!r} is not an option",
                              source=f"trace {item.id}", field="answer")
    aligned = [_render(ckpt, template, item, c) for c in candidates]
    spans = [answer_span(ckpt, a) for a in aligned]
    tokens = tuple(a.ids[s:e] for a, (s, e) in zip(aligned, spans))
    if not item.options:
        # free form: read from the separator on, and one past the answer, so the greedy
        # answer can be checked against the teacher-forced one without generating
        a, (s, e) = aligned[0], spans[0]
        g = a.span("answer")[0]
        plan = _ItemPlan("free_form", candidates, first, tokens, skip=s - g, segment=a.ids[g:e])
        return plan, [a.ids], [list(range(g - 1, e))]
    contexts = {a.ids[: s] for a, (s, _) in zip(aligned, spans)}
    if len(contexts) == 1 and all(e - s == 1 for s, e in spans):
        # every option is one token after the same context: one forward reads them all
        return (_ItemPlan("one_token", candidates, first, tokens), [aligned[0].ids],
                [[spans[0][0] - 1]])
    return (_ItemPlan("options", candidates, first, tokens), [a.ids for a in aligned],
            [list(range(s - 1, e - 1)) for s, e in spans])


def _read(plan: _ItemPlan, logprobs: Sequence[torch.Tensor]) -> _Reads:
    if plan.mode == "one_token":
        lp = logprobs[plan.first][0]
        return _Reads([[float(lp[t]) for t in toks] for toks in plan.tokens], lp)
    if plan.mode == "options":
        per_token = [[float(logprobs[plan.first + j][i, t]) for i, t in enumerate(toks)]
                     for j, toks in enumerate(plan.tokens)]
        return _Reads(per_token, logprobs[plan.first][0])
    lp = logprobs[plan.first]
    return _Reads([[float(lp[plan.skip + i, t]) for i, t in enumerate(plan.tokens[0])]],
                  lp[plan.skip])


def _option_score(item: ScoreItem, plan: _ItemPlan, reads: _Reads) -> AnswerScore:
    """The score of an item with options: the argmax option, renormalised over the options."""
    totals = [sum(v) for v in reads.per_token]
    nonfinite = not all(math.isfinite(v) for v in totals)
    answer_idx = plan.candidates.index(item.answer)
    n_tokens = len(reads.per_token[answer_idx])
    opt = torch.tensor(totals, dtype=torch.float64)
    dist = torch.log_softmax(opt, dim=0).numpy()
    best = int(torch.argmax(opt)) if not nonfinite else answer_idx
    return AnswerScore(
        totals[answer_idx], -totals[answer_idx] / n_tokens, n_tokens, plan.candidates[best],
        float(math.exp(dist[best])) if not nonfinite else float("nan"),
        dict(zip(plan.candidates, totals)), dist, nonfinite,
    )


def _free_form_score(ckpt: Checkpoint, item: ScoreItem, plan: _ItemPlan, reads: _Reads,
                     lp: torch.Tensor) -> tuple[AnswerScore, bool]:
    """The score of a free-form item, and whether its greedy answer is known (else ``pred`` is
    "" until the answer is generated)."""
    total = sum(reads.per_token[0])
    n_tokens = len(reads.per_token[0])
    nonfinite = not math.isfinite(total) or not bool(torch.isfinite(reads.first_dist).all())
    greedy = _teacher_forced_greedy(ckpt, item, plan.segment, lp)
    sc = AnswerScore(
        total, -total / n_tokens, n_tokens, greedy[0] if greedy else "",
        greedy[1] if greedy else float("nan"), None, reads.first_dist.double().numpy(),
        nonfinite,
    )
    return sc, greedy is not None


def score(
    ckpt: Checkpoint,
    items: Sequence[ScoreItem],
    template: PromptTemplate | None = None,
    *,
    batch_size: int = 16,
    padding_side: PaddingSide = "right",
    max_answer_tokens: int = 8,
    share_prefix: bool = False,
    max_batch_tokens: int | None = None,
) -> list[AnswerScore]:
    """Score each item's answer after its reasoning; see the module docstring.

    With ``share_prefix`` the items are edits of the first one (one trace): on a model with a
    KV cache the first item's tokens are run once and every other item runs only from its first
    differing token (exact up to float rounding). ``max_batch_tokens`` bounds each batch's
    padded size (see :func:`faithprobe.models.batches.token_batches`); by default the bound
    keeps a batch's attention scores within :data:`~faithprobe.models.batches.BYTE_BUDGET`.
    """
    template = template or ckpt.template
    if padding_side not in ("left", "right"):
        raise FaithprobeError("must be 'left' or 'right'", field="padding_side")
    seqs: list[tuple[int, ...]] = []
    reads: list[list[int]] = []
    plans: list[_ItemPlan] = []
    for item in items:
        plan, item_seqs, item_reads = _plan(ckpt, template, item, len(seqs))
        plans.append(plan)
        seqs += item_seqs
        reads += item_reads
    reuse_prefix = seqs[0] if share_prefix and seqs else None
    greedy = None
    if reuse_prefix is not None and any(p.mode == "free_form" for p in plans):
        greedy = _greedy_after(ckpt, template, items, plans, seqs, max_answer_tokens)
    if max_batch_tokens is None and seqs:  # a long trace's batches within the byte budget
        max_batch_tokens = tokens_within(BYTE_BUDGET, int(ckpt.bridge.cfg.n_heads),
                                         max(len(s) for s in seqs))
    logprobs = forward_logprobs(ckpt, seqs, reads, batch_size=batch_size,
                                padding_side=padding_side, reuse_prefix=reuse_prefix,
                                max_batch_tokens=max_batch_tokens, greedy=greedy)
    results: list[AnswerScore] = []
    undecided: list[int] = []  # free-form items whose greedy answer must be generated
    for k, (item, plan) in enumerate(zip(items, plans)):
        item_reads = _read(plan, logprobs)
        if plan.mode == "free_form":
            sc, decided = _free_form_score(ckpt, item, plan, item_reads, logprobs[plan.first])
            if not decided:
                undecided.append(k)
        else:
            sc = _option_score(item, plan, item_reads)
        results.append(sc)
    decoded = {} if greedy is None else {k: greedy.results[plans[k].first] for k in undecided
                                         if plans[k].first in greedy.results}
    rest = [k for k in undecided if k not in decoded]
    if rest:  # not decoded along with the scoring runs: generated from their prompts
        prompts = [_render(ckpt, template, items[k], None).ids for k in rest]
        decoded.update(zip(rest, generate(ckpt, prompts, max_new_tokens=max_answer_tokens,
                                          stop=_ANSWER_STOP, batch_size=batch_size,
                                          return_logprob=True, reuse_prefix=reuse_prefix)))
    for k in undecided:
        pred, prob = _greedy_answer(items[k], *decoded[k])
        results[k] = replace(results[k], pred=pred, pred_prob=prob)
    return results


def continuation_ids(ckpt: Checkpoint, template: PromptTemplate, question: str,
                     steps: Sequence[str], trace_id: str = "?") -> tuple[int, ...]:
    """Token ids of a rendered prompt up to (not including) the forced-answer suffix: where the
    model continues the reasoning."""
    aligned = _render(ckpt, template, ScoreItem(question, tuple(steps), "", None, trace_id),
                      None)
    return aligned.ids[: aligned.span("suffix")[0]]


def _teacher_forced_greedy(ckpt: Checkpoint, item: ScoreItem, segment: Sequence[int],
                           lp: torch.Tensor) -> tuple[str, float] | None:
    """(answer, its probability) when greedy decoding would write exactly the item's answer
    (every argmax along the answer is its token, and the next token ends it); else None."""
    if not all(int(torch.argmax(lp[i])) == t for i, t in enumerate(segment)):
        return None
    numeric = bool(_NUMBER.fullmatch(normalize_answer(item.answer)))
    said = normalize_answer(ckpt.tokenizer.decode(list(segment)), numeric=numeric)
    nxt = int(torch.argmax(lp[len(segment)]))
    more = normalize_answer(ckpt.tokenizer.decode([*segment, nxt]), numeric=numeric)
    if not said or said != more:
        return None
    return said, float(math.exp(sum(float(lp[i, t]) for i, t in enumerate(segment))))


_ANSWER_STOP = ("\n",)  # a free-form answer ends with its line


def _greedy_after(ckpt: Checkpoint, template: PromptTemplate, items: Sequence[ScoreItem],
                  plans: Sequence[_ItemPlan], seqs: Sequence[Sequence[int]], max_tokens: int
                  ) -> GreedyAfter:
    """Free-form items' greedy answers, decoded along with their scoring runs where the
    prompt (the rendering without an answer) begins the scored sequence: wanted where the
    teacher-forced answer is not what greedy decoding writes."""
    prompts: list[int | None] = [None] * len(seqs)
    owner: dict[int, int] = {}
    for k, (item, plan) in enumerate(zip(items, plans)):
        if plan.mode == "free_form":
            ids = _render(ckpt, template, item, None).ids
            if tuple(seqs[plan.first][: len(ids)]) == tuple(ids):
                prompts[plan.first] = len(ids)
                owner[plan.first] = k

    def wanted(s: int, lp: torch.Tensor) -> bool:
        item, plan = items[owner[s]], plans[owner[s]]
        return _teacher_forced_greedy(ckpt, item, plan.segment, lp) is None

    return GreedyAfter(prompts, wanted, max_tokens, _ANSWER_STOP)


def _greedy_answer(item: ScoreItem, text: str, _stopped: bool, logp: float
                   ) -> tuple[str, float]:
    """(answer, probability) of a greedy continuation after the forced-answer suffix."""
    numeric = bool(_NUMBER.fullmatch(normalize_answer(item.answer)))
    return normalize_answer(text, numeric=numeric), float(math.exp(logp))
