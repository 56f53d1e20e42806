"""Activation-level step interventions on a TransformerLens 4.x ``TransformerBridge``.

Everything works on token id tensors, so this module depends on no trace format:

- :func:`patch_steps`: step-span activation patching. For each step i, layer l and component
  (``resid_pre``, ``attn_out``, ``mlp_out``, optionally per-head ``attn.hook_z``) the activations
  over step i's token span are copied from the corrupted run into the clean run (``noising``) or
  from the clean run into the corrupted run (``denoising``). The answer's logit difference
  (original answer token minus alternative) and log-probability are read at the answer
  position(s). Two normalisations are kept: ``share``, the share of the clean run's logit
  difference that the patch removes (noising, ``(LD_clean - LD_patched) / LD_clean``) or
  restores (denoising, ``(LD_patched - LD_corrupted) / LD_clean``), defined whenever the clean
  run prefers the answer (``LD_clean >= MIN_CLEAN_LOGIT_DIFF``), also where corruption moves
  nothing; and TransformerLens' ``effect = (m_patched - m_clean) / (m_corrupted - m_clean)``
  (0 = clean behaviour, 1 = corrupted), a ratio that is undefined, and noisy, where corruption
  barely moves the answer.
- :func:`patch_answer_positions`: for edits that change the length, patch the forced-answer
  positions (aligned from the end of both sequences), per layer and component.
- :func:`knockout_steps` and :func:`attention_to_steps`: attention knockout of each step's keys
  through ``hook_pattern``, and the attention the answer position pays each step (a
  correlational baseline).
- Attribution patching lives in :mod:`faithprobe.activation.attribution`.

Speed (``method="fast"``, the default). Patching step i at layer l changes nothing before step
i's first token and nothing below layer l. The fast path caches both runs' activations once, then
for each cell starts at layer l from the cached ``resid_pre`` with the patch applied and runs the
bridge's own blocks (``bridge.blocks[k]``, the wrapped modules with all their hook points) up to
the last layer, then ``ln_final`` and ``unembed`` at the answer positions only. Where the bridge
wraps a HuggingFace model, only the positions from step i's first token on are computed: the
prefix's keys and values come from the unpatched run's KV cache, and the block keyword arguments
(attention mask, rotary embeddings, position ids) are captured from the bridge's own cached
forward on that suffix, so the model builds them, not us. All cells of one step are batched:
a cell that starts at layer l joins the batch at layer l ("staggered" batching). The native
TransformerLens model has no KV cache, so there every cell runs all positions from its layer up.
``method="reference"`` runs one full ``run_with_hooks`` forward per cell; the tests hold the two
equal within 1e-4.

Hooks are plain ``fn(activation, *, hook) -> activation`` functions attached only inside
``bridge.hooks(...)``; module pre-hooks used to capture block arguments are removed in
``finally`` blocks. No hook outlives a call, also when the call raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from faithprobe.errors import FaithprobeError
from faithprobe.records import Record

__all__ = [
    "COMPONENTS",
    "MIN_CLEAN_LOGIT_DIFF",
    "Answer",
    "KnockoutResult",
    "PatchResult",
    "answer_metrics",
    "attention_to_steps",
    "FastPath",
    "check_fast_path",
    "hook_name",
    "knockout_steps",
    "patch_answer_positions",
    "patch_steps",
]

COMPONENTS = ("resid_pre", "attn_out", "mlp_out")
_HOOK_SUFFIX = {
    "resid_pre": "hook_resid_pre",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "z": "attn.hook_z",
}
# The last block's output, where the fast path's head starts: the final norm's input, or the
# unembedding's where a family has no final norm (GPT-1).
_FINAL_NORM_IN, _UNEMBED_IN = "ln_final.hook_in", "unembed.hook_in"
_ZERO_DENOMINATOR = 1e-6  # |m_corrupted - m_clean| below this: effect undefined, cells skipped
# The clean run must prefer the answer over the alternative by this logit margin (62% against
# 38% between the two) for a share of that margin to mean anything.
MIN_CLEAN_LOGIT_DIFF = 0.5

Span = tuple[int, int]  # half-open [start, end) token positions


def hook_name(layer: int, component: str) -> str:
    """Full hook name of a component (``resid_pre``, ``attn_out``, ``mlp_out``, ``z``)."""
    return f"blocks.{layer}.{_HOOK_SUFFIX[component]}"


@dataclass(frozen=True)
class Answer:
    """Where and what to read: the logits at ``positions[j]`` predict ``answer_ids[j]``.

    The logit difference is summed over positions of ``logit[answer] - logit[alt]``; the
    log-probability is the summed log-probability of the answer tokens (teacher-forced).
    """

    positions: tuple[int, ...]  # logits at position p predict token p + 1
    answer_ids: tuple[int, ...]  # the original answer's tokens
    alt_ids: tuple[int, ...]  # the alternative's tokens, one per position

    def __post_init__(self) -> None:
        n = len(self.positions)
        if n == 0 or len(self.answer_ids) != n or len(self.alt_ids) != n:
            raise FaithprobeError(
                f"answer positions, answer ids and alternative ids need the same non-zero length "
                f"(got {n}, {len(self.answer_ids)}, {len(self.alt_ids)})",
                source="answer",
            )

    @classmethod
    def of(cls, positions: int | Sequence[int], answer_ids: int | Sequence[int],
           alt_ids: int | Sequence[int]) -> Answer:
        def tup(x: int | Sequence[int]) -> tuple[int, ...]:
            return (int(x),) if isinstance(x, int) else tuple(int(v) for v in x)
        return cls(tup(positions), tup(answer_ids), tup(alt_ids))

    def shifted(self, offset: int) -> Answer:
        return Answer(tuple(p + offset for p in self.positions), self.answer_ids, self.alt_ids)


def answer_metrics(
    logits: Float[Tensor, "batch n_answer vocab"], answer: Answer
) -> tuple[Float[Tensor, " batch"], Float[Tensor, " batch"]]:
    """Logit difference and log-probability from the logits AT the answer positions only."""
    logits = logits.float()
    ans = torch.tensor(answer.answer_ids, device=logits.device)
    alt = torch.tensor(answer.alt_ids, device=logits.device)
    idx = torch.arange(len(answer.positions), device=logits.device)
    diff = (logits[:, idx, ans] - logits[:, idx, alt]).sum(-1)
    logprob = torch.log_softmax(logits, dim=-1)[:, idx, ans].sum(-1)
    return diff, logprob


def _metrics_full(logits: Float[Tensor, "batch pos vocab"], answer: Answer
                  ) -> tuple[Tensor, Tensor]:
    return answer_metrics(logits[:, list(answer.positions)], answer)


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class PatchResult:
    """A patching grid and its baselines; ``effect[s, l, c]`` is NaN where skipped.

    ``components`` labels the last axis: ``resid_pre``, ``attn_out``, ``mlp_out`` or ``z.<h>``
    (head h of ``attn.hook_z``). ``steps`` holds step indices (``None`` for answer-position
    patching).
    """

    direction: str  # "noising" (corrupted -> clean run) or "denoising" (clean -> corrupted run)
    method: str  # "fast", "reference" or "attribution"
    steps: list[int | None]
    spans: list[Span]  # in clean-token coordinates
    layers: list[int]
    components: list[str]
    effect: Float[Tensor, "step layer component"]  # TransformerLens-normalised effect
    share: Float[Tensor, "step layer component"]  # share of the clean logit difference moved
    effect_logprob: Float[Tensor, "step layer component"]  # same normalisation, log-prob
    logit_diff: Float[Tensor, "step layer component"]  # patched logit difference
    logprob: Float[Tensor, "step layer component"]  # patched answer log-probability
    clean_logit_diff: float
    corrupted_logit_diff: float
    clean_logprob: float
    corrupted_logprob: float
    skipped_reason: str | None = None  # set when the clean run does not prefer the answer
    absent_sites: tuple[str, ...] = ()  # requested hook names the model does not have (NaN)
    extra: dict[str, Any] = field(default_factory=dict)

    def site(self, layer_index: int, component_index: int) -> tuple[str, int | None]:
        """Full hook name and head (or None) of one grid cell."""
        comp = self.components[component_index]
        layer = self.layers[layer_index]
        if comp.startswith("z."):
            return hook_name(layer, "z"), int(comp[2:])
        return hook_name(layer, comp), None

    def to_records(self, trace_id: str, checkpoint: str, *, n_steps: int | None = None,
                   model: str | None = None, answer: str | None = None,
                   steps: Sequence[int | None] | None = None,
                   detail: dict[str, Any] | None = None) -> list[Record]:
        """One ``Record(intervention="patch")`` per cell, ``value`` = ``share`` (see the module
        docstring); the normalised effect and the raw logit differences go in ``detail``.
        ``steps`` renumbers the result's steps (the trace's own step indices); ``detail`` is
        merged into every record's detail."""
        out = []
        n = n_steps if n_steps is not None else sum(s is not None for s in self.steps)
        names = self.steps if steps is None else list(steps)
        for si, step in enumerate(names):
            for li in range(len(self.layers)):
                for ci in range(len(self.components)):
                    site, head = self.site(li, ci)
                    eff = float(self.effect[si, li, ci])
                    status, reason, value = "ok", None, float(self.share[si, li, ci])
                    if self.skipped_reason is not None:
                        status, reason, value = "skipped", self.skipped_reason, None
                    if site in self.absent_sites:
                        status, reason, value = "skipped", f"the model has no hook {site}", None
                    elif not math.isfinite(float(self.logit_diff[si, li, ci])):
                        status, reason = "nonfinite", "non-finite logit at the answer position"
                    out.append(Record(
                        trace_id=trace_id, checkpoint=checkpoint, intervention="patch",
                        step=step, n_steps=n, site=site, model=model, answer=answer,
                        answer_logprob=float(self.logprob[si, li, ci]), value=value,
                        status=status, reason=reason,
                        detail={
                            "variant": {"direction": self.direction, "head": head,
                                        "kind": "step" if step is not None else "answer_pos"},
                            "method": self.method,
                            "span": list(self.spans[si]),
                            "logit_diff": float(self.logit_diff[si, li, ci]),
                            "answer_logprob": float(self.logprob[si, li, ci]),
                            "effect": eff if math.isfinite(eff) else None,
                            "effect_logprob": float(self.effect_logprob[si, li, ci]),
                            "clean_logit_diff": self.clean_logit_diff,
                            "corrupted_logit_diff": self.corrupted_logit_diff,
                            "clean_logprob": self.clean_logprob,
                            "corrupted_logprob": self.corrupted_logprob,
                            **(detail or {}),
                        },
                    ))
        return out


