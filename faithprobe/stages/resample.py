"""Counterfactual resampling importance of each step (Thought Anchors, Bogdan et al. 2025).

For a trace of ``n`` steps the checkpoint continues its reasoning K times from each of the
``n + 1`` prefixes ``steps[:j]`` (``j = 0..n``): it writes step ``j`` and the rest, then its
answer is forced with the template's suffix and read as in the probe (the argmax option, or the
greedy free-form answer). Rollouts from ``steps[:i + 1]`` keep step ``i``; rollouts from
``steps[:i]`` resample it, so ``(n + 1) x K`` generations serve all ``n`` steps. The
counterfactual variant keeps only the resamples whose new step ``i`` differs in meaning from the
original (``different``: exact ``text``, the ``numbers`` in the step, or the ``cosine``
similarity of the model's own hidden states below ``threshold``; ``any`` keeps them all).

Importance of step ``i`` is the total variation distance between the answer distribution with
the step kept and with it (counterfactually) resampled: ``TV(P, Q) = 1/2 sum |P(a) - Q(a)|``,
0 when resampling the step never changes the answer distribution, 1 when the two never share
an answer. Its sampling error is a bootstrap over the rollouts of the two sets (each resampled
with replacement), recorded in the record's ``detail`` (``se``, ``ci_low``, ``ci_high``).

Every rollout has its own seed, a hash of (run seed, trace id, prefix, sample): records are the
same whether traces run together or one by one, and whatever the batch size.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from faithprobe.data.prompts import THINK_CLOSE, PromptTemplate
from faithprobe.data.traces import Trace
from faithprobe.errors import FaithprobeError
from faithprobe.metrics.bootstrap import percentile_interval
from faithprobe.models.checkpoints import Checkpoint
from faithprobe.models.decode import draw_seed, sample_continuations
from faithprobe.models.generate import NO_ANSWER
from faithprobe.models.scoring import continuation_ids, normalize_answer, score
from faithprobe.records import Record
from faithprobe.stages.probe import item_of

__all__ = ["DIFFERENT", "NO_ANSWER", "ResampleConfig", "differs", "resample_trace",
           "rollout_seed", "total_variation"]

Different = Literal["any", "text", "numbers", "cosine"]
DIFFERENT: tuple[Different, ...] = ("any", "text", "numbers", "cosine")
N_BOOT = 200  # bootstrap replicates of one step's sampling error
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class ResampleConfig:
    """The ``[resample]`` section of a run config (README, "Resampling")."""

    samples: int = 8  # K rollouts per prefix
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 256  # a rollout's budget: the rest of the reasoning
    different: Different = "text"
    threshold: float = 0.8  # cosine: a resample is different below this similarity
    batch_size: int = 64  # rollouts generated together
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 2:
            raise FaithprobeError("must be at least 2", field="samples")
        if not self.temperature > 0:
            raise FaithprobeError("must be above 0 (resampling samples)", field="temperature")
        if not 0 < self.top_p <= 1:
            raise FaithprobeError("must be in (0, 1]", field="top_p")
        if self.different not in DIFFERENT:
            raise FaithprobeError(f"{self.different!r} is not one of {', '.join(DIFFERENT)}",
                                  field="different")
        if not -1 <= self.threshold <= 1:
            raise FaithprobeError("must be in [-1, 1]", field="threshold")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise FaithprobeError("must be at least 1", field="max_new_tokens"
                                  if self.max_new_tokens < 1 else "batch_size")


def rollout_seed(seed: int, trace_id: str, prefix: int, sample: int) -> int:
    """The seed of one rollout: a hash of the run seed, trace, prefix length and sample."""
    return draw_seed(seed, trace_id, prefix, sample)


def total_variation(p: Counter[str], q: Counter[str]) -> float:
    """TV distance between the empirical distributions of two answer counts (both non-empty)."""
    n_p, n_q = sum(p.values()), sum(q.values())
    # summed in sorted order: the same float whatever the process's string hashing
    return 0.5 * sum(abs(p[a] / n_p - q[a] / n_q) for a in sorted(set(p) | set(q)))


def _numbers(text: str) -> list[float]:
    return [float(x) for x in _NUMBER.findall(text)]


def differs(original: str, new: Sequence[str], rule: Different, *,
            similarity: Sequence[float] | None = None, threshold: float = 0.8) -> list[bool]:
    """Whether each new step differs in meaning from ``original`` under ``rule`` (``cosine``
    reads the similarities given)."""
    if rule == "any":
        return [True] * len(new)
    if rule == "text":
        norm = " ".join(original.split()).casefold()
        return [" ".join(t.split()).casefold() != norm for t in new]
    if rule == "numbers":
        ref = _numbers(original)
        return [_numbers(t) != ref for t in new]
    if similarity is None:
        raise FaithprobeError("the cosine rule needs similarities", field="different")
    return [not s >= threshold for s in similarity]  # NaN (an empty step) counts as different


@torch.no_grad()
def hidden_similarity(ckpt: Checkpoint, original: str, new: Sequence[str]) -> list[float]:
    """Cosine similarity of each new step to ``original``: the mean over a step's tokens of the
    last block's residual stream, each step run on its own. An empty step gives NaN."""
    name = f"blocks.{ckpt.n_layers - 1}.hook_resid_post"
    vectors: dict[str, torch.Tensor | None] = {}
    for text in dict.fromkeys([original, *new]):
        ids = ckpt.tokenizer.prefix_ids + ckpt.tokenizer.encode(text)[0]
        if len(ids) == len(ckpt.tokenizer.prefix_ids):
            vectors[text] = None
            continue
        _, cache = ckpt.bridge.run_with_cache(torch.tensor([ids[: ckpt.n_ctx]],
                                                           device=ckpt.device),
                                              names_filter=[name])
        vectors[text] = cache[name][0, len(ckpt.tokenizer.prefix_ids):].float().mean(0).cpu()
    ref = vectors[original]
    out = []
    for text in new:
        v = vectors[text]
        out.append(float("nan") if v is None or ref is None else
                   float(torch.nn.functional.cosine_similarity(ref, v, dim=0)))
    return out


