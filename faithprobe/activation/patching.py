"""Step-span activation patching on a TransformerLens 4.x ``TransformerBridge``.

Everything works on token id tensors and returns :class:`~faithprobe.activation.core.PatchResult`
(the stage that runs it turns results into records):

- :func:`patch_steps`: for each step i, layer l and component (``resid_pre``, ``attn_out``,
  ``mlp_out``, optionally per-head ``attn.hook_z``) the activations over step i's token span are
  copied from the corrupted run into the clean run (``noising``) or from the clean run into the
  corrupted run (``denoising``); the answer's logit difference and log-probability are read at
  the answer position(s) (see :mod:`faithprobe.activation.core` for the two normalisations and
  for ``corrupted``: step i's corrupted run has step i alone corrupted (``each``, the default)
  or every step (``all``)).
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
    CORRUPTIONS,
    Answer,
    Corruption,
    Direction,
    GridInputs,
    PatchResult,
    Span,
    answer_metrics,
    check_answer,
    check_grid,
    check_tokens,
    collect,
    hook_name,
    make_result,
    metrics_at,
    min_clean_logit_diff,
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
from faithprobe.models.batches import BYTE_BUDGET, rows_within

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
    corrupted: Corruption = "each",
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
        corrupted: ``each`` (step i's cells patched from, or into, the clean tokens with step
            i's span alone taken from ``corrupted_tokens``: one run a step) or ``all`` (from,
            or into, ``corrupted_tokens`` itself, every step corrupted at once).
        method: ``fast`` (cached, layer- and prefix-skipping, batched) or ``reference``
            (one full ``run_with_hooks`` forward per cell).
        batch_size: cells per batch in the fast path (default: all cells of one step).
        prefix_reuse: reuse the unpatched prefix's KV cache (default: when the bridge wraps a
            HuggingFace model; the native model has no KV cache).
    """
    grid_in = check_grid(bridge, clean_tokens, corrupted_tokens, spans, corrupted_spans, layers,
                         components, heads, direction, corrupted)
    if method not in ("fast", "reference"):
        raise FaithprobeError(f"method must be fast or reference, got {method!r}",
                              source="method")
    for i, (s, _) in enumerate(grid_in.spans):
        try:
            check_answer(answer, grid_in.clean.shape[1], s)
        except FaithprobeError as exc:
            raise FaithprobeError(exc.message, source="answer", field=f"step {i}") from None
    spans, layers, comps = grid_in.spans, grid_in.layers, grid_in.components
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
    reuse = supports_prefix(bridge) if prefix_reuse is None else prefix_reuse
    cells.sort(key=lambda c: layers[c[0]])
    keep = list(answer.positions)  # the logits read: the answer's positions alone
    with torch.no_grad():
        clean_logits, clean_cache = collect(bridge, grid_in.clean, names, keep=keep)
        clean = [float(v[0]) for v in answer_metrics(clean_logits, answer)]
        every = None if corrupted == "each" else collect(bridge, grid_in.corrupted, names,
                                                         keep=keep)
        if method == "fast":
            check_head(bridge, clean_cache, clean_logits, answer)
        # [metric, step, layer, comp]; a site the model does not have stays NaN
        grid = torch.full((2, len(spans), len(layers), len(comps)), float("nan"))
        bad = torch.zeros(2, len(spans))  # [metric, step]: the corrupted run of each step
        for i, (s, e) in enumerate(spans):
            runs = _step_runs(bridge, grid_in, i, names, (clean_logits, clean_cache), every,
                              answer, None if method == "reference" else (s if reuse else 0))
            bad[:, i] = torch.tensor(runs.corrupted)
            if runs.runner is None:
                base = grid_in.pair(i)[0]
                for li, ci in cells:
                    c = comps[ci]
                    head = int(c[2:]) if c.startswith("z.") else None
                    name = site_name(layers[li], c)
                    fn = span_setter(runs.src[name], s, e, head)
                    with bridge.hooks(fwd_hooks=[(name, fn)]):
                        logits, _ = collect(bridge, base, [], keep=keep)
                    d, lp = answer_metrics(logits, answer)
                    grid[:, i, li, ci] = torch.stack([d[0], lp[0]])
                continue
            # cells a batch: as many as the byte budget's attention scores allow
            size = batch_size or rows_within(BYTE_BUDGET, int(bridge.cfg.n_heads),
                                             grid_in.clean.shape[1] - runs.runner.start,
                                             grid_in.clean.shape[1])
            for at in range(0, len(cells), size):
                chunk = cells[at:at + size]
                d, lp = run_staggered(runs.runner, chunk, layers, comps, runs.base, runs.src,
                                       (s, e), answer)
                for (li, ci), dv, lv in zip(chunk, d, lp):
                    grid[:, i, li, ci] = torch.stack([dv, lv])
    return make_result(direction, method, list(range(len(spans))), spans, layers, comps,
                       grid[0], grid[1], (clean[0], clean[1]), (bad[0], bad[1]),
                       absent_sites=absent, corruption=corrupted,
                       min_clean=min_clean_logit_diff(next(bridge.parameters()).dtype))