def _normalise(patched: Tensor, clean: float, corrupted: float) -> Tensor:
    den = corrupted - clean
    if abs(den) < _ZERO_DENOMINATOR:
        return torch.full_like(patched, float("nan"))
    return (patched - clean) / den


def _make_result(direction: str, method: str, steps: list[int | None], spans: list[Span],
                 layers: list[int], comps: list[str], diff: Tensor, logprob: Tensor,
                 clean: tuple[float, float], corrupted: tuple[float, float]) -> PatchResult:
    reason = None
    if not clean[0] >= MIN_CLEAN_LOGIT_DIFF:
        reason = (f"the clean run prefers the answer over the alternative by a logit difference "
                  f"of {clean[0]:.3g} (under {MIN_CLEAN_LOGIT_DIFF}): no share of it to measure")
    moved = clean[0] - diff if direction == "noising" else diff - corrupted[0]
    return PatchResult(
        direction=direction, method=method, steps=steps, spans=spans, layers=layers,
        components=comps, effect=_normalise(diff, clean[0], corrupted[0]),
        share=moved / clean[0] if reason is None else torch.full_like(diff, float("nan")),
        effect_logprob=_normalise(logprob, clean[1], corrupted[1]), logit_diff=diff,
        logprob=logprob, clean_logit_diff=clean[0], corrupted_logit_diff=corrupted[0],
        clean_logprob=clean[1], corrupted_logprob=corrupted[1], skipped_reason=reason,
    )


