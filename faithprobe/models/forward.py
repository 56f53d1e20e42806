"""Forward passes over padded batches, with prefix reuse.

Sequences are padded into batches with an attention mask and explicit position ids (so a padded
row computes what it computes alone; see :mod:`faithprobe.models.kvcache`). On a model with a
key-value cache :func:`forward_logprobs` can reuse the cache of a shared prefix so that edits of
a trace recompute only what follows their first changed token (only the positions read are
unembedded; greedy answers continue on the same caches, through the one generation loop of
:mod:`faithprobe.models.decode`). A long tail runs ``PIECE`` tokens at a time on its growing
cache. Native (tiny) models have no cache here and run whole sequences.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from faithprobe.models.batches import BYTE_BUDGET, halving_on_oom, token_batches
from faithprobe.models.checkpoints import Checkpoint
from faithprobe.models.decode import Rows, Sampler, decode
from faithprobe.models.kvcache import (
    PIECE,
    PaddingSide,
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

__all__ = ["GreedyAfter", "forward_logprobs", "forward_token_logprobs"]

SOFTMAX_ROWS = 128  # positions whose log-softmax is taken at a time (25 MB at SmolLM2's vocabulary)


def _logprobs_at(ckpt: Checkpoint, ids: Tensor, at: Sequence[Sequence[int]], keep: bool,
                 targets: Sequence[Sequence[int]] | None = None, **kwargs: Any
                 ) -> tuple[list[Tensor], Any]:
    """One forward of ``ids``; row ``r``'s log-softmax at its positions ``at[r]`` (float32,
    on the CPU; with ``targets``, only the log-probability of ``targets[r][j]`` at ``at[r][j]``)
    and what else the bridge returned (the cache, with ``return_type="logits_and_cache"``).
    With ``keep`` only the positions read are unembedded."""
    device = ckpt.device
    wanted = sorted({p for row in at for p in row})
    if keep:
        kwargs["logits_to_keep"] = torch.tensor(wanted or [ids.shape[1] - 1], device=device)
        index = {p: i for i, p in enumerate(wanted)}
    else:
        index = {p: p for p in wanted}
    out = ckpt.bridge(ids.to(device), **kwargs)
    logits, rest = out if isinstance(out, tuple) else (out, None)
    rows = []
    for r, pos in enumerate(at):
        sel = torch.tensor([index[p] for p in pos], dtype=torch.long, device=device)
        if targets is None:
            rows.append(torch.log_softmax(logits[r, sel].float(), dim=-1).cpu())
            continue
        tgt = torch.tensor(list(targets[r]), dtype=torch.long, device=device)
        # the log-softmax of SOFTMAX_ROWS positions at a time, each row as it would be alone:
        # over a long tail a whole one is two more copies of the logits (800 MB at 4,096 tokens)
        rows.append(torch.cat([
            torch.log_softmax(logits[r, sel[lo: lo + SOFTMAX_ROWS]].float(), dim=-1)
            .gather(-1, tgt[lo: lo + SOFTMAX_ROWS, None])[:, 0]
            for lo in range(0, len(sel), SOFTMAX_ROWS)] or [torch.empty(0, device=device)]
        ).cpu())
    return rows, rest


def _unique(seqs: Sequence[Sequence[int]], reads: Sequence[Sequence[int]]
            ) -> tuple[list[int], list[int]]:
    """Indices of the distinct (sequence, reads) pairs, and for every pair the index of its
    distinct one (the suite scores a truncation twice: as an edit and for InfoGain)."""
    first: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    owner = [first.setdefault((tuple(s), tuple(r)), k) for k, (s, r) in enumerate(zip(seqs, reads))]
    return sorted(set(owner)), owner


@torch.no_grad()
def forward_logprobs(
    ckpt: Checkpoint,
    seqs: Sequence[Sequence[int]],
    reads: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    padding_side: PaddingSide = "right",
    reuse_prefix: Sequence[int] | None = None,
    max_batch_tokens: int | None = None,
    greedy: GreedyAfter | None = None,
) -> list[Float[Tensor, "n_read vocab"]]:
    """Log-softmax of the logits at positions ``reads[k]`` of sequence ``k`` (unpadded index).

    With ``reuse_prefix`` (token ids every sequence is compared against, usually the unedited
    trace) and a model with a KV cache, the prefix is run once; each sequence then runs only
    from its first token that differs from ``reuse_prefix`` (sequences with the same divergence
    point are batched together on a view of the cache cut there). ``max_batch_tokens`` bounds
    a batch's padded size besides its row count; a batch that runs out of device memory is
    halved and retried. A pair (sequence, reads) given twice is computed once; only the
    positions read are unembedded where the model allows it. With ``greedy`` (and prefix
    reuse) the sequences' greedy continuations are decoded on the scoring runs' caches.
    """
    distinct, owner = _unique(seqs, reads)
    if len(distinct) < len(seqs):
        sub = None if greedy is None else GreedyAfter(
            [greedy.prompts[k] for k in distinct],
            lambda i, lp: greedy.wanted(distinct[i], lp), greedy.max_new_tokens, greedy.stop)
        got = forward_logprobs(ckpt, [seqs[k] for k in distinct], [reads[k] for k in distinct],
                               batch_size=batch_size, padding_side=padding_side,
                               reuse_prefix=reuse_prefix, max_batch_tokens=max_batch_tokens,
                               greedy=sub)
        where = {k: i for i, k in enumerate(distinct)}
        if greedy is not None and sub is not None:
            greedy.results.update({k: sub.results[where[owner[k]]] for k in range(len(seqs))
                                   if where[owner[k]] in sub.results})
        return [got[where[owner[k]]] for k in range(len(seqs))]
    if reuse_prefix is not None and has_kv_cache(ckpt) and len(seqs) > 1:
        return _forward_reusing(ckpt, seqs, reads, list(reuse_prefix), batch_size,
                                max_batch_tokens, greedy)
    return _whole(ckpt, seqs, reads, batch_size, max_batch_tokens, padding_side)


def _whole(ckpt: Checkpoint, seqs: Sequence[Sequence[int]], reads: Sequence[Sequence[int]],
           batch_size: int, max_batch_tokens: int | None, padding_side: PaddingSide,
           targets: Sequence[Sequence[int]] | None = None) -> list[Tensor]:
    """Every sequence run whole, in batches of rows and tokens (a batch out of device memory
    is halved): the log-softmax at each one's ``reads`` (of its ``targets`` there, if given)."""
    out: list[Tensor | None] = [None] * len(seqs)
    device = ckpt.device
    keep = keeps_logits(ckpt)

    def run(rows: list[int]) -> None:
        ids, mask, offsets = pad_batch([seqs[k] for k in rows], ckpt.tokenizer.pad_token_id,
                                  padding_side)
        at = [[off + p for p in reads[k]] for k, off in zip(rows, offsets)]
        got, _ = _logprobs_at(ckpt, ids, at, keep,
                              targets=None if targets is None else [targets[k] for k in rows],
                              attention_mask=mask.to(device),
                              position_ids=positions(mask).to(device))
        for k, lp in zip(rows, got):
            out[k] = lp

    for rows in token_batches([len(s) for s in seqs], batch_size, max_batch_tokens):
        halving_on_oom(run, rows, max(len(seqs[k]) for k in rows))
    return out  # type: ignore[return-value]


