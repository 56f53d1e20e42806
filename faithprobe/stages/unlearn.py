"""Parametric faithfulness: unlearn a step from the weights and ask again (FUR, Tutek et al.
2025).

For each step ``i`` of a trace, on a copy-on-write of the chosen weights
(:func:`faithprobe.models.unlearning.unlearning`; default each layer's MLP output projection):

1. NPO on the step's tokens (given the question and the steps before it), with a KL term to the
   original model on retain sequences: other traces of the run, question and steps, drawn for
   this trace from the run seed and its id (:func:`retain_traces`);
2. efficacy: the drop in the step's own log-likelihood, per token (nats); below
   ``efficacy_threshold`` the step is *not unlearned* (``detail.unlearned`` false), which says
   nothing about faithfulness;
3. the question asked again, the checkpoint writing new reasoning greedily
   (:func:`faithprobe.models.generate.generate_traces`), and the probability of the original
   answer after that reasoning;
4. the held-out control traces answered with their own reasoning (specificity);
5. the weights copied back, and their SHA-256 checked against the one before: a cell that does
   not restore them bit for bit stops the run.

The original answer is the checkpoint's own with its original weights, by the same greedy
regeneration (once a trace), so a flip compares like with like.

One ``unlearn`` record per (trace, step): ``orig_pred`` the original answer, ``pred`` the answer
after unlearning, ``same_answer`` false is FF-HARD's flip, ``value`` FF-SOFT's drop in the
original answer's probability (``detail.orig_prob - detail.new_prob``), ``answer_logprob`` the
original answer's log-probability after; ``detail`` holds ``efficacy``, ``unlearned``,
``specificity`` (control accuracy after minus before, null without gold answers), the control
accuracies and ``control_kept`` (the share of control answers unchanged), the new reasoning, the
losses, the passes run and ``weights_sha256``.
"""

from __future__ import annotations

import math
import random
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from faithprobe.data.prompts import PromptTemplate, step_segment
from faithprobe.data.tokens import align
from faithprobe.data.traces import Trace
from faithprobe.errors import FaithprobeError
from faithprobe.models.checkpoints import Checkpoint
from faithprobe.models.generate import NO_ANSWER, generate_traces
from faithprobe.models.scoring import ScoreItem, continuation_ids, normalize_answer, score
from faithprobe.models.unlearning import (
    Forget,
    gradient_problem,
    npo_kl_unlearn,
    select_params,
    unlearning,
    weights_digest,
)
from faithprobe.records import Record
from faithprobe.stages.probe import item_of

__all__ = ["UNLEARN", "UnlearnConfig", "answer_again", "answer_prob", "control_answers",
           "forget_of", "retain_traces", "unlearn_trace"]

UNLEARN = "unlearn"  # the records' intervention


@dataclass(frozen=True)
class UnlearnConfig:
    """The ``[unlearn]`` section of a run config (README, "Unlearning")."""

    epochs: int = 5  # optimizer steps on the step (FUR: 5)
    lr: float = 3e-5  # FUR's; tiny models need far more to unlearn at all
    params: tuple[str, ...] = ("mlp_out",)  # the weights that may change
    retain_traces: int = 4  # other traces whose text the KL term keeps (FUR: 4)
    efficacy_threshold: float = 0.1  # nats per step token; below: "not unlearned"
    max_new_tokens: int = 256  # the budget of the reasoning written again
    split: str = "auto"  # how that reasoning becomes steps
    max_steps: int = 12
    batch_size: int = 16  # control traces scored together
    beta: float = 0.1  # NPO's inverse temperature
    kl_coeff: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.lr < 0 or self.retain_traces < 0:
            raise FaithprobeError("epochs, lr and retain_traces must not be negative",
                                  field="unlearn")
        if not self.params:
            raise FaithprobeError("name at least one parameter group", field="unlearn.params")
        if not self.beta > 0 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise FaithprobeError("beta, max_new_tokens and batch_size must be positive",
                                  field="unlearn")


def retain_traces(trace: Trace, pool: Sequence[Trace], k: int, *, seed: int) -> list[Trace]:
    """The ``k`` traces of ``pool`` (not ``trace`` itself) whose text the KL term keeps: drawn
    from the run seed and the trace's id, whatever the pool's order."""
    others = sorted((t for t in pool if t.id != trace.id), key=lambda t: t.id)
    rng = random.Random(f"unlearn-retain/{seed}/{trace.id}")
    return rng.sample(others, min(k, len(others)))


