"""Attention knockout of each step, and the attention the answer pays each step.

:func:`knockout_steps` stops every later query from attending to a step's keys (through
``blocks.<k>.attn.hook_pattern``); :func:`attention_to_steps` is the correlational baseline.
Tensor-level: the stage that runs them turns results into records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from faithprobe.activation.core import (
    Answer,
    Span,
    check_answer,
    check_spans,
    check_tokens,
    collect,
    metrics_at,
)

__all__ = ["KnockoutResult", "attention_to_steps", "knockout_steps"]


@dataclass(frozen=True)
class KnockoutResult:
    """Answer change when every later query is stopped from attending to step i's keys."""

    spans: list[Span]
    layers: list[int]  # layers whose hook_pattern was edited
    renormalise: bool
    logit_diff: Float[Tensor, " step"]  # after knockout
    logprob: Float[Tensor, " step"]  # after knockout
    kl: Float[Tensor, " step"]  # KL(unedited || knocked-out) at the first answer position
    clean_logit_diff: float
    clean_logprob: float


def _knockout_hook(s: int, e: int, renormalise: bool) -> Callable[..., Tensor]:
    def fn(pattern: Tensor, *, hook: Any) -> Tensor:
        # pattern: [batch, head, query_pos, key_pos]; queries after the step lose its keys
        pattern = pattern.clone()
        pattern[:, :, e:, s:e] = 0.0
        if renormalise:
            rows = pattern[:, :, e:]
            pattern[:, :, e:] = rows / rows.sum(-1, keepdim=True).clamp_min(1e-12)
        return pattern
    return fn


def knockout_steps(
    bridge: Any,
    tokens: Int[Tensor, "1 pos"],
    spans: Sequence[Span],
    answer: Answer,
    *,
    layers: Sequence[int] | None = None,
    renormalise: bool = True,
) -> KnockoutResult:
    """Stop every query after step i from attending to step i's keys, at the chosen layers.

    Edits ``blocks.<k>.attn.hook_pattern`` (post-softmax): the columns of the step's keys are
    zeroed for query positions ``>= end``. ``renormalise=True`` (default) rescales each edited
    row to sum to 1, which equals masking those keys before the softmax (the Thought Anchors
    attention suppression); ``renormalise=False`` removes the step's share and leaves the row
    sum below 1 (the step's values are subtracted, nothing is redistributed).
    """
    tokens = check_tokens(tokens, "tokens")
    spans = check_spans(spans, None, tokens.shape[1], tokens.shape[1])
    check_answer(answer, tokens.shape[1], 0)
    layers = list(range(bridge.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    names = [f"blocks.{k}.attn.hook_pattern" for k in layers]
    out = torch.zeros(3, len(spans))  # [logit_diff / logprob / kl, step]
    with torch.no_grad():
        clean_logits = bridge(tokens)
        cd, clp = metrics_at(clean_logits, answer)
        p0 = torch.log_softmax(clean_logits[0, answer.positions[0]].float(), -1)
        for i, (s, e) in enumerate(spans):
            hook = _knockout_hook(s, e, renormalise)
            logits = bridge.run_with_hooks(tokens, fwd_hooks=[(n, hook) for n in names])
            d, lp = metrics_at(logits, answer)
            p1 = torch.log_softmax(logits[0, answer.positions[0]].float(), -1)
            out[:, i] = torch.stack([d[0], lp[0], (p0.exp() * (p0 - p1)).sum()])
    return KnockoutResult(list(spans), layers, renormalise, out[0], out[1], out[2],
                          float(cd[0]), float(clp[0]))


def attention_to_steps(
    bridge: Any, tokens: Int[Tensor, "1 pos"], spans: Sequence[Span], positions: Sequence[int]
) -> Float[Tensor, "layer step"]:
    """Attention the answer position(s) pay to each step: summed over the step's keys,
    averaged over heads and answer positions. ``.mean(0)`` averages over layers."""
    tokens = check_tokens(tokens, "tokens")
    names = [f"blocks.{k}.attn.hook_pattern" for k in range(bridge.cfg.n_layers)]
    with torch.no_grad():
        _, cache = collect(bridge, tokens, names)
    out = torch.zeros(len(names), len(spans))
    for k, n in enumerate(names):
        pat = cache[n][0][:, list(positions)].float()  # [head, n_answer, key_pos]
        for i, (s, e) in enumerate(spans):
            out[k, i] = pat[:, :, s:e].sum(-1).mean()
    return out
