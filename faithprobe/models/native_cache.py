"""A key-value cache for faithprobe-native models, for generation.

TransformerLens' native model has no KV cache: without one, every generated token runs the whole
sequence again, which is most of the organisms' time (the demo spends about 60% of it decoding).
:class:`NativeDecoder` runs the native model's own components (the bridge's embeddings, norms,
projections, MLPs and head, in the model's order) and replaces only attention's keys and values
over earlier positions by the ones it kept: its logits equal the bridge's on the same tokens to
float rounding (``tests/test_native_cache.py``).

It is used only where nothing could tell the difference: a causal model with no hook registered
anywhere on the bridge (an intervention's hooks see every position of every forward, which a
cache would skip). Anything else keeps the bridge's full forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from faithprobe.models.checkpoints import Checkpoint

__all__ = ["NativeDecoder", "native_decoder"]


def _hooked(bridge: Any) -> bool:
    """Whether any module of ``bridge`` has a forward hook or pre-hook registered, other than
    the bridge's own bookkeeping (a block's capture hooks for ``hook_mlp_in`` and attention's
    input forks, which only copy what they see)."""
    modules = list(bridge.modules())
    own = {h.id for m in modules for h in getattr(m, "_capture_hook_handles", ())}
    return any(set(m._forward_hooks) - own or set(m._forward_pre_hooks) - own for m in modules)


def native_decoder(ckpt: Checkpoint) -> NativeDecoder | None:
    """A cached decoder for ``ckpt``, or None where the bridge's own forward must run: not a
    native model, not causal, or hooks registered."""
    if ckpt.native_config is None:
        return None
    model = getattr(ckpt.bridge, "original_model", None)
    layers = getattr(model, "layers", None)
    if model is None or layers is None or _hooked(ckpt.bridge):
        return None
    attn = [blk.original_component.attn.original_component for blk in layers]
    if not all(getattr(a, "causal", False) for a in attn):
        return None
    return NativeDecoder(model, attn)


@dataclass
class KV:
    """Each layer's keys and values so far ([batch, kv heads, positions, d_head])."""

    keys: list[Tensor]
    values: list[Tensor]

    def batch_select_indices(self, index: Tensor) -> None:
        """Keep the batch rows ``index``, in that order (as transformers' caches do)."""
        self.keys = [k[index] for k in self.keys]
        self.values = [v[index] for v in self.values]


class NativeDecoder:
    """Incremental forward of a native model: :meth:`step` feeds new tokens after a cache."""

    def __init__(self, model: Any, attn: list[Any]) -> None:
        from transformer_lens.utilities.activation_functions import apply_softcap

        self.model, self.attn, self.softcap = model, attn, apply_softcap

    def _attend(self, layer: int, attn: Any, x: Tensor, pos: Tensor, kv: KV, blocked: Tensor
                ) -> Tensor:
        """Native attention (``NativeAttention.forward``) of the new positions over the
        cached ones and themselves, where ``blocked`` ([batch, 1, new, all]) is not True."""
        batch, seq, _ = x.shape
        q = attn.q(x).view(batch, seq, attn.n_heads, attn.d_head).transpose(1, 2)
        k = attn.k(x).view(batch, seq, attn.n_kv_heads, attn.d_head).transpose(1, 2)
        v = attn.v(x).view(batch, seq, attn.n_kv_heads, attn.d_head).transpose(1, 2)
        if attn.rotary is not None:
            q, k = attn.rotary.apply_rope(q, k, position_ids=pos)
        if layer < len(kv.keys):
            k = torch.cat([kv.keys[layer], k], 2)
            v = torch.cat([kv.values[layer], v], 2)
            kv.keys[layer], kv.values[layer] = k, v
        else:
            kv.keys.append(k)
            kv.values.append(v)
        if attn.kv_repeats > 1:
            k = k.repeat_interleave(attn.kv_repeats, dim=1)
            v = v.repeat_interleave(attn.kv_repeats, dim=1)
        scores = torch.matmul(q, k.transpose(-2, -1)) / attn.scale
        scores = self.softcap(scores, attn.attn_scores_soft_cap)
        pattern = F.softmax(scores.masked_fill(blocked, float("-inf")), dim=-1)
        pattern = pattern.masked_fill(blocked, 0.0)
        out = torch.matmul(pattern, v).transpose(1, 2).contiguous().view(batch, seq, -1)
        return attn.o(out)

    def step(self, ids: Tensor, mask: Tensor, pos: Tensor, kv: KV | None, *,
             last_only: bool = False) -> tuple[Tensor, KV]:
        """Logits of ``ids`` ([batch, new]) at positions ``pos`` (the last position only with
        ``last_only``); ``mask`` covers the cached positions and the new ones. Returns the
        logits and the grown cache."""
        m = self.model
        kv = kv if kv is not None else KV([], [])
        seq, total = ids.shape[1], mask.shape[1]
        # new position i (absolute total - seq + i) sees keys up to itself, where not padding
        future = torch.ones(seq, total, dtype=torch.bool, device=ids.device).triu(
            total - seq + 1)
        blocked = future[None, None] | ~mask.bool()[:, None, None, :]
        h = m.tok_embed(ids)
        if m.pos is not None:
            h = h + m.pos(pos)
        for i, blk in enumerate(m.layers):
            block = blk.original_component
            h = h + self._attend(i, self.attn[i], block.ln1(h), pos, kv, blocked)
            if not block.cfg.attn_only:
                h = h + block.mlp(block.ln2(h))
        if last_only:
            h = h[:, -1:]
        logits = self.softcap(m.head(m.ln_out(h)), m.output_logits_soft_cap)
        return logits, kv