@dataclass
class GreedyAfter:
    """Greedy continuations decoded from the scoring runs' own caches (prefix reuse only).

    ``prompts[k]``: sequence ``k``'s first that many tokens are the prompt to continue (None:
    none wanted); ``wanted(k, logprobs)`` decides from the sequence's reads whether its
    continuation is needed. The tokens the sequence itself holds after the prompt are taken
    while greedy decoding would write them (read from the scoring run), the rest is decoded on
    the batch's cache, with the sequence's later tokens masked out: the prompt is never run
    twice. ``results[k]`` is what :func:`generate` returns with ``return_logprob``; a sequence
    whose reads do not cover its prompt's last position is left out (generate it instead).
    """

    prompts: Sequence[int | None]
    wanted: Callable[[int, Tensor], bool]
    max_new_tokens: int
    stop: Sequence[str] = ()
    results: dict[int, tuple[str, bool, float]] = field(default_factory=dict)


# continuations waiting to be decoded together hold at most this much cache (a copy each, on
# top of the scoring batches' own attention; at 1,024 tokens SmolLM2's cache is 47 MB a row)
PENDING_BYTES = BYTE_BUDGET // 4

_Pending = tuple[int, int, int, list[tuple[Tensor, Tensor]]]  # (seq, position, token, cache)


