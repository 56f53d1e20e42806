"""One token-generation loop: every continuation faithprobe writes comes from :func:`decode`.

Greedy answers to free-form questions, a checkpoint's own chains of thought, the steps a model
writes after an edit and counterfactual resampling's rollouts share it. A row's next token is the
argmax of its logits (temperature 0), or a draw from the softmax of its logits after
transformers' temperature and top-p warpers, by inverse CDF with one uniform number a step from
the row's own generator. A sampled row therefore depends on its prompt and its seed only, never
on which rows share its batch or how a run is split into shards or Ray tasks; callers seed each
row from what the draw is for (:func:`draw_seed` of run seed, trace id, checkpoint label,
purpose).

Rows are left-padded behind an optional cached prefix; a model with a KV cache (a Hugging Face
model's own, or :mod:`faithprobe.models.native_cache` for a native one with no hooks) feeds one
new token a step. A row stops at the end-of-sequence token, at a stop string (the text is cut at the
earliest one), at its token budget or at the model's context, and leaves the batch (and the
cache, where the cache can select rows).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from faithprobe.errors import FaithprobeError
from faithprobe.models.checkpoints import Checkpoint
from faithprobe.models.kvcache import (
    cache_at,
    common_prefix,
    croppable,
    has_kv_cache,
    keeps_logits,
    pad_batch,
    positions,
    prefix_cache,
    prefix_groups,
)
from faithprobe.models.native_cache import native_decoder

__all__ = ["Rows", "Sampler", "Samples", "continue_rows", "decode", "draw_seed", "generate",
           "sample_continuations"]


def draw_seed(*parts: Any) -> int:
    """A seed (63 bits) from what a random draw is for, e.g. (run seed, trace id, checkpoint
    label, purpose): the same parts give the same seed in every process and shard."""
    key = "\x00".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


class Rows:
    """Texts being generated, one a row: tokens kept, text, summed log-probability (of the
    model's unwarped distribution), whether the row reached its end (end-of-sequence or a stop
    string), tokens it may still write."""

    def __init__(self, ckpt: Checkpoint, n: int, stop: Sequence[str], max_new_tokens: int
                 ) -> None:
        self.tokenizer, self.eos = ckpt.tokenizer, ckpt.tokenizer.eos_token_id
        self.stop = [s for s in stop if s]
        self.out: list[list[int]] = [[] for _ in range(n)]
        self.texts = ["" for _ in range(n)]
        self.logps = [0.0 for _ in range(n)]
        self.stopped = [False for _ in range(n)]
        self.left = [max_new_tokens for _ in range(n)]

    def live(self, i: int) -> bool:
        return not self.stopped[i] and self.left[i] > 0

    def emit(self, i: int, tok: int, logp: float) -> None:
        self.left[i] -= 1
        if self.eos is not None and tok == self.eos:
            self.stopped[i] = True
            return
        self.out[i].append(tok)
        self.logps[i] += logp
        text = self.tokenizer.decode(self.out[i])
        cut = min((at for at in (text.find(s) for s in self.stop) if at >= 0), default=-1)
        if cut >= 0:
            text, self.stopped[i] = text[:cut], True
        self.texts[i] = text

    def result(self, i: int) -> tuple[str, bool, float]:
        return self.texts[i], self.stopped[i], self.logps[i]


class Sampler:
    """How each row's next token is chosen: the argmax (``temperature`` 0), or one uniform
    number from row ``i``'s generator (seeded with ``seeds[i]``) read through the inverse CDF
    of the warped softmax."""

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0,
                 seeds: Sequence[int] | None = None) -> None:
        self.temperature = float(temperature)
        self.warpers: list[Any] = []
        self.gens: list[torch.Generator] = []
        if self.temperature > 0:
            from transformers.generation.logits_process import (
                TemperatureLogitsWarper,
                TopPLogitsWarper,
            )

            if seeds is None:
                raise FaithprobeError("sampling (temperature > 0) needs one seed a row",
                                      field="seeds")
            if self.temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(self.temperature))
            if top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(top_p))
            self.gens = [torch.Generator().manual_seed(int(s) % 2**63) for s in seeds]

    def choose(self, logits: Tensor, logprobs: Tensor, rows: Sequence[int]) -> Tensor:
        """The next token of each row of ``logits`` (float32, one row per ``rows`` index;
        ``logprobs`` their log-softmax, where the greedy token is read)."""
        if self.temperature <= 0:
            return torch.argmax(logprobs, dim=-1)
        scores = logits
        for w in self.warpers:
            scores = w(None, scores)
        cdf = torch.softmax(scores, dim=-1).cumsum(-1)
        u = torch.cat([torch.rand(1, generator=self.gens[i]) for i in rows])[:, None]
        drawn = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
        return drawn.clamp(max=cdf.shape[1] - 1)[:, 0]


def decode(ckpt: Checkpoint, rows: Rows, which: list[int], ids: Tensor, mask: Tensor,
           pos: Tensor, cache: Any, sampler: Sampler) -> int:
    """Feed ``ids`` (at positions ``pos``, attending where ``mask`` is 1, after ``cache``), then
    one token a step until every row of ``which`` (batch row -> ``rows`` index) is done or the
    model's context is full. A finished row leaves the batch (and the cache, where it can
    select rows; else it is fed padding and ignored). Returns the token positions run."""
    device = ckpt.device
    cached = has_kv_cache(ckpt)
    native = native_decoder(ckpt) if not cached and cache is None else None
    keep = {"logits_to_keep": 1} if keeps_logits(ckpt) else {}
    fresh, run = True, 0
    pad_id = ckpt.tokenizer.pad_token_id
    while True:
        live = [b for b, i in enumerate(which) if rows.live(i)]
        if not live or int(pos[:, -1].max()) + 1 >= ckpt.n_ctx:
            break
        feed, feed_pos = (ids, pos) if (fresh or not (cached or native)) else \
            (ids[:, -1:], pos[:, -1:])
        if native is not None:
            logits, cache = native.step(feed.to(device), mask.to(device), feed_pos.to(device),
                                        cache, last_only=True)
        elif cached:
            logits, cache = ckpt.bridge(feed.to(device), attention_mask=mask.to(device),
                                        position_ids=feed_pos.to(device),
                                        past_key_values=cache, return_type="logits_and_cache",
                                        **keep)
        else:
            logits = ckpt.bridge(feed.to(device), attention_mask=mask.to(device),
                                 position_ids=feed_pos.to(device))
        run += int(feed.numel())
        fresh = False
        last = logits[live, -1].float().cpu()
        lp = torch.log_softmax(last, dim=-1)
        toks = sampler.choose(last, lp, [which[b] for b in live])
        nxt = torch.full((len(which),), pad_id, dtype=torch.long)
        for j, b in enumerate(live):
            tok = int(toks[j])
            nxt[b] = tok
            rows.emit(which[b], tok, float(lp[j, tok]))
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones(len(which), 1, dtype=torch.long)], 1)
        pos = torch.cat([pos, pos[:, -1:] + 1], 1)
        keep_rows = [b for b, i in enumerate(which) if rows.live(i)]
        if keep_rows and len(keep_rows) < len(which) and (
                cache is None or hasattr(cache, "batch_select_indices")):
            index = torch.tensor(keep_rows, dtype=torch.long)
            ids, mask, pos = ids[index], mask[index], pos[index]
            if cache is not None:
                cache.batch_select_indices(index.to(device))
            which = [which[b] for b in keep_rows]
    return run


def _batch(ckpt: Checkpoint, rows: Rows, idx: list[int], prompts: Sequence[Sequence[int]],
           sampler: Sampler, cache: Any = None, start: int = 0) -> int:
    """One batch of prompts (``idx``); with ``cache`` (the shared prefix's, ``start`` tokens)
    only their tails after ``start`` are fed, left-padded between prefix and tail."""
    n = len(idx)
    ids, mask, _ = pad_batch([prompts[i][start:] for i in idx], ckpt.tokenizer.pad_token_id,
                             "left")
    pos = positions(mask, start)
    if start:
        mask = torch.cat([torch.ones(n, start, dtype=torch.long), mask], 1)
    return decode(ckpt, rows, list(idx), ids, mask, pos, cache, sampler)


def continue_rows(ckpt: Checkpoint, prompts: Sequence[Sequence[int]], rows: Rows,
                  sampler: Sampler, *, batch_size: int,
                  shared_prefix: Sequence[int] | None = None) -> int:
    """Continue every prompt into ``rows`` (row ``k`` is prompt ``k``); returns the token
    positions run. With ``shared_prefix`` (token ids the prompts begin with, e.g. the whole
    trace) on a model whose KV cache can be cut, the prefix runs once and each batch starts
    from a view of its cache cut at the batch's first differing token (prompts that diverge
    within a few tokens of each other share a batch); otherwise batches are consecutive."""
    run = 0
    base = None
    if shared_prefix is not None and has_kv_cache(ckpt) and prompts:
        prefix = list(shared_prefix)
        base = prefix_cache(ckpt, prefix)
        run += len(prefix)
        if not croppable(base):  # sliding windows, recurrent state: no shared prefix
            base = None
    step = max(1, batch_size)
    if base is not None:
        starts = [min(common_prefix(p, prefix), len(p) - 1) for p in prompts]
        for start, idx in prefix_groups(starts, step):
            run += _batch(ckpt, rows, idx, prompts, sampler,
                          cache_at(base, start, len(idx)) if start else None, start)
    else:
        for lo in range(0, len(prompts), step):
            run += _batch(ckpt, rows, list(range(lo, min(lo + step, len(prompts)))), prompts,
                          sampler)
    return run


@dataclass(frozen=True)
class Samples:
    """Continuations of :func:`sample_continuations`: each row's text (cut at the earliest stop
    string) and whether it stopped before its token budget; ``tokens_run`` counts the token
    positions the model computed, the shared prefix included (it shows the prefix ran once)."""

    texts: tuple[str, ...]
    stopped: tuple[bool, ...]
    tokens_run: int


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
    ``seeds[k]``: K samples drawn together equal the same K drawn one at a time (see
    :func:`continue_rows` for ``shared_prefix``)."""
    if len(seeds) != len(prompts):
        raise FaithprobeError("one seed per prompt", field="seeds")
    rows = Rows(ckpt, len(prompts), stop, max_new_tokens)
    run = continue_rows(ckpt, prompts, rows, Sampler(temperature, top_p, seeds),
                        batch_size=batch_size, shared_prefix=shared_prefix)
    return Samples(tuple(rows.texts), tuple(rows.stopped), run)


@torch.no_grad()
def generate(
    ckpt: Checkpoint,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 64,
    stop: Sequence[str] = (),
    temperature: float = 0.0,
    seeds: Sequence[int] | None = None,
    batch_size: int = 16,
    return_logprob: bool = False,
    reuse_prefix: Sequence[int] | None = None,
) -> list[tuple]:
    """Continue each prompt; returns (text up to the earliest stop string, whether it stopped),
    and with ``return_logprob`` the summed log-probability of the tokens kept. ``temperature``
    0 is greedy; above 0 row ``k`` samples from a generator seeded ``seeds[k]``.
    ``reuse_prefix``: see :func:`continue_rows`."""
    if seeds is not None and len(seeds) != len(prompts):
        raise FaithprobeError("one seed per prompt", field="seeds")
    rows = Rows(ckpt, len(prompts), stop, max_new_tokens)
    continue_rows(ckpt, prompts, rows, Sampler(temperature, 1.0, seeds),
                  batch_size=batch_size, shared_prefix=reuse_prefix)
    return [rows.result(k) if return_logprob else rows.result(k)[:2]
            for k in range(len(prompts))]
