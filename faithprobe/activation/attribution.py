"""Attribution patching: a first-order estimate of the whole step x layer x component grid.

One forward and one backward pass on the run being patched (the clean run for ``noising``)
give the gradient of the metric with respect to every activation; the patched metric of cell
(step i, layer l, component c) is estimated as

    m_patched ~= m_base + sum over step i's span of (a_source - a_base) . d m / d a_base

(Nanda, "Attribution Patching"). :func:`attribution_correlation` reports the Pearson
correlation of the estimate with exact patching (:func:`faithprobe.patching.patch_steps`) on the
same grid. Hooks are attached only inside ``bridge.hooks(...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from faithprobe.activation.core import (
    COMPONENTS,
    Answer,
    Corruption,
    Direction,
    PatchResult,
    Span,
    answer_metrics,
    check_answer,
    check_grid,
    collect,
    keep_kwargs,
    make_result,
    min_clean_logit_diff,
    site_name,
)
from faithprobe.errors import FaithprobeError

__all__ = ["attribution_correlation", "attribution_patch_steps", "pearson"]


def attribution_patch_steps(
    bridge: Any,
    clean_tokens: Int[Tensor, "1 pos"],
    corrupted_tokens: Int[Tensor, "1 pos"],
    spans: Sequence[Span],
    answer: Answer,
    *,
    corrupted_spans: Sequence[Span] | None = None,
    layers: Sequence[int] | None = None,
    components: Sequence[str] = COMPONENTS,
    heads: bool = False,
    direction: Direction = "noising",
    corrupted: Corruption = "each",
) -> PatchResult:
    """Estimate :func:`~faithprobe.patching.patch_steps` from one forward + backward pass.

    Returns a :class:`~faithprobe.patching.PatchResult` with ``method="attribution"``; its
    ``logit_diff`` / ``logprob`` grids hold the estimated patched metrics, ``effect`` their
    normalisation by the exact clean and corrupted metrics. With ``corrupted="each"`` (as in
    ``patch_steps``) step i's source is the run with step i alone corrupted: noising adds one
    forward pass a step, denoising one forward and backward pass a step (the patched run is
    step i's own).
    """
    grid_in = check_grid(bridge, clean_tokens, corrupted_tokens, spans, corrupted_spans, layers,
                         components, heads, direction, corrupted)
    check_answer(answer, grid_in.clean.shape[1], 0)
    spans, layers, comps = grid_in.spans, grid_in.layers, grid_in.components
    names = sorted({site_name(lyr, c) for lyr in layers for c in comps})
    est = torch.zeros(2, len(spans), len(layers), len(comps))  # [metric, step, layer, comp]
    bad = torch.zeros(2, len(spans))  # [metric, step]: each step's corrupted run
    # the side that is the corrupted run changes from step to step under corrupted="each"
    per_step = corrupted == "each"
    clean_m = [float("nan")] * 2  # (no step: nothing is run)
    for i, (s, e) in enumerate(spans):
        base, src = grid_in.pair(i)
        if i == 0 or (per_step and direction == "denoising"):
            m_base, acts, grads = _gradients(bridge, base, names, answer)
        if i == 0 or (per_step and direction == "noising"):
            with torch.no_grad():
                src_logits, src_cache = collect(bridge, src, names, keep=list(answer.positions))
            m_src = [float(v[0]) for v in answer_metrics(src_logits, answer)]
        clean_m, bad[:, i] = ((m_base, torch.tensor(m_src)) if direction == "noising"
                              else (m_src, torch.tensor(m_base)))  # [metric] each
        for name in names:  # in float32 whatever the model's dtype
            # [1, pos, d_model] or [1, pos, head, d]
            delta = src_cache[name][0, s:e].float() - acts[name][0, s:e].float()
            for mi in range(2):
                prod = delta * grads[mi][name][0, s:e].float()
                for li, lyr in enumerate(layers):
                    for ci, c in enumerate(comps):
                        if site_name(lyr, c) != name:
                            continue
                        part = prod[:, int(c[2:])] if c.startswith("z.") else prod
                        est[mi, i, li, ci] = m_base[mi] + part.sum()
    return make_result(direction, "attribution", list(range(len(spans))), spans, layers, comps,
                        est[0], est[1], (clean_m[0], clean_m[1]), (bad[0], bad[1]),
                        corruption=corrupted,
                        min_clean=min_clean_logit_diff(next(bridge.parameters()).dtype))


def _gradients(bridge: Any, base: Tensor, names: Sequence[str], answer: Answer
               ) -> tuple[list[float], dict[str, Tensor], list[dict[str, Tensor]]]:
    """One forward and backward pass of ``base``: its metrics, its activations at ``names``
    and the gradients of its logit difference and log-probability with respect to them.

    No parameter gets a gradient (each is frozen for the pass, as loading leaves it): the
    first activation hooked becomes the graph's leaf, and every later one depends on it."""
    acts: dict[str, Tensor] = {}

    def keeper(name: str) -> Any:
        def fn(act: Tensor, *, hook: Any) -> Tensor:
            if not act.requires_grad:  # the first site: the graph starts here
                act = act.detach().requires_grad_(True)
            act.retain_grad()
            acts[name] = act  # keyed by the name we registered (hook.name may be an alias)
            return act
        return fn

    params = [p for p in bridge.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.enable_grad(), bridge.hooks(fwd_hooks=[(n, keeper(n)) for n in names]):
            kept = keep_kwargs(bridge, answer.positions, base.device)
            logits = bridge(base, **kept)  # the answer's positions alone unembedded
            diff, logprob = answer_metrics(
                logits if kept else logits[:, list(answer.positions)], answer)
            grads = []
            for metric in (diff[0], logprob[0]):
                for a in acts.values():
                    a.grad = None
                metric.backward(retain_graph=True)
                grads.append({n: a.grad.detach().clone() for n, a in acts.items()})
    finally:
        for p in params:
            p.requires_grad_(True)
    for a in acts.values():
        a.grad = None
    return ([float(diff[0].detach()), float(logprob[0].detach())],
            {n: a.detach() for n, a in acts.items()}, grads)


def pearson(a: Float[Tensor, " *cells"], b: Float[Tensor, " *cells"]) -> float:
    """Pearson correlation over the cells finite in both; NaN with fewer than 2 or no spread."""
    x = a.detach().flatten().double().cpu().numpy()
    y = b.detach().flatten().double().cpu().numpy()
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def attribution_correlation(estimate: PatchResult, exact: PatchResult, *,
                            metric: str = "logit_diff") -> float:
    """Pearson correlation between an attribution estimate and exact patching, same grid."""
    if (estimate.layers, estimate.components, estimate.spans, estimate.direction) != (
            exact.layers, exact.components, exact.spans, exact.direction):
        raise FaithprobeError("attribution and exact grids cover different layers, components, "
                              "spans or directions", source="estimate")
    if metric not in ("logit_diff", "logprob"):
        raise FaithprobeError(f"metric must be logit_diff or logprob, got {metric!r}",
                              source="metric")
    return pearson(getattr(estimate, metric), getattr(exact, metric))
