"""The step-to-step suppression matrix and the vertical attention of receiver heads.

:func:`suppress_steps` runs one clean forward pass and one pass per step in which every later
query, at every layer and head, is stopped from attending to the step's keys (its columns of
``blocks.<k>.attn.hook_pattern`` zeroed for queries at or after the step's end, each edited row
renormalised: the same as masking those keys before the softmax, Thought Anchors' attention
suppression). The suppressed passes run in batches, one step a row, so a trace costs S + 1
forward passes. For every later step j it reads the per-token KL between the clean and the
suppressed next-token distributions, averaged over step j's positions (the logits at a step's
tokens, as Thought Anchors reads them), and the same over the answer's positions.

The clean pass also reads the vertical attention score of every head (:func:`vertical_scores`):
the mean attention from query tokens at least ``proximity`` positions later to a step's tokens.

:func:`suppress_steps_reference` is the reference the fast batched path is checked against: one
``run_with_hooks`` forward per step, the pattern edited by a plain TransformerLens hook,
the KL computed position by position. :func:`suppression_support` says why a bridge cannot be
suppressed this way (no pattern hook, or a pattern hook whose edits the model discards).
Tensor-level: the stage that runs them turns results into records.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from faithprobe.activation.core import Span, check_tokens
from faithprobe.errors import FaithprobeError

__all__ = [
    "PROXIMITY",
    "TEMPERATURES",
    "SuppressionResult",
    "pattern_names",
    "suppress_steps",
    "suppress_steps_reference",
    "suppression_support",
    "token_kl",
    "vertical_scores",
]

PROXIMITY = 4  # Thought Anchors' proximity rule: queries this many tokens later, or more
TEMPERATURES = (1.0, 0.6)  # the KL's softmax temperature: plain, or Thought Anchors' 0.6
ROW_BUDGET = 2**28  # logits elements (rows x positions x vocabulary) one batch may hold
KL_BLOCK = 64  # positions whose per-token KL is computed at once (temporaries stay small)


@dataclass(frozen=True)
class SuppressionResult:
    """One trace's suppression matrix, the answer's row, and the clean pass's vertical scores.

    ``matrix[j, i]`` is the mean over step j's positions of KL(clean || step i suppressed), NaN
    where ``j <= i`` (a step cannot reach an earlier one). ``answer_kl[i]`` is the same over the
    answer's positions. ``vertical[l, h, i]`` is head (l, h)'s mean attention from queries at
    least ``proximity`` tokens later to step i's tokens (NaN where no query is that far).
    """

    spans: list[Span]
    answer_positions: tuple[int, ...]
    temperature: float
    proximity: int
    matrix: Float[Tensor, "target source"]
    answer_kl: Float[Tensor, " source"]
    vertical: Float[Tensor, "layer head step"] | None


def pattern_names(bridge: Any) -> list[str]:
    """The full ``hook_pattern`` name of every layer."""
    return [f"blocks.{k}.attn.hook_pattern" for k in range(bridge.cfg.n_layers)]


def suppression_support(bridge: Any) -> str | None:
    """Why ``bridge`` cannot be suppressed through its attention patterns, or None when it can.

    Every layer needs a ``hook_pattern`` whose edits reach the output: a layer without one (a
    state-space or linear-attention mixer) lets a step's information around the mask, and an
    attention that fires the hook after the wrapped module has used the pattern discards edits.
    Checked on a 6-token input: suppressing its first 3 tokens must move the last logits.
    """
    names = pattern_names(bridge)
    known = set(getattr(bridge, "hook_dict", {}) or {})
    missing = [n for n in names if n not in known]
    if missing:
        return (f"no attention pattern hook at {len(missing)} of {len(names)} layers "
                f"(first: {missing[0]}): information passes around a masked pattern")
    device = next(bridge.parameters()).device
    tokens = torch.arange(6, device=device)[None] % int(bridge.cfg.d_vocab)
    hook = _row_hook([(1, 3)])
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clean = bridge(tokens)[0, -1].float()
        edited = bridge.run_with_hooks(tokens, fwd_hooks=[(n, hook) for n in names])[0, -1]
    if any("edit is discarded" in str(w.message) for w in caught):
        return ("the attention delegates to the wrapped module, which uses the pattern before "
                "hook_pattern fires: pattern edits are discarded")
    if not torch.isfinite(edited).all():
        return "suppressing tokens through hook_pattern gives non-finite logits"
    if (edited.float() - clean).abs().max().item() == 0.0:
        return "editing hook_pattern does not change the logits: the edits never reach them"
    return None


def _row_hook(rows: Sequence[Span | None]) -> Callable[..., Tensor]:
    """Hook zeroing, in batch row b, the columns of ``rows[b]``'s keys for every query at or
    after its end, and renormalising those queries' rows (None: the row is left alone)."""
    def fn(pattern: Tensor, *, hook: Any) -> Tensor:
        # pattern: [batch, head, query_pos, key_pos], a fresh softmax output edited in place
        for b, span in enumerate(rows):
            if span is None:
                continue
            s, e = span
            later = pattern[b, :, e:]  # [head, query >= e, key]
            later[..., s:e] = 0.0
            later.div_(later.sum(-1, keepdim=True).clamp_min(1e-12))
        return pattern
    return fn