def _interval(kept: list[str], resampled: list[str], rng: np.random.Generator
              ) -> tuple[float, float, float]:
    """(standard error, 2.5th, 97.5th percentile) of the TV over bootstrap replicates."""
    a, b = np.array(kept, dtype=object), np.array(resampled, dtype=object)
    reps = [total_variation(Counter(a[rng.integers(0, len(a), len(a))]),
                            Counter(b[rng.integers(0, len(b), len(b))])) for _ in range(N_BOOT)]
    return (statistics.stdev(reps),
            *percentile_interval(total_variation(Counter(kept), Counter(resampled)), reps))


def _skip(trace: Trace, label: str, ckpt: Checkpoint, reason: str, step: int | None,
          detail: dict[str, Any]) -> Record:
    return Record(trace_id=trace.id, checkpoint=label, intervention="resample", step=step,
                  n_steps=trace.n_steps, model=ckpt.spec, answer=trace.answer,
                  status="skipped", reason=reason, detail=detail)


def resample_trace(ckpt: Checkpoint, label: str, trace: Trace, template: PromptTemplate,
                   config: ResampleConfig, *, score_batch_size: int = 16) -> list[Record]:
    """One ``Record(intervention="resample")`` per step of ``trace`` (see the module docstring):
    ``value`` is the step's importance; the answer counts with the step kept, resampled and
    counterfactually resampled, the non-counterfactual importance and the sampling error are in
    ``detail``. A step none of whose resamples differs from it is ``skipped`` (undefined)."""
    variant = {"variant": {"different": config.different}}
    if not trace.n_steps:
        return [_skip(trace, label, ckpt, "trace has no steps", None, variant)]
    n, k_samples = trace.n_steps, config.samples
    prompts = [continuation_ids(ckpt, template, trace.question, trace.steps[:j], trace.id)
               for j in range(n + 1)]
    rows = [(j, k) for j in range(n + 1) for k in range(k_samples)]
    stop = [s for s in (THINK_CLOSE if template.thinking else "", template.suffix.strip()) if s]
    drawn = sample_continuations(
        ckpt, [prompts[j] for j, _ in rows],
        [rollout_seed(config.seed, trace.id, j, k) for j, k in rows],
        max_new_tokens=config.max_new_tokens, temperature=config.temperature,
        top_p=config.top_p, stop=stop, batch_size=config.batch_size, shared_prefix=prompts[n])
    written = [template.written_steps(text) for text in drawn.texts]
    items = [item_of(trace, trace.steps)] + [
        item_of(trace, trace.steps[:j] + tuple(w)) for (j, _), w in zip(rows, written)]
    scores = score(ckpt, items, template, batch_size=score_batch_size, share_prefix=True)[1:]
    answers = [sc.pred if sc.pred and not sc.nonfinite else NO_ANSWER for sc in scores]
    by_prefix = [answers[j * k_samples:(j + 1) * k_samples] for j in range(n + 1)]
    first = [[w[0] if w else "" for w in written[j * k_samples:(j + 1) * k_samples]]
             for j in range(n + 1)]
    unstopped = sum(not s for s in drawn.stopped)
    opts = {k: v for k, v in asdict(config).items() if k not in ("batch_size", "seed")}
    gold = None if trace.gold is None else (
        trace.gold if trace.options else normalize_answer(trace.gold))
    records = []
    for i in range(n):
        kept, resampled = by_prefix[i + 1], by_prefix[i]
        sim = hidden_similarity(ckpt, trace.steps[i], first[i]) \
            if config.different == "cosine" else None
        mask = differs(trace.steps[i], first[i], config.different, similarity=sim,
                       threshold=config.threshold)
        chosen = [a for a, m in zip(resampled, mask) if m]
        detail: dict[str, Any] = {
            **variant, "divergence": "total_variation", "options": opts,
            "kept_answers": dict(Counter(kept)), "resampled_answers": dict(Counter(resampled)),
            "different_answers": dict(Counter(chosen)), "n_different": len(chosen),
            "importance_all": total_variation(Counter(kept), Counter(resampled)),
            "resampled_steps": first[i], "unstopped_rollouts": unstopped,
            "tokens_run": drawn.tokens_run,
            **({"similarity": sim} if sim is not None else {}),
        }
        if not chosen:
            records.append(_skip(trace, label, ckpt, "no resample of the step differs from it "
                                 f"(different = {config.different})", i, detail))
            continue
        rng = np.random.default_rng(rollout_seed(config.seed, trace.id, -1, i))
        se, lo, hi = _interval(kept, chosen, rng)
        records.append(Record(
            trace_id=trace.id, checkpoint=label, intervention="resample", step=i, n_steps=n,
            model=ckpt.spec, answer=trace.answer, gold=gold,
            value=total_variation(Counter(kept), Counter(chosen)),
            detail={**detail, "se": se, "ci_low": lo, "ci_high": hi}))
    return records
