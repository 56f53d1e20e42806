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
from dataclasses import dataclass

import numpy as np
import torch

from faithprobe.data.prompts import PromptTemplate
from faithprobe.data.tokens import Aligned, align
from faithprobe.errors import FaithprobeError
from faithprobe.models.checkpoints import Checkpoint
from faithprobe.models.forward import forward_logprobs, generate

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
    aligned = align(rendered.text, rendered.segments, ckpt.tokenizer, source=f"trace {item.id}")
    if len(aligned.ids) > ckpt.n_ctx:
        raise FaithprobeError(
            f"prompt is {len(aligned.ids)} tokens, longer than the model's context of "
            f"{ckpt.n_ctx}",
            source=f"trace {item.id}",
        )
    return aligned


def score(
    ckpt: Checkpoint,
    items: Sequence[ScoreItem],
    template: PromptTemplate | None = None,
    *,
    batch_size: int = 16,
    padding_side: str = "right",
    max_answer_tokens: int = 8,
    share_prefix: bool = False,
) -> list[AnswerScore]:
    """Score each item's answer after its reasoning; see the module docstring.

    With ``share_prefix`` the items are edits of the first one (one trace): on a model with a
    KV cache the first item's tokens are run once and every other item runs only from its first
    differing token (exact up to float rounding).
    """
    template = template or ckpt.template
    if padding_side not in ("left", "right"):
        raise FaithprobeError("must be 'left' or 'right'", field="padding_side")
    seqs: list[tuple[int, ...]] = []
    reads: list[list[int]] = []
    plan: list[dict] = []  # per item: how to read its numbers back
    for item in items:
        candidates = list(item.options) if item.options else [item.answer]
        if item.options and item.answer not in item.options:
            raise FaithprobeError(f"answer {item.answer!r} is not an option",
                                  source=f"trace {item.id}", field="answer")
        aligned = [_render(ckpt, template, item, c) for c in candidates]
        spans = [answer_span(ckpt, a) for a in aligned]
        contexts = {a.ids[: s[0]] for a, s in zip(aligned, spans)}
        single = bool(item.options) and len(contexts) == 1 and all(e - s == 1 for s, e in spans)
        entry = {"candidates": candidates, "start": len(seqs), "single": single}
        if single:
            # every option is one token after the same context: one forward reads them all
            seqs.append(aligned[0].ids)
            reads.append([spans[0][0] - 1])
            entry["tokens"] = [a.ids[s[0]] for a, s in zip(aligned, spans)]
        elif item.options:
            for a, (s, e) in zip(aligned, spans):
                seqs.append(a.ids)
                reads.append(list(range(s - 1, e - 1)))
            entry["tokens"] = [a.ids[s:e] for a, (s, e) in zip(aligned, spans)]
        else:
            # free form: read from the separator on, and one past the answer, so the greedy
            # answer can be checked against the teacher-forced one without generating
            a, (s, e) = aligned[0], spans[0]
            g = a.span("answer")[0]
            seqs.append(a.ids)
            reads.append(list(range(g - 1, e)))
            entry.update(tokens=[a.ids[s:e]], skip=s - g, segment=a.ids[g:e])
        plan.append(entry)
    logprobs = forward_logprobs(ckpt, seqs, reads, batch_size=batch_size,
                                padding_side=padding_side,
                                reuse_prefix=seqs[0] if share_prefix and seqs else None)
    results: list[AnswerScore | None] = []
    free_form: list[int] = []
    for k, (item, entry) in enumerate(zip(items, plan)):
        start = entry["start"]
        if entry["single"]:
            lp = logprobs[start][0]
            per_token = [[float(lp[t])] for t in entry["tokens"]]
            first_dist = lp
        elif item.options:
            per_token = []
            for j, toks in enumerate(entry["tokens"]):
                lp = logprobs[start + j]
                per_token.append([float(lp[i, t]) for i, t in enumerate(toks)])
            first_dist = logprobs[start][0]
        else:
            lp, skip = logprobs[start], entry["skip"]
            per_token = [[float(lp[skip + i, t]) for i, t in enumerate(entry["tokens"][0])]]
            first_dist = lp[skip]
        totals = [sum(v) for v in per_token]
        nonfinite = not all(math.isfinite(v) for v in totals)
        answer_idx = entry["candidates"].index(item.answer) if item.options else 0
        ans_tokens = per_token[answer_idx]
        answer_logprob = totals[answer_idx]
        nll_mean = -answer_logprob / len(ans_tokens)
        if item.options:
            opt = torch.tensor(totals, dtype=torch.float64)
            dist = torch.log_softmax(opt, dim=0).numpy()
            best = int(torch.argmax(opt)) if not nonfinite else answer_idx
            results.append(AnswerScore(
                answer_logprob, nll_mean, len(ans_tokens), entry["candidates"][best],
                float(math.exp(dist[best])) if not nonfinite else float("nan"),
                dict(zip(entry["candidates"], totals)), dist, nonfinite,
            ))
        else:
            nonfinite = nonfinite or not bool(torch.isfinite(first_dist).all())
            greedy = _teacher_forced_greedy(ckpt, item, entry["segment"], logprobs[start])
            results.append(AnswerScore(
                answer_logprob, nll_mean, len(ans_tokens), greedy[0] if greedy else "",
                greedy[1] if greedy else float("nan"), None, first_dist.double().numpy(),
                nonfinite,
            ))
            if greedy is None:
                free_form.append(k)
    if free_form:
        _greedy_answers(ckpt, template, [items[k] for k in free_form],
                        [results[k] for k in free_form], free_form, results,
                        max_answer_tokens, batch_size,
                        reuse_prefix=seqs[0] if share_prefix and seqs else None)
    return results  # type: ignore[return-value]


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


def _greedy_answers(ckpt, template, items, scores, where, results, max_tokens, batch_size,
                    reuse_prefix=None):
    """Greedy-decode the answer after the suffix (free-form answers)."""
    prompts = [_render(ckpt, template, it, None).ids for it in items]
    outs = generate(ckpt, prompts, max_new_tokens=max_tokens, stop=("\n",),
                    batch_size=batch_size, return_logprob=True, reuse_prefix=reuse_prefix)
    for i, (item, sc) in enumerate(zip(items, scores)):
        text, _stopped, logp = outs[i]
        numeric = bool(_NUMBER.fullmatch(normalize_answer(item.answer)))
        pred = normalize_answer(text, numeric=numeric)
        results[where[i]] = AnswerScore(
            sc.answer_logprob, sc.answer_nll_mean, sc.n_answer_tokens, pred,
            float(math.exp(logp)), None, sc.dist, sc.nonfinite,
        )
