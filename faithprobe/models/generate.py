"""Trace generation: each checkpoint writes its own chain of thought.

For each problem the checkpoint continues the rendered prompt (through its chat template where
it has one) greedily or with seeded sampling, up to a length limit; the text is cut at the first
stop string (the forced-answer suffix, "The answer is", "####"), split into steps, and the
answer is then forced with the template's suffix and read back normalised. A generation whose
forced answer cannot be read is kept with ``metadata["no_answer"] = True`` (recorded as
``no_answer`` and counted, never a crash).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from faithprobe.data.prompts import THINK_CLOSE, PromptTemplate
from faithprobe.data.sources import ARITHMETIC_JUDGE, arithmetic_step_truth
from faithprobe.data.thinking import split_thinking
from faithprobe.data.traces import MAX_FIELD_CHARS, SplitMode, Trace, split_steps
from faithprobe.errors import FaithprobeError
from faithprobe.models.checkpoints import Checkpoint
from faithprobe.models.forward import (
    common_prefix,
    croppable,
    generate,
    has_kv_cache,
    token_batches,
)
from faithprobe.models.scoring import ScoreItem, continuation_ids, normalize_answer, score

__all__ = ["NO_ANSWER", "Samples", "generate_traces", "sample_continuations", "steps_of"]

NO_ANSWER = "no_answer"
_STOPS = ("The answer is", "the answer is", "####", "Final answer", "final answer")


def steps_of(text: str, mode: SplitMode, max_steps: int, *, thinking: bool = False
             ) -> tuple[str, ...]:
    """The steps of a generated chain of thought: split by ``mode``, or, for a thinking model,
    the paragraphs (else sentences) of its ``<think>`` block."""
    if thinking:
        pieces = split_thinking(text)[0]
    else:
        pieces = [s.text for s in split_steps(text, mode)]
    steps = [p[:MAX_FIELD_CHARS] for p in pieces]
    return tuple(s for s in steps if s.strip())[:max_steps]


def generate_traces(
    ckpt: Checkpoint,
    problems: Sequence[Trace],
    template: PromptTemplate,
    gen: dict[str, Any],
    *,
    seed: int = 0,
    batch_size: int = 16,
    quiet: bool = True,
) -> list[Trace]:
    """One generated trace per problem (question, gold and options kept; steps and answer the
    checkpoint's own). ``gen`` holds ``max_new_tokens``, ``temperature``, ``split`` and
    ``max_steps`` (the ``[generation]`` section of a run config)."""
    prompts = [continuation_ids(ckpt, template, p.question, (), p.id) for p in problems]
    stops = tuple(s for s in (THINK_CLOSE if template.thinking else "",
                              template.suffix.strip(), *_STOPS) if s)
    outs = []
    step = max(1, batch_size)
    iterator = range(0, len(prompts), step)
    if not quiet:
        from tqdm.auto import tqdm

        # disable=None: no bar where stderr is not a terminal (a log file)
        iterator = tqdm(iterator, desc=f"{ckpt.spec}: generating", unit="batch", disable=None)
    for lo in iterator:
        outs += generate(ckpt, prompts[lo: lo + step], max_new_tokens=gen["max_new_tokens"],
                         stop=stops, temperature=gen["temperature"], seed=seed + lo,
                         batch_size=batch_size)
    drafts = []
    for p, (text, stopped) in zip(problems, outs):
        text = re.sub(r"<\|[^|]*\|>", " ", text)  # stray special-token text
        steps = steps_of(text, gen["split"], gen["max_steps"], thinking=template.thinking)
        drafts.append((p, steps, stopped, text))
    # force the answer: what the model says after its own reasoning and the suffix
    items = [ScoreItem(p.question, steps, p.options[0] if p.options else "0", p.options, p.id)
             for p, steps, _, _ in drafts]
    scores = score(ckpt, items, template, batch_size=batch_size)
    traces = []
    for (p, steps, stopped, text), sc in zip(drafts, scores):
        pred = sc.pred if not sc.nonfinite else ""
        meta = {**p.metadata, "generated_by": ckpt.spec, "generation_stopped": stopped,
                "generated_text": text[:4000], **({} if pred else {"no_answer": True})}
        truth = None
        meta.pop("step_truth_judge", None)  # the problem's own steps were judged, not these
        if steps and meta.get("source") == "reasoning_gym":
            truth = tuple(arithmetic_step_truth(s) for s in steps)  # exact KI for arithmetic
            meta["step_truth_judge"] = ARITHMETIC_JUDGE
        traces.append(Trace(
            id=p.id, question=p.question, steps=steps, answer=pred or NO_ANSWER,
            step_truth=truth,
            options=p.options if pred or not p.options else None,
            gold=None if p.gold is None else (p.gold if p.options else
                                              normalize_answer(p.gold) or p.gold),
            metadata=meta, unanswerable=p.unanswerable,
        ))
    return traces


# ---------------------------------------------------------------------------------------------
# seeded sampling of many continuations (counterfactual resampling)


@dataclass(frozen=True)
class Samples:
    """Continuations of :func:`sample_continuations`: each row's text (cut at the first stop
    string) and whether it stopped before its token budget; ``tokens_run`` counts the token
    positions the model computed, the shared prefix included (it shows the prefix ran once)."""

    texts: tuple[str, ...]
    stopped: tuple[bool, ...]
    tokens_run: int


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if s:
            ids[row, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[row, width - len(s):] = 1
    return ids, mask


@torch.no_grad()
def sample_continuations(
    ckpt: Checkpoint,
    prompts: Sequence[Sequence[int]],
    seeds: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    batch_size: int = 64,
    shared_prefix: Sequence[int] | None = None,
) -> Samples:
    """Sample one continuation per prompt, row ``k`` from its own generator seeded with
    ``seeds[k]``: a row's text depends on its prompt and seed only, not on which rows share its
    batch, so K samples drawn together equal the same K drawn one at a time.

    Tokens are drawn from the softmax of the logits after transformers' temperature and top-p
    (nucleus) warpers, by inverse CDF with one uniform draw from the row's generator. With
    ``shared_prefix`` (token ids the prompts begin with, e.g. the whole trace) on a model with
    a KV cache, that prefix is run once and each batch starts from a copy of its cache cut at
    the batch's first differing token; a row stops at the end-of-sequence token, a stop string
    (cut from the text), ``max_new_tokens`` or the model's context, and leaves the batch.
    """
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    if len(seeds) != len(prompts):
        raise FaithprobeError("one seed per prompt", field="seeds")
    warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    device = ckpt.device
    run = 0
    base = None
    if shared_prefix is not None and has_kv_cache(ckpt) and prompts:
        prefix = list(shared_prefix)
        _, base = ckpt.bridge(torch.tensor([prefix], device=device),
                              return_type="logits_and_cache")
        run += len(prefix)
        if not croppable(base):  # sliding windows, recurrent state: no shared prefix
            base = None
    texts = [""] * len(prompts)
    stopped = [False] * len(prompts)
    for rows in token_batches([len(p) for p in prompts], batch_size):
        start, cache = 0, None
        if base is not None:
            start = min(min(common_prefix(prompts[k], prefix), len(prompts[k]) - 1) for k in rows)
            if start > 0:
                cache = copy.deepcopy(base)
                if start < len(prefix):
                    cache.crop(start - len(prefix))  # a negative count: drop the tokens after
                cache.batch_repeat_interleave(len(rows))
        gens = [torch.Generator().manual_seed(int(seeds[k]) % 2**63) for k in rows]
        out, n = _sample_batch(ckpt, [prompts[k] for k in rows], gens, cache, start,
                               max_new_tokens, warpers, stop)
        run += n
        for k, (text, done) in zip(rows, out):
            texts[k], stopped[k] = text, done
    return Samples(tuple(texts), tuple(stopped), run)


def _sample_batch(ckpt: Checkpoint, prompts: list[Sequence[int]], gens: list[torch.Generator],
                  cache: Any, start: int, max_new_tokens: int, warpers: list[Any],
                  stop: Sequence[str]) -> tuple[list[tuple[str, bool]], int]:
    """One batch: the prompts' tails after ``start`` left-padded behind the cached prefix.
    Finished rows leave the batch (and the cache, where it can select rows; else they are fed
    padding and ignored). Each unfinished row draws one number from its generator a step."""
    device = ckpt.device
    cached = has_kv_cache(ckpt)
    ids, mask = _left_pad([p[start:] for p in prompts], ckpt.tokenizer.pad_token_id)
    if start:
        mask = torch.cat([torch.ones(len(prompts), start, dtype=torch.long), mask], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, start:]
    rows = list(range(len(prompts)))  # the prompt of each row of the batch
    new: list[list[int]] = [[] for _ in prompts]
    result = [("", False)] * len(prompts)
    done = [False] * len(prompts)
    eos = ckpt.tokenizer.eos_token_id
    fresh, run = True, 0
    for _ in range(max_new_tokens):
        active = [r for r, k in enumerate(rows) if not done[k]]
        if not active or mask.shape[1] >= ckpt.n_ctx:
            break
        feed, feed_pos = (ids, pos) if (fresh or not cached) else (ids[:, -1:], pos[:, -1:])
        if cached:
            logits, cache = ckpt.bridge(feed.to(device), attention_mask=mask.to(device),
                                        position_ids=feed_pos.to(device),
                                        past_key_values=cache, return_type="logits_and_cache")
        else:
            logits = ckpt.bridge(feed.to(device), attention_mask=mask.to(device),
                                 position_ids=feed_pos.to(device))
        run += int(feed.numel())
        fresh = False
        scores = logits[active, -1].float().cpu()
        for w in warpers:
            scores = w(None, scores)
        cdf = torch.softmax(scores, dim=-1).cumsum(-1)
        u = torch.cat([torch.rand(1, generator=gens[rows[r]]) for r in active])[:, None]
        drawn = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
        toks = torch.full((len(rows),), ckpt.tokenizer.pad_token_id, dtype=torch.long)
        toks[active] = drawn.clamp(max=cdf.shape[1] - 1)[:, 0]
        for r in active:
            k, tok = rows[r], int(toks[r])
            if eos is not None and tok == eos:
                done[k] = True
                result[k] = (result[k][0], True)
                continue
            new[k].append(tok)
            text = ckpt.tokenizer.decode(new[k])
            cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
            done[k] = cut >= 0
            result[k] = (text[:cut] if done[k] else text, done[k])
        ids = torch.cat([ids, toks[:, None]], 1)
        mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=torch.long)], 1)
        pos = torch.cat([pos, pos[:, -1:] + 1], 1)
        keep = [r for r, k in enumerate(rows) if not done[k]]
        if keep and len(keep) < len(rows) and (
                cache is None or hasattr(cache, "batch_select_indices")):
            index = torch.tensor(keep, dtype=torch.long)
            ids, mask, pos = ids[index], mask[index], pos[index]
            if cache is not None:
                cache.batch_select_indices(index.to(device))
            rows = [rows[r] for r in keep]
    return result, run
