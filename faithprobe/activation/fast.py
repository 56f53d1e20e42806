"""The fast path of step patching: run the bridge's own blocks from the patched layer up.

Patching step i at layer l changes nothing before step i's first token and nothing below layer
l. The fast path caches both runs' activations once, then for each cell starts at layer l from
the cached ``resid_pre`` with the patch applied and runs the bridge's own blocks
(``bridge.blocks[k]``, the wrapped modules with all their hook points) up to the last layer,
then the final norm and the unembedding at the answer positions only. Where the model's cache is
plain keys and values (a Hugging Face ``DynamicCache``), only the positions from step i's first
token on are computed: the prefix's keys and values are replayed read-only, and every other
block argument (mask, rotary embeddings, position ids; by keyword or positional, as the family
passes them) is captured from the bridge's own cached forward on that suffix, so the model
builds them, not us. All cells of one step are batched: a cell that starts at layer l joins the
batch at layer l ("staggered" batching). Elsewhere (the native model, recurrent and hybrid
caches) every cell runs all positions from its layer up.

With one corrupted run per step (``corrupted="each"``), step i's corrupted run shares the clean
run's prefix: :meth:`SuffixRunner.run` computes it from step i's first token on, on a copy of
the prefix's cache (one partial forward a step).

Module pre-hooks used to capture block arguments are removed in ``finally`` blocks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from faithprobe.activation.core import (
    FINAL_NORM_IN,
    UNEMBED_IN,
    Answer,
    Span,
    answer_metrics,
    collect,
    hook_name,
    keep_kwargs,
    site_name,
    span_setter,
    tolerance,
)
from faithprobe.errors import FaithprobeError

__all__ = [
    "SuffixRunner",
    "check_head",
    "run_staggered",
    "supports_prefix",
]


@contextmanager
def _capture_block_inputs(bridge: Any) -> Iterator[dict[int, tuple[tuple, dict[str, Any]]]]:
    """Record the positional and keyword arguments each block receives during one forward.

    Families differ in how a block gets its cache and mask: Llama passes them by keyword,
    GPT-2 positionally, others under other names. Everything is recorded as passed.
    """
    captured: dict[int, tuple[tuple, dict[str, Any]]] = {}
    handles = []

    def pre(k: int) -> Callable[..., None]:
        def fn(module: Any, args: tuple, kwargs: dict) -> None:
            captured[k] = (tuple(args), dict(kwargs))
        return fn

    try:
        for k, block in enumerate(bridge.blocks):
            handles.append(block.register_forward_pre_hook(pre(k), with_kwargs=True))
        yield captured
    finally:
        for h in handles:
            h.remove()


class _PrefixKV:
    """Duck-typed KV cache: prepends one layer's cached prefix keys/values, stores nothing."""

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        self.keys, self.values = keys, values

    def update(self, k: Tensor, v: Tensor, layer_idx: int, *args: Any, **kwargs: Any
               ) -> tuple[Tensor, Tensor]:
        b = k.shape[0]
        return (torch.cat([self.keys.expand(b, -1, -1, -1), k], dim=-2),
                torch.cat([self.values.expand(b, -1, -1, -1), v], dim=-2))


def supports_prefix(bridge: Any) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(getattr(bridge, "original_model", None), PreTrainedModel)


def _is_kv_cache(value: Any) -> bool:
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, Cache)