def token_kl(clean: Float[Tensor, "*batch pos vocab"], edited: Float[Tensor, "*batch pos vocab"],
             temperature: float = 1.0) -> Float[Tensor, "*batch pos"]:
    """KL(clean || edited) of the next-token distributions at each position, both softmaxed at
    ``temperature``."""
    p = torch.log_softmax(clean.float() / temperature, dim=-1)
    q = torch.log_softmax(edited.float() / temperature, dim=-1)
    return (p.exp() * (p - q)).sum(-1)


def _check(bridge: Any, tokens: Tensor, spans: Sequence[Span], answer_positions: Sequence[int],
           temperature: float, proximity: int) -> tuple[Tensor, list[Span], tuple[int, ...]]:
    tokens = check_tokens(tokens, "tokens")
    n = tokens.shape[1]
    spans = [(int(s), int(e)) for s, e in spans]
    for i, (s, e) in enumerate(spans):
        if not 0 < s < e <= n:
            raise FaithprobeError(f"step {i} span [{s}, {e}) is empty, starts the sequence or "
                                  f"lies outside it (length {n})", source="spans",
                                  field=f"step {i}")
        if i and s < spans[i - 1][1]:
            raise FaithprobeError(f"step {i} span [{s}, {e}) overlaps or precedes step {i - 1}",
                                  source="spans", field=f"step {i}")
    positions = tuple(int(p) for p in answer_positions)
    if not positions or not all(0 <= p < n for p in positions):
        raise FaithprobeError(f"answer positions {positions} must be non-empty and inside the "
                              f"sequence of {n}", source="answer_positions")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
            and temperature > 0):
        raise FaithprobeError(f"temperature must be a positive number, got {temperature!r}",
                              field="temperature")
    if isinstance(proximity, bool) or not isinstance(proximity, int) or proximity < 1:
        raise FaithprobeError(f"proximity must be a positive integer, got {proximity!r}",
                              field="proximity")
    return tokens, spans, positions


def _vertical_of(pattern: Tensor, spans: Sequence[Span], proximity: int
                 ) -> Float[Tensor, "head step"]:
    """Vertical scores of one layer's pattern [head, query, key] (see :func:`vertical_scores`)."""
    n, device = pattern.shape[-1], pattern.device
    out = torch.full((pattern.shape[0], len(spans)), float("nan"))
    for i, (s, e) in enumerate(spans):
        q = torch.arange(s, n, device=device)[:, None]  # query positions from the step's start
        far = (q - torch.arange(s, e, device=device)[None]) >= proximity  # [query, key]
        count = int(far.sum())
        if count:
            block = pattern[:, s:, s:e].float()  # [head, query, key]
            out[:, i] = ((block * far).sum((1, 2)) / count).cpu()
    return out


def _reader(store: dict[int, Tensor], layer: int, spans: Sequence[Span], proximity: int
            ) -> Callable[..., Tensor]:
    def fn(pattern: Tensor, *, hook: Any) -> Tensor:
        store[layer] = _vertical_of(pattern[0].detach(), spans, proximity)
        return pattern
    return fn


def _clean_pass(bridge: Any, tokens: Tensor, spans: Sequence[Span], proximity: int,
                receivers: bool) -> tuple[Tensor, Tensor | None]:
    """Clean logits, and the vertical scores [layer, head, step] read on the way when asked."""
    if not receivers:
        return bridge(tokens), None
    names = pattern_names(bridge)
    store: dict[int, Tensor] = {}
    hooks = [(n, _reader(store, k, spans, proximity)) for k, n in enumerate(names)]
    with bridge.hooks(fwd_hooks=hooks):
        logits = bridge(tokens)
    return logits, torch.stack([store[k] for k in range(len(names))])


def vertical_scores(bridge: Any, tokens: Int[Tensor, "1 pos"], spans: Sequence[Span], *,
                    proximity: int = PROXIMITY) -> Float[Tensor, "layer head step"]:
    """Each head's vertical attention score of each step, from one clean forward pass.

    ``out[l, h, i]`` is the mean, over the (query, key) pairs with the key in step i's span and
    the query at least ``proximity`` positions after the key (to the end of the sequence), of
    head (l, h)'s attention weight. NaN where no query is that far.
    """
    tokens, spans, _ = _check(bridge, tokens, spans, [0], 1.0, proximity)
    with torch.no_grad():
        _, vertical = _clean_pass(bridge, tokens, spans, proximity, True)
    assert vertical is not None
    return vertical


