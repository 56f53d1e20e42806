"""Half precision that stays exact where it is read: the unembedding in float32.

A model loaded in bfloat16 (or float16) would produce its logits in that dtype, and at the
magnitudes logits reach (16 to 32) bfloat16 values lie 0.125 apart: a logit difference or a
log-probability read from them is off by that much before any arithmetic. :func:`float32_head`
makes the unembedding itself run in float32 whatever the model's dtype: the final hidden state
is upcast and multiplied by a float32 copy of the unembedding (the one float32 copy of a
weight; every other weight stays in the model's dtype), so the logits, and the log-softmax taken
of them (always in float32), carry float32's precision. In a float32 model it changes nothing.

:func:`freeze` turns off every parameter's gradient: nothing faithprobe runs trains a loaded
model, and attribution's backward pass needs gradients of activations only (it makes its own
inputs require them), not a full set of parameter gradients.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import Tensor

__all__ = ["float32_head", "freeze", "head_dtype", "was_trainable"]


def _float32_linear(module: torch.nn.Linear, x: Tensor) -> Tensor:
    """``module``'s linear map in float32 on a float32 copy of its weight, made once and
    made again only when the weight changes (moved to another device, cast, assigned)."""
    w, b = module.weight, module.bias
    if w.dtype == torch.float32:
        return torch.nn.functional.linear(x.float(), w, None if b is None else b.float())
    key = (w.data_ptr(), w._version, w.device, w.dtype, None if b is None else b.data_ptr())
    cached = module.__dict__.get("_faithprobe_float32")
    if cached is None or cached[0] != key:
        cached = (key, w.detach().float(), None if b is None else b.detach().float())
        module.__dict__["_faithprobe_float32"] = cached
    return torch.nn.functional.linear(x.float(), cached[1], cached[2])


def float32_head(bridge: Any) -> bool:
    """Make ``bridge``'s unembedding compute in float32 (see the module docstring); False
    where the unembedding is not a plain linear layer (left as it is)."""
    head = getattr(getattr(bridge, "unembed", None), "original_component", None)
    if not isinstance(head, torch.nn.Linear):
        return False
    head.forward = types.MethodType(_float32_linear, head)
    return True


def head_dtype(bridge: Any) -> torch.dtype:
    """The dtype the logits come out in: float32 with :func:`float32_head`, else the
    model's."""
    head = getattr(getattr(bridge, "unembed", None), "original_component", None)
    if isinstance(getattr(head, "forward", None), types.MethodType) and \
            head.forward.__func__ is _float32_linear:
        return torch.float32
    return next(bridge.parameters()).dtype


TRAINABLE = "faithprobe_trainable"  # the bridge attribute: what was trainable at load


def freeze(bridge: Any) -> None:
    """No parameter of ``bridge`` requires a gradient. Which did is kept (by identity, in
    ``bridge.faithprobe_trainable``): a weight frozen by its loader stays frozen to the stages
    that train (unlearning), one frozen here does not."""
    setattr(bridge, TRAINABLE, frozenset(id(p) for p in bridge.parameters() if p.requires_grad))
    bridge.requires_grad_(False)


def was_trainable(bridge: Any, param: torch.nn.Parameter) -> bool:
    """Whether ``param`` of ``bridge`` could take gradients before :func:`freeze` (or can
    now, on a bridge it never froze)."""
    trainable = getattr(bridge, TRAINABLE, None)
    return param.requires_grad if trainable is None else id(param) in trainable