def _key_values(cache: Any) -> list[tuple[Tensor, Tensor]] | None:
    """Per layer, the prefix's keys and values; None unless the cache is a plain
    ``DynamicCache`` of key/value layers (recurrent, convolutional, linear-attention and hybrid
    states cannot be replayed as a read-only prefix)."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer
    except ImportError:  # pragma: no cover
        return None
    if type(cache) is not DynamicCache or not cache.layers:
        return None
    out = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(layer, DynamicLayer) or not isinstance(keys, Tensor) or \
                not isinstance(values, Tensor) or keys.ndim != 4:
            return None
        out.append((keys, values))
    return out


class SuffixRunner:
    """Runs the bridge's blocks from layer k on positions ``start:`` of one fixed sequence.

    Each block is called with the arguments it received in the bridge's own forward on that
    suffix (mask, rotary embeddings, position ids), with two substitutions: the hidden states
    (the first positional argument, or ``hidden_states=``) and any KV cache object, wherever
    it was passed, which becomes a read-only view of the prefix's keys and values.

    That forward also keeps its logits at the positions ``keep`` (``own_logits``; default
    the last position) and its activations at ``names`` (``own_cache``), at positions
    ``self.start:``. With ``keep_prefix``, :meth:`run` runs other sequences that share the
    prefix.
    """

    def __init__(self, bridge: Any, tokens: Tensor, start: int, names: Sequence[str] = (),
                 keep_prefix: bool = False, keep: Sequence[int] | None = None) -> None:
        self.bridge, self.start = bridge, start
        self.keep = [tokens.shape[1] - 1] if keep is None else list(keep)  # absolute
        self.kv: list[tuple[Tensor, Tensor]] | None = None
        self.prefix_tokens = tokens[:, :start]
        self._prefix_cache: Any = None
        cache = None
        if start > 0:  # only the cache is read: one position unembedded where the model allows
            _, cache = bridge(tokens[:, :start], return_type="logits_and_cache",
                              **keep_kwargs(bridge, [start - 1], tokens.device))
            self.kv = _key_values(cache)
        if self.kv is not None:
            if keep_prefix:  # the forward below appends to the cache
                self._prefix_cache = copy.deepcopy(cache)
            with _capture_block_inputs(bridge) as captured:
                self.own_logits, self.own_cache = collect(
                    bridge, tokens[:, start:], names, keep=[p - start for p in self.keep],
                    past_key_values=cache)
        else:  # no prefix, or a cache that is not plain keys and values: every position runs
            self.start = 0
            with _capture_block_inputs(bridge) as captured:
                self.own_logits, self.own_cache = collect(bridge, tokens, names, keep=self.keep)
        del cache  # the suffix's keys and values were appended to it: kept only in self.kv
        self.inputs = captured
        for k, (args, kwargs) in captured.items():
            if not args and "hidden_states" not in kwargs:
                raise FaithprobeError(f"block {k} receives no hidden states the fast path can "
                                      "replace", source="patching")

    def __len__(self) -> int:
        return len(self.inputs)

    def run(self, tokens: Int[Tensor, "1 pos"], names: Sequence[str]
            ) -> tuple[Float[Tensor, "1 n_keep vocab"], dict[str, Tensor]]:
        """Another sequence with the same first ``start`` tokens: its logits at the positions
        ``keep`` and its activations at ``names`` over positions ``self.start:``, from one
        forward of those positions on a copy of the prefix's cache (of every position where
        there is no prefix)."""
        if self.start == 0:
            return collect(self.bridge, tokens, names, keep=self.keep)
        if self._prefix_cache is None or not torch.equal(tokens[:, :self.start],
                                                          self.prefix_tokens):
            raise FaithprobeError("SuffixRunner.run needs keep_prefix and a sequence that "
                                  f"shares the first {self.start} tokens", source="patching")
        return collect(self.bridge, tokens[:, self.start:], names,
                       keep=[p - self.start for p in self.keep],
                       past_key_values=copy.deepcopy(self._prefix_cache))

    def block(self, k: int, x: Float[Tensor, "batch pos d_model"]) -> Tensor:
        args, kwargs = self.inputs[k]
        prefix = None if self.kv is None else _PrefixKV(*self.kv[k])
        args = tuple(prefix if _is_kv_cache(a) else a for a in args)
        kwargs = {n: prefix if _is_kv_cache(v) else v for n, v in kwargs.items()}
        if args:
            args = (x, *args[1:])
        else:
            kwargs["hidden_states"] = x
        out = self.bridge.blocks[k](*args, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out

    def logits(self, x: Float[Tensor, "batch pos d_model"], positions: Sequence[int]
               ) -> Float[Tensor, "batch n_answer vocab"]:
        rel = [p - self.start for p in positions]
        return _head(self.bridge, x[:, rel])


def _head(bridge: Any, x: Float[Tensor, "batch pos d_model"]) -> Tensor:
    """The final norm (where the family has one) and the unembedding."""
    if FINAL_NORM_IN in bridge.hook_dict:
        x = bridge.ln_final(x)
    return bridge.unembed(x)


def check_head(bridge: Any, base_cache: dict[str, Tensor], base_logits: Tensor,
                answer: Answer) -> None:
    """The fast path ends with the final norm and the unembedding: refuse a model whose output
    head is more than that (a logit scale, an extra projection), where it would be silently
    off. ``base_logits``: the model's own logits at the answer's positions."""
    final = base_cache.get(FINAL_NORM_IN, base_cache.get(UNEMBED_IN))
    if final is None:
        raise FaithprobeError(f"the model has neither {FINAL_NORM_IN} nor {UNEMBED_IN}: the "
                              "fast path cannot finish the forward", source="patching")
    positions = list(answer.positions)
    ours = _head(bridge, final[:, positions]).float()
    theirs = base_logits.float()  # already at the answer's positions
    tol = tolerance(bridge) * max(1.0, float(theirs.abs().max()))
    if not torch.allclose(ours, theirs, atol=tol, rtol=0.0):
        raise FaithprobeError(
            "the model's output head is more than its final norm and unembedding (logits "
            f"differ by {float((ours - theirs).abs().max()):.3g}): the fast path cannot finish "
            "the forward", source="patching")


def run_staggered(runner: SuffixRunner, chunk: list[tuple[int, int]], layers: list[int],
                   comps: list[str], base_cache: dict[str, Tensor], src_cache: dict[str, Tensor],
                   span: Span, answer: Answer) -> tuple[Tensor, Tensor]:
    """Cells of one step in one growing batch: a cell joins at its own layer."""
    s, e = span
    off = runner.start
    first = min(layers[li] for li, _ in chunk)
    x: Tensor | None = None
    for k in range(first, len(runner)):
        joining = [(li, ci) for li, ci in chunk if layers[li] == k]
        hooks = []
        if joining:
            resid = base_cache[hook_name(k, "resid_pre")][:, off:]  # [1, pos - off, d_model]
            rows = resid.expand(len(joining), -1, -1).clone()  # [n_join, pos - off, d_model]
            row0 = 0 if x is None else x.shape[0]
            for r, (_, ci) in enumerate(joining):
                c = comps[ci]
                if c == "resid_pre":
                    rows[r, s - off:e - off] = src_cache[hook_name(k, c)][0, s:e]
                else:
                    head = int(c[2:]) if c.startswith("z.") else None
                    name = site_name(k, c)
                    hooks.append((name, span_setter(src_cache[name], s, e, head, off,
                                                     [row0 + r])))
            x = rows if x is None else torch.cat([x, rows], dim=0)
        if x is None:
            continue
        with runner.bridge.hooks(fwd_hooks=hooks):
            x = runner.block(k, x)
    assert x is not None
    return answer_metrics(runner.logits(x, answer.positions), answer)
