"""Batches bounded by a token budget, and a batch that runs out of device memory is halved."""

from __future__ import annotations

import pytest
import torch

from faithprobe.errors import FaithprobeError
from faithprobe.models.batches import token_batches
from faithprobe.models.forward import forward_logprobs


def test_token_batches_respect_rows_and_padded_tokens():
    assert token_batches([5, 5, 5, 5], batch_size=3) == [[0, 1, 2], [3]]
    # 6,000 and 200 tokens with a 8,000-token budget: the long one alone, the short ones share
    lengths = [200, 200, 6000, 200, 200, 200]
    batches = token_batches(lengths, batch_size=16, max_tokens=8000)
    assert batches == [[0, 1], [2], [3, 4, 5]]
    for b in batches:
        assert len(b) * max(lengths[k] for k in b) <= 8000
    assert token_batches([9000], batch_size=4, max_tokens=8000) == [[0]]  # alone, not dropped
    assert sorted(k for b in token_batches(lengths, 2, 900) for k in b) == list(range(6))


class OomAbove:
    """A bridge that runs out of memory on batches of more than ``rows`` sequences."""

    def __init__(self, bridge, rows: int) -> None:
        self.inner, self.rows, self.calls = bridge, rows, []

    def __call__(self, ids, **kw):
        self.calls.append(ids.shape[0])
        if ids.shape[0] > self.rows:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(ids, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_out_of_memory_halves_the_batch_and_retries(tiny):
    seqs = [[1, 5 + k % 3, 6, 7, 8, 9][: 3 + k % 4] for k in range(7)]  # 7 distinct
    reads = [[len(s) - 1] for s in seqs]
    want = forward_logprobs(tiny, seqs, reads, batch_size=1)
    tiny.bridge = OomAbove(tiny.bridge, rows=2)
    got = forward_logprobs(tiny, seqs, reads, batch_size=7)
    # 7 fails, its halves 3 and 4 fail, their halves (1, 2) and (2, 2) run
    assert tiny.bridge.calls == [7, 3, 1, 2, 4, 2, 2]
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5)
    tiny.bridge.rows = 0  # not even one sequence fits: a clear error, not a crash
    with pytest.raises(FaithprobeError, match="does not fit in the device's memory"):
        forward_logprobs(tiny, seqs, reads, batch_size=4)