def _greedy_after(ckpt: Checkpoint, greedy: GreedyAfter, rows: Rows, seqs, reads,
                  chunk: list[int], got: list[Tensor], cache: Any,
                  pending: list[_Pending]) -> None:
    """Continue the sequences of one scored batch (``chunk``, their read log-probabilities
    ``got``, the batch's ``cache`` of right-padded tails) as far as the reads go; what must
    be decoded joins ``pending`` with its own cache up to where it continues (a copy)."""
    for r, k in enumerate(chunk):
        prompt = greedy.prompts[k]
        at = {p: j for j, p in enumerate(reads[k])}
        if prompt is None or prompt - 1 not in at or not greedy.wanted(k, got[r]):
            continue
        p = prompt
        while rows.live(k) and p - 1 in at:
            lp = got[r][at[p - 1]]
            tok = int(torch.argmax(lp))
            rows.emit(k, tok, float(lp[tok]))
            if p < len(seqs[k]) and tok == seqs[k][p]:
                p += 1  # greedy writes the sequence's own token: its next logits are read
                continue
            if rows.live(k) and p < ckpt.n_ctx:
                pending.append((k, p, tok, [(layer.keys[r: r + 1, :, :p].clone(),
                                             layer.values[r: r + 1, :, :p].clone())
                                            for layer in cache.layers]))
            break
        greedy.results[k] = rows.result(k)


def _held(pending: list[_Pending]) -> int:
    """Bytes of cache the pending continuations hold."""
    return sum(t.numel() * t.element_size() for *_, kv in pending for pair in kv
               for t in pair if t is not None)


def _decode_pending(ckpt: Checkpoint, greedy: GreedyAfter, rows: Rows, shell: Any,
                    pending: list[_Pending]) -> None:
    """Decode the pending continuations as one batch: each row's cache right-padded to the
    longest and masked there (``shell``: a cache whose type and layers to copy)."""
    if not pending:
        return
    width = max(p for _, p, _, _ in pending)
    mask = torch.zeros(len(pending), width + 1, dtype=torch.long)
    for b, (_, p, _, _) in enumerate(pending):
        mask[b, :p] = 1
    mask[:, -1] = 1
    cache = copy.copy(shell)
    cache.layers = []
    for i, layer in enumerate(shell.layers):
        view = copy.copy(layer)
        view.keys, view.values = (torch.cat([
            torch.nn.functional.pad(kv[i][j], (0, 0, 0, width - p)) for _, p, _, kv in pending])
            for j in (0, 1))
        cache.layers.append(view)
        for _, _, _, kv in pending:  # each copy freed once in the batch
            kv[i] = None  # type: ignore[call-overload]
    seq, pos, tok, _ = zip(*pending)
    decode(ckpt, rows, list(seq), torch.tensor([[t] for t in tok]), mask,
           torch.tensor([[p] for p in pos]), cache, Sampler())
    for k in seq:
        greedy.results[k] = rows.result(k)
    pending.clear()


_PAD_WASTE = 0.25  # a tail batch's padding: at most this share of its real tokens


def _tail_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None,
                  cached: int) -> list[list[int]]:
    """Indices into ``lengths`` (tails run after ``cached`` tokens of cache), longest first,
    in batches of at most ``batch_size`` rows whose padding stays within ``_PAD_WASTE`` of
    their tokens (a 10-token truncation is not padded to a 2,000-token deletion) and, with
    ``max_tokens``, whose rows x (cached + widest tail) stays within it."""
    batches: list[list[int]] = []
    used = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if batches:
            rows, width = len(batches[-1]) + 1, lengths[batches[-1][0]]
            if rows <= batch_size and rows * width <= (1 + _PAD_WASTE) * (used + lengths[i]) \
                    and (max_tokens is None or rows * (cached + width) <= max_tokens):
                batches[-1].append(i)
                used += lengths[i]
                continue
        batches.append([i])
        used = lengths[i]
    return batches


