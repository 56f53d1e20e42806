"""Step-span activation patching on a TransformerLens 4.x ``TransformerBridge``.

Everything works on token id tensors and returns :class:`~faithprobe.activation.core.PatchResult`
(the stage that runs it turns results into records):

- :func:`patch_steps`: for each step i, layer l and component (``resid_pre``, ``attn_out``,
  ``mlp_out``, optionally per-head ``attn.hook_z``) the activations over step i's token span are
  copied from the corrupted run into the clean run (``noising``) or from the clean run into the
  corrupted run (``denoising``); the answer's logit difference and log-probability are read at
  the answer position(s) (see :mod:`faithprobe.activation.core` for the two normalisations).
  ``method="fast"`` (:mod:`faithprobe.activation.fast`) runs only what a patch can change;
  ``method="reference"`` runs one full ``run_with_hooks`` forward per cell.
- :func:`check_fast_path`: before patching a model, compare the two on a short random input
  and say how to patch it (:class:`FastPath`), falling back to the reference where they differ.
- :func:`patch_answer_positions`: for edits that change the length, patch the forced-answer
  positions (aligned from the end of both sequences), per layer and component.

Hooks are plain ``fn(activation, *, hook) -> activation`` functions attached only inside
``bridge.hooks(...)``; no hook outlives a call, also when the call raises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from faithprobe.activation.core import (
    COMPONENTS,
    Answer,
    Direction,
    PatchResult,
    Span,
    check_answer,
    check_grid,
    check_tokens,
    collect,
    hook_name,
    make_result,
    metrics_at,
    resolve_components,
    site_name,
    span_setter,
    tolerance,
)
from faithprobe.activation.fast import (
    FINAL_NORM_IN,
    UNEMBED_IN,
    SuffixRunner,
    check_head,
    run_staggered,
    supports_prefix,
)
from faithprobe.errors import FaithprobeError

__all__ = ["FastPath", "check_fast_path", "patch_answer_positions", "patch_steps"]


def patch_steps(
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
    method: Literal["fast", "reference"] = "fast",
    batch_size: int | None = None,
    prefix_reuse: bool | None = None,
) -> PatchResult:
    """Patch each step's span at each layer and component; see the module docstring.

    Args:
        bridge: a TransformerLens 4.x ``TransformerBridge`` in eval mode.
        clean_tokens, corrupted_tokens: ``[1, pos]`` token ids of equal length.
        spans: per step, the half-open token span ``(start, end)`` in the clean trace.
        answer: answer positions and token ids, the same for both runs.
        corrupted_spans: the corrupted trace's spans; must match ``spans`` (checked).
        layers: layers to patch (default all). components: subset of :data:`COMPONENTS`.
        heads: also patch each head of ``attn.hook_z`` (components ``z.<h>``).
        direction: ``noising`` (corrupted activations into the clean run) or ``denoising``.
        method: ``fast`` (cached, layer- and prefix-skipping, batched) or ``reference``
            (one full ``run_with_hooks`` forward per cell).
        batch_size: cells per batch in the fast path (default: all cells of one step).
        prefix_reuse: reuse the unpatched prefix's KV cache (default: when the bridge wraps a
            HuggingFace model; the native model has no KV cache).
    """
    grid_in = check_grid(bridge, clean_tokens, corrupted_tokens, spans, corrupted_spans, layers,
                         components, heads, direction)
    if method not in ("fast", "reference"):
        raise FaithprobeError(f"method must be fast or reference, got {method!r}",
                              source="method")
    for i, (s, _) in enumerate(grid_in.spans):
        try:
            check_answer(answer, grid_in.clean.shape[1], s)
        except FaithprobeError as exc:
            raise FaithprobeError(exc.message, source="answer", field=f"step {i}") from None
    spans, layers, comps = grid_in.spans, grid_in.layers, grid_in.components
    base, src = grid_in.base, grid_in.src
    available = set(bridge.hook_dict)
    absent = sorted({site_name(lyr, c) for lyr in layers for c in comps} - available)
    cells = [(li, ci) for li in range(len(layers)) for ci in range(len(comps))
             if site_name(layers[li], comps[ci]) in available]
    names = sorted({site_name(layers[li], comps[ci]) for li, ci in cells}
                   | ({hook_name(k, "resid_pre") for k in range(bridge.cfg.n_layers)}
                      if method == "fast" else set()))
    final = FINAL_NORM_IN if FINAL_NORM_IN in available else UNEMBED_IN
    if method == "fast" and final in available:
        names.append(final)
    with torch.no_grad():
        base_logits, base_cache = collect(bridge, base, names)
        src_logits, src_cache = collect(bridge, src, names)
        m_base = [float(v[0]) for v in metrics_at(base_logits, answer)]
        m_src = [float(v[0]) for v in metrics_at(src_logits, answer)]
        clean, corrupted = (m_base, m_src) if direction == "noising" else (m_src, m_base)
        # [metric, step, layer, comp]; a site the model does not have stays NaN
        grid = torch.full((2, len(spans), len(layers), len(comps)), float("nan"))
        if method == "reference":
            for i, (s, e) in enumerate(spans):
                for li, ci in cells:
                    c = comps[ci]
                    head = int(c[2:]) if c.startswith("z.") else None
                    name = site_name(layers[li], c)
                    fn = span_setter(src_cache[name], s, e, head)
                    logits = bridge.run_with_hooks(base, fwd_hooks=[(name, fn)])
                    d, lp = metrics_at(logits, answer)
                    grid[:, i, li, ci] = torch.stack([d[0], lp[0]])
        else:
            check_head(bridge, base_cache, base_logits, answer)
            reuse = supports_prefix(bridge) if prefix_reuse is None else prefix_reuse
            cells.sort(key=lambda c: layers[c[0]])
            for i, (s, e) in enumerate(spans):
                runner = SuffixRunner(bridge, base, s if reuse else 0)
                size = batch_size or len(cells)
                for at in range(0, len(cells), size):
                    chunk = cells[at:at + size]
                    d, lp = run_staggered(runner, chunk, layers, comps, base_cache, src_cache,
                                           (s, e), answer)
                    for (li, ci), dv, lv in zip(chunk, d, lp):
                        grid[:, i, li, ci] = torch.stack([dv, lv])
    return make_result(direction, method, list(range(len(spans))), spans, layers, comps,
                       grid[0], grid[1], (clean[0], clean[1]), (corrupted[0], corrupted[1]),
                       absent_sites=absent)


@dataclass(frozen=True)
class FastPath:
    """How to patch one model, decided by :func:`check_fast_path`."""

    method: Literal["fast", "reference"]
    batch_size: int | None = None  # cells per batch for the fast path (None: a step's cells)
    prefix_reuse: bool | None = None  # replay the prefix's KV cache (None: where it is one)
    reason: str | None = None  # why not the default fast path; None when that agreed

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "batch_size": self.batch_size,
                "prefix_reuse": self.prefix_reuse, "reason": self.reason}


def check_fast_path(bridge: Any, *, n_tokens: int = 16, seed: int = 0,
                    tol: float | None = None) -> FastPath:
    """Compare the fast path with the reference loop on a short random input.

    Patches two spans at the first, middle and last layer, every component the model has, both
    directions, and compares the patched logit differences and log-probabilities (within
    ``tol`` relative to the largest reference value, at least 1; default 1e-4 in float32, 5e-2
    in half precision). The default fast path is tried first, then one cell at a time (some
    blocks take arguments whose shapes are tied to a batch of one), then both without replaying
    the prefix's cache (some caches hold more than keys and values); where none agrees, or
    the blocks cannot be run from the middle at all, the answer is the reference loop, with
    the reason.
    """
    n = max(8, min(int(n_tokens), int(bridge.cfg.n_ctx)))
    tol = tolerance(bridge) if tol is None else tol
    g = torch.Generator().manual_seed(seed)
    device = next(bridge.parameters()).device
    clean = torch.randint(0, int(bridge.cfg.d_vocab), (1, n), generator=g).to(device)
    corrupted = clean.roll(1, dims=1)
    spans = [(2, 4), (n // 2, n // 2 + 2)]
    answer = Answer.of(n - 1, 0, 1)
    layers = sorted({0, bridge.cfg.n_layers // 2, bridge.cfg.n_layers - 1})
    refs = [patch_steps(bridge, clean, corrupted, spans, answer, layers=layers,
                        direction=d, method="reference") for d in ("noising", "denoising")]
    problem = ""
    for batch_size, reuse in ((None, None), (1, None), (None, False), (1, False)):
        worst = 0.0
        try:
            for ref in refs:
                fast = patch_steps(bridge, clean, corrupted, spans, answer, layers=layers,
                                   direction=ref.direction, method="fast",
                                   batch_size=batch_size, prefix_reuse=reuse)
                for a, b in ((fast.logit_diff, ref.logit_diff), (fast.logprob, ref.logprob)):
                    gap = (a - b).abs()
                    gap[a.isnan() & b.isnan()] = 0.0  # a site the model does not have
                    scale = max(1.0, float(b.nan_to_num().abs().max()))
                    worst = max(worst, float(gap.nan_to_num(nan=math.inf).max()) / scale)
        except Exception as exc:  # noqa: BLE001 - any failure of the fast path means fall back
            first = str(exc).splitlines()[0][:160] if str(exc) else ""
            problem = problem or f"the fast path cannot run this model ({type(exc).__name__}: " \
                f"{first})"
            continue
        if worst <= tol:
            return FastPath("fast", batch_size, reuse, problem or None)
        problem = problem or (f"the fast path disagrees with the reference loop on a random "
                              f"input (relative difference {worst:.3g}, tolerance {tol:.3g})")
    return FastPath("reference", reason=problem)


# --------------------------------------------------------------------------------------------
# Answer-position patching (edits that change the length)


def patch_answer_positions(
    bridge: Any,
    clean_tokens: Int[Tensor, "1 pos_clean"],
    corrupted_tokens: Int[Tensor, "1 pos_corrupted"],
    answer: Answer,
    *,
    n_positions: int | None = None,
    layers: Sequence[int] | None = None,
    components: Sequence[str] = COMPONENTS,
    direction: Direction = "noising",
) -> PatchResult:
    """Patch the last ``n_positions`` positions (aligned from the end), per layer/component.

    ``answer`` is given in clean coordinates; in the corrupted run it is shifted by the length
    difference. ``n_positions`` defaults to the positions from the first answer position to the
    end of the clean sequence (the forced-answer positions). One forward per cell.
    """
    clean_tokens = check_tokens(clean_tokens, "clean_tokens")
    corrupted_tokens = check_tokens(corrupted_tokens, "corrupted_tokens")
    n_c, n_x = clean_tokens.shape[1], corrupted_tokens.shape[1]
    check_answer(answer, n_c, 0)
    n = n_c - min(answer.positions) if n_positions is None else int(n_positions)
    if not 0 < n <= min(n_c, n_x):
        raise FaithprobeError(f"cannot patch the last {n} positions of sequences of {n_c} and "
                              f"{n_x} tokens", source="n_positions")
    layers = list(range(bridge.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    comps = resolve_components(bridge, components, False)
    answers = {"clean": answer, "corrupted": answer.shifted(n_x - n_c)}
    runs = {"clean": clean_tokens, "corrupted": corrupted_tokens}
    base_key, src_key = (("clean", "corrupted") if direction == "noising"
                         else ("corrupted", "clean"))
    names = [hook_name(lyr, c) for lyr in layers for c in comps]
    with torch.no_grad():
        base_logits, _ = collect(bridge, runs[base_key], [])
        src_logits, src_cache = collect(bridge, runs[src_key], names)
        m_base = [float(v[0]) for v in metrics_at(base_logits, answers[base_key])]
        m_src = [float(v[0]) for v in metrics_at(src_logits, answers[src_key])]
        clean, corrupted = (m_base, m_src) if direction == "noising" else (m_src, m_base)
        n_base, n_src = runs[base_key].shape[1], runs[src_key].shape[1]
        grid = torch.zeros(2, 1, len(layers), len(comps))  # [metric, 1, layer, comp]
        for li, lyr in enumerate(layers):
            for ci, c in enumerate(comps):
                name = hook_name(lyr, c)
                source = src_cache[name][:, n_src - n:]  # [1, n, d_model]

                def fn(act: Tensor, *, hook: Any, source: Tensor = source) -> Tensor:
                    act = act.clone()
                    act[:, n_base - n:] = source.to(act.dtype)
                    return act

                logits = bridge.run_with_hooks(runs[base_key], fwd_hooks=[(name, fn)])
                d, lp = metrics_at(logits, answers[base_key])
                grid[:, 0, li, ci] = torch.stack([d[0], lp[0]])
    return make_result(direction, "reference", [None], [(n_c - n, n_c)], layers, comps,
                        grid[0], grid[1], (clean[0], clean[1]), (corrupted[0], corrupted[1]))