# --------------------------------------------------------------------------------------------
# Validation


def _check_tokens(tokens: Tensor, what: str) -> Tensor:
    if tokens.ndim == 1:
        tokens = tokens[None]  # [pos] -> [1, pos]
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise FaithprobeError(
            f"expected token ids of shape [1, pos] or [pos], got {tuple(tokens.shape)}", source=what
        )
    return tokens


def _check_spans(spans: Sequence[Span], corrupted_spans: Sequence[Span] | None, n_clean: int,
                 n_corrupted: int) -> list[Span]:
    spans = [(int(s), int(e)) for s, e in spans]
    cspans = spans if corrupted_spans is None else [(int(s), int(e)) for s, e in corrupted_spans]
    if len(cspans) != len(spans):
        raise FaithprobeError(
            f"clean trace has {len(spans)} step spans, corrupted trace {len(cspans)}",
            source="corrupted_spans",
        )
    for i, ((s, e), (cs, ce)) in enumerate(zip(spans, cspans)):
        if e - s != ce - cs:
            raise FaithprobeError(
                f"step {i} spans {e - s} tokens in the clean trace and {ce - cs} tokens in the "
                "corrupted trace; span patching needs equal lengths (use patch_answer_positions "
                "for edits that change the length)", source="spans", field=f"step {i}",
            )
        if not (0 <= s < e <= n_clean) or not (0 <= cs < ce <= n_corrupted):
            raise FaithprobeError(
                f"step {i} span [{s}, {e}) / [{cs}, {ce}) is empty or outside the sequence "
                f"(lengths {n_clean} / {n_corrupted})", source="spans", field=f"step {i}",
            )
        if (s, e) != (cs, ce):
            raise FaithprobeError(
                f"step {i} sits at [{s}, {e}) in the clean trace and [{cs}, {ce}) in the "
                "corrupted trace; span patching needs the same positions",
                source="spans", field=f"step {i}",
            )
    if n_clean != n_corrupted:
        raise FaithprobeError(
            f"clean and corrupted token sequences differ in length ({n_clean} vs "
            f"{n_corrupted}); use patch_answer_positions", source="corrupted_tokens",
        )
    return spans


