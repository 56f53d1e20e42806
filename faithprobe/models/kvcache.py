"""Padded batches and key-value caches: what the forward passes and the generation loop share.

Sequences are padded into batches with an attention mask and explicit position ids (so a padded
row computes what it computes alone). Models wrapped from Hugging Face keep a key-value cache;
the cache of a shared prefix is run once and cut (as views, nothing copied) where each batch
diverges from it. Long runs on a cache go ``PIECE`` tokens at a time, so that no forward holds
a whole sequence's attention scores. Native (tiny) models use :mod:`faithprobe.models.native_cache`
for generation only; their scoring runs whole sequences.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from faithprobe.models.checkpoints import Checkpoint

__all__ = ["GROUP_SLACK", "PIECE", "PaddingSide", "cache_at", "common_prefix", "croppable",
           "has_kv_cache", "keeps_logits", "pad_batch", "positions", "prefix_cache",
           "prefix_groups"]

PaddingSide = Literal["left", "right"]  # where a batch's shorter sequences are padded
# tokens a forward on a KV cache feeds at a time: eager attention holds [rows, heads, queries,
# keys] scores, 9.4 MB a row a copy at 256 queries over 1,024 keys on SmolLM2 (a whole 1,024
# token run would hold 37 MB); each piece's keys and values join the cache for the next
PIECE = 256


def has_kv_cache(ckpt: Checkpoint) -> bool:
    """Whether the bridge can return and take a key-value cache (Hugging Face models)."""
    return ckpt.native_config is None


def pad_batch(
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


def positions(mask: Int[Tensor, "batch pos"], start: int = 0) -> Int[Tensor, "batch pos"]:
    return (mask.cumsum(-1) - 1).clamp(min=0) + start


def keeps_logits(ckpt: Checkpoint) -> bool:
    """Whether the wrapped Hugging Face model computes logits only at chosen positions
    (``logits_to_keep``): a 4,096-token run then skips 4,095 rows of the unembedding and
    their vocabulary-wide logits."""
    model = getattr(ckpt.bridge, "original_model", None)
    try:
        return model is not None and has_kv_cache(ckpt) and \
            "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the longest common prefix of ``a`` and ``b``."""
    return next((n for n, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


GROUP_SLACK = 16  # tokens


def prefix_groups(starts: Sequence[int], batch_size: int) -> list[tuple[int, list[int]]]:
    """Batches of sequence indices by divergence point: sequences whose points lie within
    ``GROUP_SLACK`` tokens share one batch that starts at the earliest of them (a few tokens
    recomputed buy one forward call fewer)."""
    groups: list[tuple[int, list[int]]] = []
    for k in sorted(range(len(starts)), key=lambda k: starts[k]):
        if groups and starts[k] - groups[-1][0] <= GROUP_SLACK and \
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


def cache_at(base_cache: Any, start: int, rows: int) -> Any:
    """A one-row KV cache cut to its first ``start`` tokens, for ``rows`` rows: views of the
    prefix's tensors, nothing copied (a layer's update concatenates into new tensors)."""
    cache = copy.copy(base_cache)
    cache.layers = []
    for layer in base_cache.layers:
        view = copy.copy(layer)
        view.keys = layer.keys[:, :, :start].expand(rows, -1, -1, -1)
        view.values = layer.values[:, :, :start].expand(rows, -1, -1, -1)
        cache.layers.append(view)
    return cache


def prefix_cache(ckpt: Checkpoint, prefix: Sequence[int]) -> Any:
    """The KV cache of one run of ``prefix``, ``PIECE`` tokens at a time (its logits are not
    needed: only each piece's last position is unembedded where the model allows it)."""
    keep = {"logits_to_keep": 1} if keeps_logits(ckpt) else {}
    prefix, cache = list(prefix), None
    for lo in range(0, max(1, len(prefix)), PIECE):
        _, cache = ckpt.bridge(torch.tensor([prefix[lo: lo + PIECE]], device=ckpt.device),
                               past_key_values=cache, return_type="logits_and_cache", **keep)
    return cache