def _rows_per_batch(n_pos: int, vocab: int, batch_size: int | None) -> int:
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise FaithprobeError(f"batch_size must be a positive integer, got {batch_size!r}",
                                  field="batch_size")
        return batch_size
    return max(1, min(16, ROW_BUDGET // max(1, n_pos * vocab)))


def _matrix(kl: Tensor, spans: Sequence[Span], positions: Sequence[int], suppressed: int
            ) -> tuple[Tensor, float]:
    """Column ``suppressed`` of the matrix (mean KL over each later step) and the answer's KL,
    from one suppressed pass's per-position KL [pos]."""
    col = torch.full((len(spans),), float("nan"))
    for j in range(suppressed + 1, len(spans)):
        s, e = spans[j]
        col[j] = kl[s:e].mean()
    return col, float(kl[list(positions)].mean())


def suppress_steps(
    bridge: Any,
    tokens: Int[Tensor, "1 pos"],
    spans: Sequence[Span],
    answer_positions: Sequence[int],
    *,
    temperature: float = 1.0,
    proximity: int = PROXIMITY,
    receivers: bool = True,
    batch_size: int | None = None,
) -> SuppressionResult:
    """The suppression matrix of one trace (S + 1 forward passes) and, with ``receivers``, the
    vertical scores read in its clean pass (see the module docstring).

    Args:
        bridge: a TransformerBridge whose patterns can be edited (:func:`suppression_support`).
        tokens: the rendered trace, [1, pos].
        spans: each step's half-open token span, in order, none at position 0.
        answer_positions: the positions whose logits predict the answer's tokens.
        temperature: the softmax temperature of the per-token KL (1, or Thought Anchors' 0.6).
        proximity: the vertical score's minimum query-key distance in tokens.
        receivers: also return the vertical scores.
        batch_size: suppressed passes per batch (default: as many as keep the logits of a
            batch under ``ROW_BUDGET`` elements, at most 16).
    """
    tokens, spans, positions = _check(bridge, tokens, spans, answer_positions, temperature,
                                      proximity)
    names = pattern_names(bridge)
    rows = _rows_per_batch(tokens.shape[1], int(bridge.cfg.d_vocab), batch_size)
    # the positions read: every step's after the first, and the answer's
    first = spans[1][0] if len(spans) > 1 else min(positions)
    last = max(max(positions), spans[-1][1] - 1) + 1
    matrix = torch.full((len(spans), len(spans)), float("nan"))
    answer = torch.zeros(len(spans))
    with torch.no_grad():
        clean, vertical = _clean_pass(bridge, tokens, spans, proximity, receivers)
        for start in range(0, len(spans), rows):
            chunk = spans[start:start + rows]
            hook = _row_hook(chunk)
            logits = bridge.run_with_hooks(tokens.expand(len(chunk), -1),
                                           fwd_hooks=[(n, hook) for n in names])
            kl = torch.zeros(len(chunk), tokens.shape[1])
            for a in range(first, last, KL_BLOCK):  # blocks of positions: small temporaries
                b = min(a + KL_BLOCK, last)
                lp = torch.log_softmax(clean[0, a:b].float() / temperature, dim=-1)
                pe = lp.exp()
                for r in range(len(chunk)):
                    # KL(p || q) = -sum p (log q - log p), in place on log q
                    lq = torch.log_softmax(logits[r, a:b].float() / temperature, dim=-1)
                    kl[r, a:b] = -lq.sub_(lp).mul_(pe).sum(-1).cpu()
            del logits
            for r in range(len(chunk)):
                matrix[:, start + r], answer[start + r] = _matrix(kl[r], spans, positions,
                                                                  start + r)
    return SuppressionResult(spans, positions, float(temperature), proximity, matrix, answer,
                             vertical)


def suppress_steps_reference(
    bridge: Any,
    tokens: Int[Tensor, "1 pos"],
    spans: Sequence[Span],
    answer_positions: Sequence[int],
    *,
    temperature: float = 1.0,
) -> SuppressionResult:
    """The reference of :func:`suppress_steps`: per step, one unbatched ``run_with_hooks``
    forward whose hook clones each layer's pattern, zeroes the step's key columns for later
    queries and renormalises them; the KL computed one position at a time. No vertical scores.
    """
    tokens, spans, positions = _check(bridge, tokens, spans, answer_positions, temperature,
                                      PROXIMITY)
    names = pattern_names(bridge)
    n = len(spans)
    matrix = torch.full((n, n), float("nan"))
    answer = torch.zeros(n)

    def masker(s: int, e: int) -> Callable[..., Tensor]:
        def fn(pattern: Tensor, *, hook: Any) -> Tensor:
            pattern = pattern.clone()
            pattern[:, :, e:, s:e] = 0.0
            rows = pattern[:, :, e:]
            pattern[:, :, e:] = rows / rows.sum(-1, keepdim=True)
            return pattern
        return fn

    def kl_at(clean: Tensor, edited: Tensor, pos: int) -> float:
        return float(token_kl(clean[0, pos], edited[0, pos], temperature))

    with torch.no_grad():
        clean = bridge(tokens)
        for i, (s, e) in enumerate(spans):
            edited = bridge.run_with_hooks(tokens, fwd_hooks=[(nm, masker(s, e)) for nm in names])
            for j in range(i + 1, n):
                sj, ej = spans[j]
                matrix[j, i] = sum(kl_at(clean, edited, p) for p in range(sj, ej)) / (ej - sj)
            answer[i] = sum(kl_at(clean, edited, p) for p in positions) / len(positions)
    return SuppressionResult(spans, positions, float(temperature), PROXIMITY, matrix, answer,
                             None)