@dataclass(frozen=True)
class _StepRuns:
    """The two runs of one step: activations of the run patched (``base``) and of the run
    they come from (``src``), the corrupted run's metrics, and the fast path's runner."""

    base: dict[str, Tensor]
    src: dict[str, Tensor]
    corrupted: tuple[float, float]  # the corrupted run's logit difference, log-probability
    runner: SuffixRunner | None  # None: the reference loop


def _step_runs(bridge: Any, grid_in: GridInputs, i: int, names: list[str],
               clean: tuple[Tensor, dict[str, Tensor]],
               every: tuple[Tensor, dict[str, Tensor]] | None, answer: Answer,
               start: int | None) -> _StepRuns:
    """Step i's runs. ``every``: the all-steps-corrupted run (``corrupted="all"``), else step
    i's own corrupted run is computed here: in the fast path (``start`` not None) from the
    first position the fast path recomputes, sharing the clean run's prefix."""
    noising = grid_in.direction == "noising"
    bad_tokens = grid_in.corrupted_run(i)
    keep = list(answer.positions)
    runner = None  # bad_logits: the corrupted run's logits at the answer's positions
    if every is not None:
        bad_logits, bad_cache = every
        if start is not None:
            runner = SuffixRunner(bridge, grid_in.pair(i)[0], start, keep=keep)
    elif start is None:
        bad_logits, bad_cache = collect(bridge, bad_tokens, names, keep=keep)
    elif noising:  # the clean run is patched: step i's corrupted run is the source
        runner = SuffixRunner(bridge, grid_in.clean, start, keep_prefix=True, keep=keep)
        bad_logits, suffix = runner.run(bad_tokens, names)
        bad_cache = _absolute(suffix, clean[1], runner.start)
    else:  # step i's corrupted run is patched: the runner runs it
        runner = SuffixRunner(bridge, bad_tokens, start, names, keep=keep)
        bad_logits = runner.own_logits
        bad_cache = _absolute(runner.own_cache, clean[1], runner.start)
        runner.own_cache = {}  # read: freed with the suffix's copy
    m = [float(v[0]) for v in answer_metrics(bad_logits, answer)]
    base, src = (clean[1], bad_cache) if noising else (bad_cache, clean[1])
    return _StepRuns(base, src, (m[0], m[1]), runner)


def _absolute(suffix: dict[str, Tensor], prefix: dict[str, Tensor], start: int
              ) -> dict[str, Tensor]:
    """Activations at positions ``start:`` completed with ``prefix``'s first ``start``
    positions (the same tokens, so the same activations, in both runs)."""
    if start == 0:
        return suffix
    return {n: torch.cat([prefix[n][:, :start], v], dim=1) for n, v in suffix.items()}


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
    directions, from each step's own corrupted run and from the all-steps one, and compares
    the patched logit differences and log-probabilities (within ``tol`` relative to the largest
    reference value, at least 1; default 1e-4 in float32, 5e-2 in half precision). The default
    fast path is tried first, then one cell at a time (some blocks take arguments whose shapes
    are tied to a batch of one), then both without replaying the prefix's cache (some caches
    hold more than keys and values); where none agrees, or the blocks cannot be run from the
    middle at all, the answer is the reference loop, with the reason.
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
    refs = [patch_steps(bridge, clean, corrupted, spans, answer, layers=layers, direction=d,
                        corrupted=c, method="reference")
            for d in ("noising", "denoising") for c in CORRUPTIONS]
    problem = ""
    for batch_size, reuse in ((None, None), (1, None), (None, False), (1, False)):
        worst = 0.0
        try:
            for ref in refs:
                fast = patch_steps(bridge, clean, corrupted, spans, answer, layers=layers,
                                   direction=ref.direction, corrupted=ref.corrupted,
                                   method="fast",
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
                        grid[0], grid[1], (clean[0], clean[1]), (corrupted[0], corrupted[1]),
                        min_clean=min_clean_logit_diff(next(bridge.parameters()).dtype))