def _tail_logprobs(ckpt: Checkpoint, tails: Sequence[Sequence[int]],
                   reads: Sequence[Sequence[int]], keep: bool, cache: Any, start: int
                   ) -> tuple[list[Tensor], Any]:
    """Right-padded ``tails`` run after ``start`` tokens of ``cache``, ``PIECE`` tokens at a
    time: the log-softmax at each one's ``reads`` (tail positions, in their order) and the
    cache of the whole tails."""
    device = ckpt.device
    ids, mask, _ = pad_batch(tails, ckpt.tokenizer.pad_token_id, "right")
    full_mask = torch.cat([torch.ones(len(tails), start, dtype=torch.long), mask], 1)
    pos = positions(mask, start)
    found: list[dict[int, Tensor]] = [{} for _ in tails]
    vocab = 0
    for lo in range(0, ids.shape[1], PIECE):
        hi = min(ids.shape[1], lo + PIECE)
        at = [sorted({p - lo for p in r if lo <= p < hi}) for r in reads]
        got, cache = _logprobs_at(ckpt, ids[:, lo:hi], at, keep,
                                  attention_mask=full_mask[:, :start + hi].to(device),
                                  position_ids=pos[:, lo:hi].to(device),
                                  past_key_values=cache, return_type="logits_and_cache")
        for row, positions_read, lp in zip(found, at, got):
            row.update((lo + p, lp[j]) for j, p in enumerate(positions_read))
            vocab = lp.shape[-1]
    return [torch.stack([row[p] for p in r]) if len(r) else torch.empty(0, vocab)
            for row, r in zip(found, reads)], cache


def _forward_reusing(ckpt, seqs, reads, prefix, batch_size, max_batch_tokens=None,
                     greedy: GreedyAfter | None = None) -> list[Tensor]:
    keep = keeps_logits(ckpt)
    # a sequence reuses the prefix up to (not including) the first position it must compute:
    # its first differing token, and no later than its first read position
    starts = [min(common_prefix(s, prefix), min(r) if len(r) else len(s), len(s) - 1)
              for s, r in zip(seqs, reads)]
    base_cache = prefix_cache(ckpt, prefix)
    if not croppable(base_cache):
        return forward_logprobs(ckpt, seqs, reads, batch_size=batch_size,
                                max_batch_tokens=max_batch_tokens)
    out: list[Tensor | None] = [None] * len(seqs)
    pending: list[_Pending] = []  # greedy continuations to decode together
    rows = None if greedy is None else Rows(ckpt, len(seqs), greedy.stop,
                                             greedy.max_new_tokens)
    for start, group in prefix_groups(starts, batch_size):
        if start == 0:  # nothing shared: an ordinary batch
            for k, lp in zip(group, forward_logprobs(
                    ckpt, [seqs[k] for k in group], [reads[k] for k in group],
                    batch_size=batch_size, max_batch_tokens=max_batch_tokens)):
                out[k] = lp
            continue

        def run(chunk: list[int], start: int = start) -> None:
            # every read lies in the tail: a sequence's start is at or before its first read
            got, cache = _tail_logprobs(ckpt, [seqs[k][start:] for k in chunk],
                                        [[p - start for p in reads[k]] for k in chunk], keep,
                                        cache_at(base_cache, start, len(chunk)), start)
            for k, lp in zip(chunk, got):
                out[k] = lp
            if greedy is not None:
                _greedy_after(ckpt, greedy, rows, seqs, reads, chunk, got, cache, pending)

        tails = [len(seqs[k]) - start for k in group]
        for batch in _tail_batches(tails, batch_size, max_batch_tokens, start):
            chunk = [group[i] for i in batch]
            halving_on_oom(run, chunk, max(len(seqs[k]) for k in chunk))
            if greedy is not None and rows is not None and (
                    len(pending) >= batch_size or _held(pending) >= PENDING_BYTES):
                _decode_pending(ckpt, greedy, rows, base_cache, pending)
    if greedy is not None and rows is not None:
        _decode_pending(ckpt, greedy, rows, base_cache, pending)
    return out  # type: ignore[return-value]