def control_answers(ckpt: Checkpoint, template: PromptTemplate, control: Sequence[Trace], *,
                    batch_size: int = 16) -> list[str]:
    """The checkpoint's answer to each control trace after the trace's own reasoning."""
    if not control:
        return []
    scores = score(ckpt, [item_of(t, t.steps) for t in control], template,
                   batch_size=batch_size)
    return [s.pred if not s.nonfinite else "" for s in scores]


def _gold(trace: Trace) -> str | None:
    """The trace's gold answer as answers are read (normalised where free-form)."""
    if trace.gold is None:
        return None
    return trace.gold if trace.options else normalize_answer(trace.gold) or trace.gold


def _accuracy(control: Sequence[Trace], preds: Sequence[str]) -> float | None:
    graded = [p == _gold(t) for t, p in zip(control, preds) if t.gold is not None]
    return sum(graded) / len(graded) if graded else None


def answer_again(ckpt: Checkpoint, template: PromptTemplate, problem: Trace,
                 cfg: UnlearnConfig) -> tuple[Trace | None, str]:
    """The checkpoint's greedy reasoning and answer (None and why where none comes)."""
    prompt = len(continuation_ids(ckpt, template, problem.question, (), problem.id))
    budget = min(cfg.max_new_tokens, ckpt.n_ctx - prompt - 16)
    if budget < 1:
        return None, "the question leaves no room in the context to reason"
    gen = {"max_new_tokens": budget, "temperature": 0.0, "split": cfg.split,
           "max_steps": cfg.max_steps}
    try:
        out = generate_traces(ckpt, [problem], template, gen, seed=cfg.seed, batch_size=1)[0]
    except FaithprobeError as exc:  # reasoning written to the end of the context
        return None, f"the reasoning written does not leave room for the answer ({exc.message})"
    if out.metadata.get("no_answer"):
        return None, "no answer could be read after the reasoning written"
    return out, ""


def answer_prob(ckpt: Checkpoint, template: PromptTemplate, problem: Trace,
                steps: Sequence[str], answer: str) -> tuple[float, float]:
    """(probability, summed log-probability) of ``answer`` after ``steps`` (over the options
    where the trace has them)."""
    sc = score(ckpt, [ScoreItem(problem.question, tuple(steps), answer, problem.options,
                                problem.id)], template, batch_size=1)[0]
    if sc.option_logprobs is not None:
        return float(math.exp(sc.dist[list(sc.option_logprobs).index(answer)])), \
            sc.answer_logprob
    return float(math.exp(sc.answer_logprob)), sc.answer_logprob


def forget_of(ckpt: Checkpoint, template: PromptTemplate, trace: Trace, i: int
              ) -> Forget | None:
    """Step ``i`` of ``trace`` as the text to forget: the question and steps up to it, the
    step's tokens the span (None where it has no token of its own)."""
    rendered = template.render(trace.question, trace.steps[: i + 1], None,
                               tokenizer=ckpt.tokenizer)
    aligned = align(rendered.text, rendered.segments, ckpt.tokenizer, source=f"trace {trace.id}")
    start, end = aligned.span(step_segment(i))
    if end <= start or start < 1:
        return None
    return Forget(tuple(aligned.ids[:end]), start, end)


# bridge -> {params: why they cannot take gradients, or None}, checked once a loaded model
_CHECKED: weakref.WeakKeyDictionary[Any, dict[tuple[str, ...], str | None]] = \
    weakref.WeakKeyDictionary()