def _check_answer(answer: Answer, n_pos: int, first_patched: int) -> None:
    for p in answer.positions:
        if not 0 <= p < n_pos:
            raise FaithprobeError(f"answer position {p} is outside the sequence of {n_pos}",
                                  source="answer")
        if p < first_patched:
            raise FaithprobeError(
                f"answer position {p} lies before patched position {first_patched}: "
                "the patch cannot reach it", source="answer")


def _components(bridge: Any, components: Sequence[str], heads: bool) -> list[str]:
    for c in components:
        if c not in COMPONENTS:
            raise FaithprobeError(f"unknown component {c!r} (known: {', '.join(COMPONENTS)})",
                                  source="components")
    comps = list(components)
    if heads:
        comps += [f"z.{h}" for h in range(bridge.cfg.n_heads)]
    return comps


def _site_name(layer: int, comp: str) -> str:
    return hook_name(layer, "z" if comp.startswith("z.") else comp)


# --------------------------------------------------------------------------------------------
# Hook plumbing


def _collect(bridge: Any, tokens: Tensor, names: Sequence[str]
             ) -> tuple[Tensor, dict[str, Tensor]]:
    """One forward; activations keyed by the names WE registered (``hook.name`` may alias)."""
    store: dict[str, Tensor] = {}

    def saver(name: str) -> Callable[..., Tensor]:
        def fn(act: Tensor, *, hook: Any) -> Tensor:
            store[name] = act.detach()
            return act
        return fn

    with bridge.hooks(fwd_hooks=[(n, saver(n)) for n in names]):
        logits = bridge(tokens)
    return logits, store


def _span_setter(source: Tensor, s: int, e: int, head: int | None, offset: int = 0,
                 rows: Sequence[int] | None = None) -> Callable[..., Tensor]:
    """Hook writing ``source[:, s:e]`` (absolute positions) into positions ``s-offset:e-offset``."""
    def fn(act: Tensor, *, hook: Any) -> Tensor:
        act = act.clone()
        sel = slice(None) if rows is None else list(rows)
        src = source[:, s:e].to(act.dtype)
        if head is None:
            act[sel, s - offset:e - offset] = src
        else:
            act[sel, s - offset:e - offset, head] = src[:, :, head]
        return act
    return fn


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


def _supports_prefix(bridge: Any) -> bool:
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