CHUNK = 512  # tokens a shared sequence is run in at a time, so its logits stay small


@torch.no_grad()
def forward_token_logprobs(
    ckpt: Checkpoint,
    seqs: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    max_batch_tokens: int | None = None,
    share_prefix: bool = False,
) -> list[Float[Tensor, " n"]]:
    """Per sequence, the log-probability of each token after the first given the tokens
    before it (``len - 1`` values, float32): what a whole string's perplexity reads.

    With ``share_prefix`` on a model whose KV cache can be cut (the truncations of one trace),
    the longest sequence is run once, ``CHUNK`` tokens at a time, and every other one runs
    only from the position before its first token that differs from it; the positions before
    are that run's. Only the log-probabilities of the actual tokens are kept.
    """
    if share_prefix and has_kv_cache(ckpt) and len(seqs) > 1:
        got = _token_logprobs_reusing(ckpt, seqs, batch_size, max_batch_tokens)
        if got is not None:
            return got
    return _whole(ckpt, seqs, [range(len(s) - 1) for s in seqs], batch_size, max_batch_tokens,
                  "right", targets=[s[1:] for s in seqs])


def _token_logprobs_reusing(ckpt, seqs, batch_size, max_batch_tokens) -> list[Tensor] | None:
    """:func:`forward_token_logprobs` on the longest sequence's cache; None where that cache
    cannot be cut exactly."""
    device = ckpt.device
    keep = keeps_logits(ckpt)
    r = max(range(len(seqs)), key=lambda k: len(seqs[k]))
    ref = list(seqs[r])
    cache, pieces = None, []
    for lo in range(0, len(ref), CHUNK):
        piece, targets = ref[lo: lo + CHUNK], ref[lo + 1: lo + CHUNK + 1]
        got, cache = _logprobs_at(ckpt, torch.tensor([piece]), [range(len(targets))], keep,
                                  targets=[targets], past_key_values=cache,
                                  return_type="logits_and_cache")
        if not croppable(cache):
            return None
        pieces.append(got[0])
    ref_lp = torch.cat(pieces)
    out: list[Tensor | None] = [None] * len(seqs)
    starts: dict[int, int] = {}
    for k, s in enumerate(seqs):
        shared = common_prefix(s, ref)
        if shared >= len(s):  # a prefix of the longest: its positions were all computed
            out[k] = ref_lp[: len(s) - 1].clone()
        else:  # logits from the last shared position on predict what differs
            starts[k] = max(shared - 1, 0)
    order = sorted(starts)
    for start, group in prefix_groups([starts[k] for k in order], batch_size):
        group = [order[i] for i in group]

        def run(chunk: list[int], start: int = start) -> None:
            tails = [seqs[k][start:] for k in chunk]
            ids, mask, _ = pad_batch(tails, ckpt.tokenizer.pad_token_id, "right")
            kw: dict[str, Any] = {}
            if start:
                kw = dict(past_key_values=cache_at(cache, start, len(chunk)),
                          position_ids=positions(mask, start).to(device))
            full_mask = torch.cat([torch.ones(len(chunk), start, dtype=torch.long), mask], 1)
            got, _ = _logprobs_at(ckpt, ids, [range(len(t) - 1) for t in tails], keep,
                                  targets=[t[1:] for t in tails],
                                  attention_mask=full_mask.to(device), **kw)
            for k, lp in zip(chunk, got):
                out[k] = torch.cat([ref_lp[:start], lp])

        tails = [len(seqs[k]) - start for k in group]
        for rows in _tail_batches(tails, batch_size, max_batch_tokens, start):
            chunk = [group[i] for i in rows]
            halving_on_oom(run, chunk, max(len(seqs[k]) for k in chunk))
    return out  # type: ignore[return-value]
