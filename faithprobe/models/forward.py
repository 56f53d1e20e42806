"""Forward passes over padded batches, prefix reuse, and batched generation.

Sequences are padded into batches with an attention mask and explicit position ids (so a padded
row computes what it computes alone). Models wrapped from Hugging Face keep a key-value cache:
generation feeds one token per step, and :func:`forward_logprobs` can reuse the cache of a
shared prefix so that edits of a trace recompute only what follows their first changed token.
Native (tiny) models have no cache and always run whole sequences.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from faithprobe.errors import FaithprobeError
from faithprobe.models.checkpoints import Checkpoint

__all__ = ["PaddingSide", "croppable", "forward_logprobs", "generate", "halving_on_oom",
           "has_kv_cache", "is_out_of_memory", "token_batches"]

PaddingSide = Literal["left", "right"]  # where a batch's shorter sequences are padded


def has_kv_cache(ckpt: Checkpoint) -> bool:
    """Whether the bridge can return and take a key-value cache (Hugging Face models)."""
    return ckpt.native_config is None


def _pad(
    seqs: Sequence[Sequence[int]], pad_id: int, side: PaddingSide
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], list[int]]:
    """Pad to one length; returns ids, attention mask and each sequence's offset."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    offsets = []
    for row, s in enumerate(seqs):
        off = width - len(s) if side == "left" else 0
        ids[row, off : off + len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[row, off : off + len(s)] = 1
        offsets.append(off)
    return ids, mask, offsets


def _positions(mask: Int[Tensor, "batch pos"], start: int = 0) -> Int[Tensor, "batch pos"]:
    return (mask.cumsum(-1) - 1).clamp(min=0) + start


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
) -> list[Float[Tensor, "n_read vocab"]]:
    """Log-softmax of the logits at positions ``reads[k]`` of sequence ``k`` (unpadded index).

    With ``reuse_prefix`` (token ids every sequence is compared against, usually the unedited
    trace) and a model with a KV cache, the prefix is run once; each sequence then runs only
    from its first token that differs from ``reuse_prefix`` (sequences with the same divergence
    point are batched together on a copy of the cache cut there). ``max_batch_tokens`` bounds
    a batch's padded size besides its row count; a batch that runs out of device memory is
    halved and retried.
    """
    if reuse_prefix is not None and has_kv_cache(ckpt) and len(seqs) > 1:
        return _forward_reusing(ckpt, seqs, reads, list(reuse_prefix), batch_size,
                                max_batch_tokens)
    out: list[Tensor | None] = [None] * len(seqs)
    device = ckpt.device

    def run(rows: list[int]) -> None:
        ids, mask, offsets = _pad([seqs[k] for k in rows], ckpt.tokenizer.pad_token_id,
                                  padding_side)
        logits = ckpt.bridge(ids.to(device), attention_mask=mask.to(device),
                             position_ids=_positions(mask).to(device))
        for row, (k, off) in enumerate(zip(rows, offsets)):
            pos = torch.tensor([off + p for p in reads[k]], dtype=torch.long)
            out[k] = torch.log_softmax(logits[row, pos.to(device)].float(), dim=-1).cpu()

    for rows in token_batches([len(s) for s in seqs], batch_size, max_batch_tokens):
        halving_on_oom(run, rows, max(len(seqs[k]) for k in rows))
    return out  # type: ignore[return-value]


def token_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None
                  ) -> list[list[int]]:
    """Consecutive indices grouped into batches of at most ``batch_size`` rows and, with
    ``max_tokens``, at most that many padded tokens (rows x longest row): a 6k-token trace and
    a 200-token one both fit one budget. A row longer than the budget runs alone."""
    batches: list[list[int]] = []
    widest = 0
    for k, n in enumerate(lengths):
        if batches and len(batches[-1]) < batch_size and (
                max_tokens is None or (len(batches[-1]) + 1) * max(widest, n) <= max_tokens):
            batches[-1].append(k)
            widest = max(widest, n)
        else:
            batches.append([k])
            widest = n
    return batches


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def halving_on_oom(run: Callable[[list[int]], None], rows: list[int], width: int) -> None:
    """``run(rows)``; when the device runs out of memory, halve the batch and retry each half
    instead of ending the run. One row that does not fit is a clear error."""
    try:
        run(rows)
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(rows) == 1:
            raise FaithprobeError(f"one sequence of {width} tokens does not fit in the device's "
                                  "memory (lower probe.max_batch_tokens, or use a device "
                                  "with more memory)", field="probe.max_batch_tokens") from None
        half = len(rows) // 2
        halving_on_oom(run, rows[:half], width)
        halving_on_oom(run, rows[half:], width)


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