class _SuffixRunner:
    """Runs the bridge's blocks from layer k on positions ``start:`` of one fixed sequence.

    Each block is called with the arguments it received in the bridge's own forward on that
    suffix (mask, rotary embeddings, position ids), with two substitutions: the hidden states
    (the first positional argument, or ``hidden_states=``) and any KV cache object, wherever
    it was passed, which becomes a read-only view of the prefix's keys and values.
    """

    def __init__(self, bridge: Any, tokens: Tensor, start: int) -> None:
        self.bridge, self.start = bridge, start
        self.kv: list[tuple[Tensor, Tensor]] | None = None
        cache = None
        if start > 0:
            _, cache = bridge(tokens[:, :start], return_type="logits_and_cache")
            self.kv = _key_values(cache)
        if self.kv is not None:
            with _capture_block_inputs(bridge) as captured:
                bridge(tokens[:, start:], past_key_values=cache)
        else:  # no prefix, or a cache that is not plain keys and values: every position runs
            self.start = 0
            with _capture_block_inputs(bridge) as captured:
                bridge(tokens)
        self.inputs = captured
        for k, (args, kwargs) in captured.items():
            if not args and "hidden_states" not in kwargs:
                raise FaithprobeError(f"block {k} receives no hidden states the fast path can "
                                      "replace", source="patching")

    def __len__(self) -> int:
        return len(self.inputs)

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


