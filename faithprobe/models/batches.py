"""Batches of token sequences: bounded by rows and padded tokens, halved when the device runs
out of memory (used by the forward passes and by trace generation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from faithprobe.errors import FaithprobeError

__all__ = ["halving_on_oom", "is_out_of_memory", "token_batches"]


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