_GROUP_SLACK = 16  # tokens


def _groups(starts: Sequence[int], batch_size: int) -> list[tuple[int, list[int]]]:
    """Batches of sequence indices by divergence point: sequences whose points lie within
    ``_GROUP_SLACK`` tokens share one batch that starts at the earliest of them (a few tokens
    recomputed buy one forward call fewer)."""
    groups: list[tuple[int, list[int]]] = []
    for k in sorted(range(len(starts)), key=lambda k: starts[k]):
        if groups and starts[k] - groups[-1][0] <= _GROUP_SLACK and \
                len(groups[-1][1]) < batch_size:
            groups[-1][1].append(k)
        else:
            groups.append((starts[k], [k]))
    return groups


def croppable(cache: Any) -> bool:
    """Whether a prefix's cache can be cut back exactly: a plain ``DynamicCache`` of
    full-attention layers. A sliding-window layer keeps only its last window of keys (and
    refuses to crop past it), a recurrent or linear-attention state cannot be cut at all: for
    those models every edit is recomputed from its first token."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer
                                               for layer in cache.layers)


def _cache_at(base_cache, start: int, length: int, rows: int):
    """A copy of a one-row KV cache of ``length`` tokens, cut to ``start``, for ``rows`` rows."""
    cache = copy.deepcopy(base_cache)
    if start < length:
        cache.crop(start - length)  # a negative count: drop the tokens after start
    cache.batch_repeat_interleave(rows)
    return cache


def _forward_reusing(ckpt, seqs, reads, prefix, batch_size, max_batch_tokens=None
                     ) -> list[Tensor]:
    device = ckpt.device
    # a sequence reuses the prefix up to (not including) the first position it must compute:
    # its first differing token, and no later than its first read position
    starts = [min(_lcp(s, prefix), min(r) if len(r) else len(s), len(s) - 1)
              for s, r in zip(seqs, reads)]
    _, base_cache = ckpt.bridge(torch.tensor([prefix], device=device),
                                return_type="logits_and_cache")
    if not croppable(base_cache):
        return forward_logprobs(ckpt, seqs, reads, batch_size=batch_size,
                                max_batch_tokens=max_batch_tokens)
    out: list[Tensor | None] = [None] * len(seqs)
    for start, group in _groups(starts, batch_size):
        if start == 0:  # nothing shared: an ordinary batch
            for k, lp in zip(group, forward_logprobs(
                    ckpt, [seqs[k] for k in group], [reads[k] for k in group],
                    batch_size=batch_size, max_batch_tokens=max_batch_tokens)):
                out[k] = lp
            continue

        def run(chunk: list[int], start: int = start) -> None:
            cache = _cache_at(base_cache, start, len(prefix), len(chunk))
            tails = [seqs[k][start:] for k in chunk]
            ids, mask, _ = _pad(tails, ckpt.tokenizer.pad_token_id, "right")
            full_mask = torch.cat([torch.ones(len(chunk), start, dtype=torch.long), mask], 1)
            logits = ckpt.bridge(ids.to(device), attention_mask=full_mask.to(device),
                                 position_ids=_positions(mask, start).to(device),
                                 past_key_values=cache)
            for row, k in enumerate(chunk):
                # every read lies in the tail: a sequence's start is at or before its first read
                at = torch.tensor([p - start for p in reads[k]], dtype=torch.long, device=device)
                out[k] = torch.log_softmax(logits[row, at].float(), dim=-1).cpu()

        lengths = [len(seqs[k]) for k in group]  # the cache's keys count toward the budget
        for rows in token_batches(lengths, batch_size, max_batch_tokens):
            chunk = [group[i] for i in rows]
            halving_on_oom(run, chunk, max(len(seqs[k]) for k in chunk))
    return out  # type: ignore[return-value]


@torch.no_grad()
def generate(
    ckpt: Checkpoint,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 64,
    stop: Sequence[str] = (),
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
    return_logprob: bool = False,
    reuse_prefix: Sequence[int] | None = None,
) -> list[tuple]:
    """Continue each prompt; returns (text up to the first stop string, whether it stopped).

    With ``return_logprob`` each tuple also holds the summed log-probability of the tokens
    kept. ``temperature == 0`` is greedy; above 0 samples with a seeded generator. A row stops at
    the end-of-sequence token, at a stop string (cut from the text), or at ``max_new_tokens``
    (``stopped`` false: the generation never reached its end), or at the model's context.
    Rows are left-padded; a model with a KV cache feeds one new token per step. With
    ``reuse_prefix`` (token ids the prompts share a beginning with) on such a model, the prefix
    is run once and each batch starts from its copy of that cache.
    """
    gen = torch.Generator().manual_seed(seed)
    base_cache = None
    if reuse_prefix is not None and has_kv_cache(ckpt) and len(prompts) > 0:
        prefix = list(reuse_prefix)
        with torch.no_grad():
            _, base_cache = ckpt.bridge(torch.tensor([prefix], device=ckpt.device),
                                        return_type="logits_and_cache")
        if not croppable(base_cache):  # sliding windows, recurrent state: no shared prefix
            base_cache = None
    if base_cache is not None:
        starts = [min(_lcp(p, prefix), len(p) - 1) for p in prompts]
        results: list[tuple | None] = [None] * len(prompts)
        for start, idx in _groups(starts, batch_size):
            cache = _cache_at(base_cache, start, len(prefix), len(idx)) if start else None
            out = _generate_batch(ckpt, [prompts[i] for i in idx], max_new_tokens, stop,
                                  temperature, gen, cache=cache, start=start)
            for i, r in zip(idx, out):
                results[i] = r
    else:
        results = []
        for lo in range(0, len(prompts), batch_size):
            results += _generate_batch(ckpt, prompts[lo: lo + batch_size], max_new_tokens,
                                       stop, temperature, gen)
    return [r if return_logprob else r[:2] for r in results]  # type: ignore[index]


def _generate_batch(ckpt, prompts, max_new_tokens, stop, temperature, gen, *, cache=None,
                    start: int = 0) -> list[tuple]:
    """One batch; with ``cache`` (the shared prefix's KV cache, ``start`` tokens) only the
    prompts' tails after ``start`` are fed, left-padded between prefix and tail."""
    device = ckpt.device
    n = len(prompts)
    out: list[list[int]] = [[] for _ in prompts]
    texts = ["" for _ in prompts]
    logps = [0.0 for _ in prompts]
    stopped = [False for _ in prompts]
    eos = ckpt.tokenizer.eos_token_id
    cached = has_kv_cache(ckpt)
    ids, mask, _ = _pad([p[start:] for p in prompts], ckpt.tokenizer.pad_token_id, "left")
    pos = _positions(mask, start)
    fresh = True
    if start:
        mask = torch.cat([torch.ones(n, start, dtype=torch.long), mask], 1)
    for _ in range(max_new_tokens):
        live = [i for i in range(n) if not stopped[i]]
        if not live or mask.shape[1] >= ckpt.n_ctx:
            break
        if cached:
            feed = ids if fresh else ids[:, -1:]
            feed_pos = pos if fresh else pos[:, -1:]
            logits, cache = ckpt.bridge(feed.to(device), attention_mask=mask.to(device),
                                        position_ids=feed_pos.to(device),
                                        past_key_values=cache, return_type="logits_and_cache")
            fresh = False
        else:
            logits = ckpt.bridge(ids.to(device), attention_mask=mask.to(device),
                                 position_ids=pos.to(device))
        lp = torch.log_softmax(logits[:, -1].float(), dim=-1).cpu()
        nxt = torch.full((n,), ckpt.tokenizer.pad_token_id, dtype=torch.long)
        for i in live:
            row = lp[i]
            if temperature > 0:
                tok = int(torch.multinomial(torch.softmax(row / temperature, dim=-1), 1,
                                            generator=gen))
            else:
                tok = int(torch.argmax(row))
            nxt[i] = tok
            if eos is not None and tok == eos:
                stopped[i] = True
                continue
            out[i].append(tok)
            logps[i] += float(row[tok])
            texts[i] = ckpt.tokenizer.decode(out[i])
            for s in stop:
                at = texts[i].find(s)
                if s and at >= 0:
                    texts[i] = texts[i][:at]
                    stopped[i] = True
                    break
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones(n, 1, dtype=torch.long)], 1)
        pos = torch.cat([pos, pos[:, -1:] + 1], 1)
    return list(zip(texts, stopped, logps))