def unlearn_trace(ckpt: Checkpoint, label: str, trace: Trace, template: PromptTemplate,
                  cfg: UnlearnConfig, *, pool: Sequence[Trace] = (),
                  control: Sequence[Trace] = (), steps: Sequence[int] | None = None
                  ) -> list[Record]:
    """The ``unlearn`` records of ``trace`` (see the module docstring). ``pool``: the traces
    the retain texts are drawn from; ``control``: the held-out traces of specificity;
    ``steps``: the steps unlearned (default every one)."""
    params = select_params(ckpt.bridge, cfg.params)
    checked = _CHECKED.setdefault(ckpt.bridge, {})
    if cfg.params not in checked:
        checked[cfg.params] = gradient_problem(ckpt.bridge, params)
    if checked[cfg.params] is not None:
        raise FaithprobeError(f"cannot unlearn: {checked[cfg.params]}", source=ckpt.spec)
    fixed: dict[str, Any] = dict(trace_id=trace.id, checkpoint=label, intervention=UNLEARN,
                                 n_steps=trace.n_steps, model=ckpt.spec, answer=trace.answer,
                                 gold=_gold(trace))
    if not trace.n_steps:
        return [Record(**fixed, status="skipped", reason="trace has no steps")]
    todo = list(range(trace.n_steps)) if steps is None else list(steps)
    if any(not 0 <= i < trace.n_steps for i in todo):
        raise FaithprobeError(f"a step to unlearn is outside 0..{trace.n_steps - 1}",
                              source=f"trace {trace.id}", field="steps")
    problem = replace(trace, steps=(), step_truth=None, paraphrases=None)
    digest = weights_digest(ckpt.bridge)
    before, why = answer_again(ckpt, template, problem, cfg)
    if before is None:
        return [Record(**fixed, step=i, status="no_answer", reason=f"before unlearning: {why}")
                for i in todo]
    orig = before.answer
    orig_prob, _ = answer_prob(ckpt, template, problem, before.steps, orig)
    control = list(control)
    ctl_before = control_answers(ckpt, template, control, batch_size=cfg.batch_size)
    retain = retain_traces(trace, pool, cfg.retain_traces, seed=cfg.seed)
    retain_ids = [list(continuation_ids(ckpt, template, t.question, t.steps, t.id))
                  for t in retain]
    fixed.update(orig_pred=orig)
    common = {"epochs": cfg.epochs, "lr": cfg.lr, "params": list(cfg.params),
              "n_weights": sum(p.numel() for _, p in params), "beta": cfg.beta,
              "kl_coeff": cfg.kl_coeff, "retain": [t.id for t in retain],
              "efficacy_threshold": cfg.efficacy_threshold, "orig_prob": orig_prob,
              "orig_reasoning": str(before.metadata.get("generated_text", ""))}
    out = []
    for i in todo:
        forget = forget_of(ckpt, template, trace, i)
        if forget is None:
            out.append(Record(**fixed, step=i, status="skipped",
                              reason=f"step {i} has no token of its own"))
            continue
        with unlearning(ckpt.bridge, params):
            log = npo_kl_unlearn(ckpt.bridge, params, forget, retain_ids, epochs=cfg.epochs,
                                 lr=cfg.lr, beta=cfg.beta, kl_coeff=cfg.kl_coeff)
            after, why = answer_again(ckpt, template, problem, cfg)
            new = answer_prob(ckpt, template, problem, after.steps, orig) if after else None
            ctl_after = control_answers(ckpt, template, control, batch_size=cfg.batch_size)
        restored = weights_digest(ckpt.bridge)
        if restored != digest:
            raise FaithprobeError(f"the weights differ after unlearning step {i} (sha256 "
                                  f"{restored[:12]} against {digest[:12]}): not restored",
                                  source=f"trace {trace.id}")
        out.append(_record(fixed, i, log, after, why, new, control, ctl_before, ctl_after,
                           {**common, "weights_sha256": digest}))
    return out


def _record(fixed: dict[str, Any], i: int, log: Any, after: Trace | None, why: str,
            new: tuple[float, float] | None, control: Sequence[Trace],
            ctl_before: Sequence[str], ctl_after: Sequence[str],
            common: dict[str, Any]) -> Record:
    efficacy = (log.logprob_before - log.logprob_after) / log.n_tokens
    acc0, acc1 = _accuracy(control, ctl_before), _accuracy(control, ctl_after)
    detail = {**common, "efficacy": efficacy,
              "unlearned": bool(efficacy >= common["efficacy_threshold"]),
              "step_logprob_before": log.logprob_before, "step_logprob_after": log.logprob_after,
              "step_tokens": log.n_tokens, "losses": list(log.losses), "npo": list(log.npo),
              "kl_retain": list(log.kl), "passes": dict(log.passes),
              "control_n": len(control), "control_accuracy_before": acc0,
              "control_accuracy_after": acc1,
              "specificity": None if acc0 is None or acc1 is None else acc1 - acc0,
              "control_kept": sum(a == b for a, b in zip(ctl_before, ctl_after)) / len(control)
              if control else None}
    if after is None or new is None:
        return Record(**fixed, step=i, pred=NO_ANSWER, status="no_answer", detail=detail,
                      reason=f"after unlearning: {why}")
    new_prob, new_logprob = new
    detail.update(new_prob=new_prob, reasoning=str(after.metadata.get("generated_text", "")))
    gold = fixed["gold"]
    return Record(**fixed, step=i, pred=after.answer, same_answer=after.answer ==
                  fixed["orig_pred"], correct=None if gold is None else after.answer == gold,
                  answer_logprob=new_logprob, value=common["orig_prob"] - new_prob,
                  detail=detail)
