"""Batches of token sequences: bounded by rows and padded tokens, halved when the device runs
out of memory (used by the forward passes and by trace generation); sized by a byte budget
where the attention scores dominate (long traces, patching batches).

Eager attention (the bridge's own, so its hooks fire) holds a ``[rows, heads, queries, keys]``
score tensor for one layer at a time, a few copies of it at once (the scores, their masked
form, the float32 softmax): at 1,000 tokens and 9 heads that is 37 MB a row and copy, where a
row's activations are 2 MB. :data:`BYTE_BUDGET` bounds those scores; :func:`rows_within` and
:func:`tokens_within` turn it into rows and padded tokens."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from faithprobe.errors import FaithprobeError

__all__ = ["ATTENTION_COPIES", "BYTE_BUDGET", "attention_bytes", "halving_on_oom",
           "is_out_of_memory", "rows_within", "token_batches", "tokens_within"]

BYTE_BUDGET = 256 * 2**20  # bytes of attention scores one batch may hold at a time
ATTENTION_COPIES = 3  # score tensors alive at once in eager attention (scores, masked, softmax)
SCORE_BYTES = 4  # the softmax runs in float32 whatever the model's dtype


def attention_bytes(rows: int, heads: int, queries: int, keys: int) -> int:
    """Bytes eager attention holds at its peak for one layer of a batch."""
    return ATTENTION_COPIES * SCORE_BYTES * rows * heads * queries * keys


def rows_within(budget: int, heads: int, queries: int, keys: int) -> int:
    """The most rows of ``queries`` positions attending to ``keys`` whose attention stays
    within ``budget`` bytes (at least one)."""
    return max(1, budget // max(1, attention_bytes(1, heads, queries, keys)))


def tokens_within(budget: int, heads: int, length: int) -> int:
    """A padded-token bound (rows x width) for batches of sequences up to ``length`` tokens
    that keeps their attention within ``budget`` bytes: rows of full length times length."""
    return rows_within(budget, heads, length, length) * max(1, length)


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