# --------------------------------------------------------------------------------------------
# Step-span patching


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
    direction: str = "noising",
    method: str = "fast",
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
    clean_tokens = _check_tokens(clean_tokens, "clean_tokens")
    corrupted_tokens = _check_tokens(corrupted_tokens, "corrupted_tokens")
    spans = _check_spans(spans, corrupted_spans, clean_tokens.shape[1], corrupted_tokens.shape[1])
    if direction not in ("noising", "denoising"):
        raise FaithprobeError(f"direction must be noising or denoising, got {direction!r}",
                              source="direction")
    if method not in ("fast", "reference"):
        raise FaithprobeError(f"method must be fast or reference, got {method!r}",
                              source="method")
    for i, (s, _) in enumerate(spans):
        try:
            _check_answer(answer, clean_tokens.shape[1], s)
        except FaithprobeError as exc:
            raise FaithprobeError(exc.message, source="answer", field=f"step {i}") from None
    layers = list(range(bridge.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    comps = _components(bridge, components, heads)
    base, src = ((clean_tokens, corrupted_tokens) if direction == "noising"
                 else (corrupted_tokens, clean_tokens))
    available = set(bridge.hook_dict)
    absent = sorted({_site_name(lyr, c) for lyr in layers for c in comps} - available)
    cells = [(li, ci) for li in range(len(layers)) for ci in range(len(comps))
             if _site_name(layers[li], comps[ci]) in available]
    names = sorted({_site_name(layers[li], comps[ci]) for li, ci in cells}
                   | ({hook_name(k, "resid_pre") for k in range(bridge.cfg.n_layers)}
                      if method == "fast" else set()))
    final = _FINAL_NORM_IN if _FINAL_NORM_IN in available else _UNEMBED_IN
    if method == "fast" and final in available:
        names.append(final)
    with torch.no_grad():
        base_logits, base_cache = _collect(bridge, base, names)
        src_logits, src_cache = _collect(bridge, src, names)
        m_base = [float(v[0]) for v in _metrics_full(base_logits, answer)]
        m_src = [float(v[0]) for v in _metrics_full(src_logits, answer)]
        clean, corrupted = (m_base, m_src) if direction == "noising" else (m_src, m_base)
        # [metric, step, layer, comp]; a site the model does not have stays NaN
        grid = torch.full((2, len(spans), len(layers), len(comps)), float("nan"))
        if method == "reference":
            for i, (s, e) in enumerate(spans):
                for li, ci in cells:
                    c = comps[ci]
                    head = int(c[2:]) if c.startswith("z.") else None
                    name = _site_name(layers[li], c)
                    fn = _span_setter(src_cache[name], s, e, head)
                    logits = bridge.run_with_hooks(base, fwd_hooks=[(name, fn)])
                    d, lp = _metrics_full(logits, answer)
                    grid[:, i, li, ci] = torch.stack([d[0], lp[0]])
        else:
            _check_head(bridge, base_cache, base_logits, answer)
            reuse = _supports_prefix(bridge) if prefix_reuse is None else prefix_reuse
            cells.sort(key=lambda c: layers[c[0]])
            for i, (s, e) in enumerate(spans):
                runner = _SuffixRunner(bridge, base, s if reuse else 0)
                size = batch_size or len(cells)
                for at in range(0, len(cells), size):
                    chunk = cells[at:at + size]
                    d, lp = _run_staggered(runner, chunk, layers, comps, base_cache, src_cache,
                                           (s, e), answer)
                    for (li, ci), dv, lv in zip(chunk, d, lp):
                        grid[:, i, li, ci] = torch.stack([dv, lv])
    result = _make_result(direction, method, list(range(len(spans))), spans, layers, comps,
                          grid[0], grid[1], (clean[0], clean[1]), (corrupted[0], corrupted[1]))
    result.absent_sites = tuple(absent)
    return result


def _head(bridge: Any, x: Float[Tensor, "batch pos d_model"]) -> Tensor:
    """The final norm (where the family has one) and the unembedding."""
    if _FINAL_NORM_IN in bridge.hook_dict:
        x = bridge.ln_final(x)
    return bridge.unembed(x)


def _check_head(bridge: Any, base_cache: dict[str, Tensor], base_logits: Tensor,
                answer: Answer) -> None:
    """The fast path ends with the final norm and the unembedding: refuse a model whose output
    head is more than that (a logit scale, an extra projection), where it would be silently
    off."""
    final = base_cache.get(_FINAL_NORM_IN, base_cache.get(_UNEMBED_IN))
    if final is None:
        raise FaithprobeError(f"the model has neither {_FINAL_NORM_IN} nor {_UNEMBED_IN}: the "
                              "fast path cannot finish the forward", source="patching")
    positions = list(answer.positions)
    ours = _head(bridge, final[:, positions]).float()
    theirs = base_logits[:, positions].float()
    tol = _tolerance(bridge) * max(1.0, float(theirs.abs().max()))
    if not torch.allclose(ours, theirs, atol=tol, rtol=0.0):
        raise FaithprobeError(
            "the model's output head is more than its final norm and unembedding (logits "
            f"differ by {float((ours - theirs).abs().max()):.3g}): the fast path cannot finish "
            "the forward", source="patching")


def _tolerance(bridge: Any) -> float:
    """Relative agreement expected between two exact computations in the model's dtype."""
    dtype = next(bridge.parameters()).dtype
    return 1e-4 if dtype in (torch.float32, torch.float64) else 5e-2



@dataclass(frozen=True)
class FastPath:
    """How to patch one model, decided by :func:`check_fast_path`."""

    method: str  # "fast" or "reference"
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
    tol = _tolerance(bridge) if tol is None else tol
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


def _run_staggered(runner: _SuffixRunner, chunk: list[tuple[int, int]], layers: list[int],
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
                    name = _site_name(k, c)
                    hooks.append((name, _span_setter(src_cache[name], s, e, head, off,
                                                     [row0 + r])))
            x = rows if x is None else torch.cat([x, rows], dim=0)
        if x is None:
            continue
        with runner.bridge.hooks(fwd_hooks=hooks):
            x = runner.block(k, x)
    assert x is not None
    return answer_metrics(runner.logits(x, answer.positions), answer)


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
    direction: str = "noising",
) -> PatchResult:
    """Patch the last ``n_positions`` positions (aligned from the end), per layer/component.

    ``answer`` is given in clean coordinates; in the corrupted run it is shifted by the length
    difference. ``n_positions`` defaults to the positions from the first answer position to the
    end of the clean sequence (the forced-answer positions). One forward per cell.
    """
    clean_tokens = _check_tokens(clean_tokens, "clean_tokens")
    corrupted_tokens = _check_tokens(corrupted_tokens, "corrupted_tokens")
    n_c, n_x = clean_tokens.shape[1], corrupted_tokens.shape[1]
    _check_answer(answer, n_c, 0)
    n = n_c - min(answer.positions) if n_positions is None else int(n_positions)
    if not 0 < n <= min(n_c, n_x):
        raise FaithprobeError(f"cannot patch the last {n} positions of sequences of {n_c} and "
                              f"{n_x} tokens", source="n_positions")
    layers = list(range(bridge.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    comps = _components(bridge, components, False)
    answers = {"clean": answer, "corrupted": answer.shifted(n_x - n_c)}
    runs = {"clean": clean_tokens, "corrupted": corrupted_tokens}
    base_key, src_key = (("clean", "corrupted") if direction == "noising"
                         else ("corrupted", "clean"))
    names = [hook_name(lyr, c) for lyr in layers for c in comps]
    with torch.no_grad():
        base_logits, _ = _collect(bridge, runs[base_key], [])
        src_logits, src_cache = _collect(bridge, runs[src_key], names)
        m_base = [float(v[0]) for v in _metrics_full(base_logits, answers[base_key])]
        m_src = [float(v[0]) for v in _metrics_full(src_logits, answers[src_key])]
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
                d, lp = _metrics_full(logits, answers[base_key])
                grid[:, 0, li, ci] = torch.stack([d[0], lp[0]])
    return _make_result(direction, "reference", [None], [(n_c - n, n_c)], layers, comps,
                        grid[0], grid[1], (clean[0], clean[1]), (corrupted[0], corrupted[1]))


# --------------------------------------------------------------------------------------------
# Attention knockout and the attention baseline


@dataclass
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

    def to_records(self, trace_id: str, checkpoint: str, *, model: str | None = None
                   ) -> list[Record]:
        """``intervention="attn_knockout"`` records; ``value`` = change in logit difference."""
        sites = [hook_name(k, "z").replace("hook_z", "hook_pattern") for k in self.layers]
        return [Record(
            trace_id=trace_id, checkpoint=checkpoint, intervention="attn_knockout", step=i,
            n_steps=len(self.spans), site=sites[0] if len(sites) == 1 else None, model=model,
            answer_logprob=float(self.logprob[i]), kl=float(self.kl[i]),
            value=float(self.logit_diff[i]) - self.clean_logit_diff,
            detail={"variant": {"renormalise": self.renormalise, "layers": list(self.layers)},
                    "sites": sites, "span": list(self.spans[i]),
                    "logit_diff": float(self.logit_diff[i]),
                    "clean_logit_diff": self.clean_logit_diff,
                    "clean_logprob": self.clean_logprob},
        ) for i in range(len(self.spans))]


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
    tokens = _check_tokens(tokens, "tokens")
    spans = _check_spans(spans, None, tokens.shape[1], tokens.shape[1])
    _check_answer(answer, tokens.shape[1], 0)
    layers = list(range(bridge.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    names = [f"blocks.{k}.attn.hook_pattern" for k in layers]
    out = torch.zeros(3, len(spans))  # [logit_diff / logprob / kl, step]
    with torch.no_grad():
        clean_logits = bridge(tokens)
        cd, clp = _metrics_full(clean_logits, answer)
        p0 = torch.log_softmax(clean_logits[0, answer.positions[0]].float(), -1)
        for i, (s, e) in enumerate(spans):
            hook = _knockout_hook(s, e, renormalise)
            logits = bridge.run_with_hooks(tokens, fwd_hooks=[(n, hook) for n in names])
            d, lp = _metrics_full(logits, answer)
            p1 = torch.log_softmax(logits[0, answer.positions[0]].float(), -1)
            out[:, i] = torch.stack([d[0], lp[0], (p0.exp() * (p0 - p1)).sum()])
    return KnockoutResult(list(spans), layers, renormalise, out[0], out[1], out[2],
                          float(cd[0]), float(clp[0]))


def attention_to_steps(
    bridge: Any, tokens: Int[Tensor, "1 pos"], spans: Sequence[Span], positions: Sequence[int]
) -> Float[Tensor, "layer step"]:
    """Attention the answer position(s) pay to each step: summed over the step's keys,
    averaged over heads and answer positions. ``.mean(0)`` averages over layers."""
    tokens = _check_tokens(tokens, "tokens")
    names = [f"blocks.{k}.attn.hook_pattern" for k in range(bridge.cfg.n_layers)]
    with torch.no_grad():
        _, cache = _collect(bridge, tokens, names)
    out = torch.zeros(len(names), len(spans))
    for k, n in enumerate(names):
        pat = cache[n][0][:, list(positions)].float()  # [head, n_answer, key_pos]
        for i, (s, e) in enumerate(spans):
            out[k, i] = pat[:, :, s:e].sum(-1).mean()
    return out
