"""Shared pieces of the activation stage: hook names, the answer read-out, the patch result,
input checks and hook plumbing. Tensor-level: nothing here knows traces or records.

The answer's logit difference LD (original answer token minus alternative) and log-probability
are read at the answer position(s). A patch result keeps two normalisations: ``share``, the share
of the clean run's logit difference that the patch removes (noising,
``(LD_clean - LD_patched) / LD_clean``) or restores (denoising,
``(LD_patched - LD_corrupted) / LD_clean``), defined whenever the clean run prefers the answer
(``LD_clean >= MIN_CLEAN_LOGIT_DIFF``), also where corruption moves nothing; and
TransformerLens' ``effect = (m_patched - m_clean) / (m_corrupted - m_clean)`` (0 = clean
behaviour, 1 = corrupted), a ratio that is undefined, and noisy, where corruption barely moves
the answer.

Which run a step's cells are patched from (noising) or into (denoising) is ``corrupted``:
``each`` (the default) corrupts that step alone, so the run differs from the clean one only in
the step's tokens and every cell of the step, at every layer, measures that one step; ``all``
corrupts every patched step at once, one run for the whole grid, so at a layer L > 0 the
activations over step i were computed attending to the other corrupted steps too. Layer 0's
``resid_pre`` is the same under both (a token's layer-0 residual depends on that token alone).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from faithprobe.errors import FaithprobeError

__all__ = [
    "COMPONENTS",
    "CORRUPTIONS",
    "FINAL_NORM_IN",
    "MIN_CLEAN_LOGIT_DIFF",
    "MIN_CLEAN_LOGIT_DIFF_BY_DTYPE",
    "Answer",
    "Corruption",
    "Direction",
    "Method",
    "PatchResult",
    "Span",
    "UNEMBED_IN",
    "GridInputs",
    "answer_metrics",
    "check_answer",
    "check_grid",
    "check_spans",
    "check_tokens",
    "collect",
    "hook_name",
    "keep_kwargs",
    "make_result",
    "metrics_at",
    "min_clean_logit_diff",
    "resolve_components",
    "site_name",
    "span_setter",
    "tolerance",
]

COMPONENTS = ("resid_pre", "attn_out", "mlp_out")
HOOK_SUFFIX = {
    "resid_pre": "hook_resid_pre",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "z": "attn.hook_z",
}
# The last block's output, where the fast path's head starts: the final norm's input, or the
# unembedding's where a family has no final norm (GPT-1).
FINAL_NORM_IN, UNEMBED_IN = "ln_final.hook_in", "unembed.hook_in"
ZERO_DENOMINATOR = 1e-6  # |m_corrupted - m_clean| below this: effect undefined, cells skipped
# The clean run must prefer the answer over the alternative by this logit margin (62% against
# 38% between the two) for a share of that margin to mean anything.
MIN_CLEAN_LOGIT_DIFF = 0.5
# The margin per dtype of the model's weights (the unembedding runs in float32 in every one,
# faithprobe.models.precision): in half precision the margin must also clear the rounding of
# the run itself. bfloat16 keeps 8 significant bits: over SmolLM2's patching grid a bfloat16
# run's logit differences, clean and patched, lie up to 0.224 from float32's (tests/test_bf16.py
# prints it), so 0.5 more, about twice that, and a clean run bfloat16 accepts float32 accepts.
# float16 keeps 11 bits, an eighth of that rounding: 0.1 more.
MIN_CLEAN_LOGIT_DIFF_BY_DTYPE = {"float32": MIN_CLEAN_LOGIT_DIFF, "float64": MIN_CLEAN_LOGIT_DIFF,
                                 "bfloat16": 1.0, "float16": 0.6}

Span = tuple[int, int]  # half-open [start, end) token positions


Direction = Literal["noising", "denoising"]
Method = Literal["fast", "reference", "attribution"]
# the run a step is patched from/into: that step alone corrupted, or every step at once
Corruption = Literal["each", "all"]
CORRUPTIONS: tuple[Corruption, ...] = ("each", "all")


def hook_name(layer: int, component: str) -> str:
    """Full hook name of a component (``resid_pre``, ``attn_out``, ``mlp_out``, ``z``)."""
    return f"blocks.{layer}.{HOOK_SUFFIX[component]}"


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


def metrics_at(logits: Float[Tensor, "batch pos vocab"], answer: Answer
                  ) -> tuple[Tensor, Tensor]:
    return answer_metrics(logits[:, list(answer.positions)], answer)


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class PatchResult:
    """A patching grid and its baselines; ``effect[s, l, c]`` is NaN where skipped.

    ``components`` labels the last axis: ``resid_pre``, ``attn_out``, ``mlp_out`` or ``z.<h>``
    (head h of ``attn.hook_z``). ``steps`` holds step indices (``None`` for answer-position
    patching). The corrupted baselines are per step: under ``corrupted="each"`` step i's cells
    are patched from (noising) or into (denoising) the run with step i alone corrupted, whose
    metrics are ``corrupted_logit_diff[i]`` and ``corrupted_logprob[i]``; under ``"all"`` every
    entry is the one all-steps-corrupted run's.
    """

    direction: Direction  # noising: corrupted -> clean run; denoising: clean -> corrupted
    method: Method
    corrupted: Corruption  # each: step i's own corrupted run; all: every step corrupted at once
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
    corrupted_logit_diff: Float[Tensor, " step"]  # of the run each step is patched from/into
    clean_logprob: float
    corrupted_logprob: Float[Tensor, " step"]
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


def normalise(patched: Float[Tensor, "step layer comp"], clean: float,
              corrupted: Float[Tensor, " step"]) -> Float[Tensor, "step layer comp"]:
    den = (corrupted - clean)[:, None, None]  # [step, 1, 1]
    out = (patched - clean) / den
    return out.masked_fill(den.abs() < ZERO_DENOMINATOR, float("nan"))


def min_clean_logit_diff(dtype: torch.dtype) -> float:
    """The clean run's least logit difference for a share of it to be measured, in a model
    whose weights are ``dtype`` (:data:`MIN_CLEAN_LOGIT_DIFF_BY_DTYPE`)."""
    return MIN_CLEAN_LOGIT_DIFF_BY_DTYPE.get(str(dtype).replace("torch.", ""),
                                             max(MIN_CLEAN_LOGIT_DIFF_BY_DTYPE.values()))


def make_result(direction: Direction, method: Method, steps: list[int | None], spans: list[Span],
                 layers: list[int], comps: list[str], diff: Tensor, logprob: Tensor,
                 clean: tuple[float, float],
                 corrupted: tuple[float | Sequence[float], float | Sequence[float]],
                 absent_sites: Sequence[str] = (), corruption: Corruption = "all",
                 min_clean: float = MIN_CLEAN_LOGIT_DIFF) -> PatchResult:
    """A :class:`PatchResult`; ``corrupted`` holds the corrupted run's logit difference and
    log-probability, one number (the run of every step) or one per step; ``min_clean``: the
    clean margin the share needs (:func:`min_clean_logit_diff` of the model's dtype)."""
    reason = None
    if not clean[0] >= min_clean:
        reason = (f"the clean run prefers the answer over the alternative by a logit difference "
                  f"of {clean[0]:.3g} (under {min_clean}): no share of it to measure")
    bad_diff, bad_logprob = (torch.as_tensor(v, dtype=diff.dtype).expand(len(steps)).clone()
                             for v in corrupted)  # [step]
    moved = clean[0] - diff if direction == "noising" else diff - bad_diff[:, None, None]
    return PatchResult(
        direction=direction, method=method, corrupted=corruption, steps=steps, spans=spans,
        layers=layers, components=comps, effect=normalise(diff, clean[0], bad_diff),
        share=moved / clean[0] if reason is None else torch.full_like(diff, float("nan")),
        effect_logprob=normalise(logprob, clean[1], bad_logprob), logit_diff=diff,
        logprob=logprob, clean_logit_diff=clean[0], corrupted_logit_diff=bad_diff,
        clean_logprob=clean[1], corrupted_logprob=bad_logprob, skipped_reason=reason,
        absent_sites=tuple(absent_sites),
    )


# --------------------------------------------------------------------------------------------
# Checks


def check_tokens(tokens: Tensor, what: str) -> Tensor:
    if tokens.ndim == 1:
        tokens = tokens[None]  # [pos] -> [1, pos]
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise FaithprobeError(
            f"expected token ids of shape [1, pos] or [pos], got {tuple(tokens.shape)}", source=what
        )
    return tokens


def check_spans(spans: Sequence[Span], corrupted_spans: Sequence[Span] | None, n_clean: int,
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


def check_answer(answer: Answer, n_pos: int, first_patched: int) -> None:
    for p in answer.positions:
        if not 0 <= p < n_pos:
            raise FaithprobeError(f"answer position {p} is outside the sequence of {n_pos}",
                                  source="answer")
        if p < first_patched:
            raise FaithprobeError(
                f"answer position {p} lies before patched position {first_patched}: "
                "the patch cannot reach it", source="answer")


@dataclass(frozen=True)
class GridInputs:
    """The checked inputs of a step x layer x component grid, and which run is patched."""

    clean: Tensor  # [1, pos]
    corrupted: Tensor  # [1, pos], every step corrupted
    spans: list[Span]
    layers: list[int]
    components: list[str]
    base: Tensor  # the run that is patched (clean when noising), every step corrupted
    src: Tensor  # the run the patched activations come from
    direction: Direction = "noising"
    corruption: Corruption = "all"

    def one_step(self, i: int) -> Int[Tensor, "1 pos"]:
        """The clean tokens with step i's span taken from the corrupted ones: that step alone
        corrupted."""
        s, e = self.spans[i]
        out = self.clean.clone()
        out[:, s:e] = self.corrupted[:, s:e]
        return out

    def corrupted_run(self, i: int) -> Int[Tensor, "1 pos"]:
        """The corrupted input step i is patched from or into under ``corruption``."""
        return self.one_step(i) if self.corruption == "each" else self.corrupted

    def pair(self, i: int) -> tuple[Tensor, Tensor]:
        """(base, src) of step i: the run patched and the run its activations come from."""
        if self.corruption == "all":
            return self.base, self.src
        bad = self.one_step(i)
        return (self.clean, bad) if self.direction == "noising" else (bad, self.clean)


def check_grid(bridge: Any, clean_tokens: Tensor, corrupted_tokens: Tensor,
               spans: Sequence[Span], corrupted_spans: Sequence[Span] | None,
               layers: Sequence[int] | None, components: Sequence[str], heads: bool,
               direction: str, corruption: str = "all") -> GridInputs:
    """Shared checks of :func:`~faithprobe.activation.patching.patch_steps` and
    :func:`~faithprobe.activation.attribution.attribution_patch_steps` (the answer is checked
    by each, against the positions it patches)."""
    clean = check_tokens(clean_tokens, "clean_tokens")
    corrupted = check_tokens(corrupted_tokens, "corrupted_tokens")
    checked = check_spans(spans, corrupted_spans, clean.shape[1], corrupted.shape[1])
    if direction not in ("noising", "denoising"):
        raise FaithprobeError(f"direction must be noising or denoising, got {direction!r}",
                              source="direction")
    if corruption not in CORRUPTIONS:
        raise FaithprobeError(f"corrupted must be {' or '.join(CORRUPTIONS)}, got "
                              f"{corruption!r}", source="corrupted")
    chosen = list(range(bridge.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    base, src = (clean, corrupted) if direction == "noising" else (corrupted, clean)
    return GridInputs(clean, corrupted, checked, chosen,
                      resolve_components(bridge, components, heads), base, src,
                      direction, corruption)  # type: ignore[arg-type]


def resolve_components(bridge: Any, components: Sequence[str], heads: bool) -> list[str]:
    for c in components:
        if c not in COMPONENTS:
            raise FaithprobeError(f"unknown component {c!r} (known: {', '.join(COMPONENTS)})",
                                  source="components")
    comps = list(components)
    if heads:
        comps += [f"z.{h}" for h in range(bridge.cfg.n_heads)]
    return comps


def site_name(layer: int, comp: str) -> str:
    return hook_name(layer, "z" if comp.startswith("z.") else comp)


# --------------------------------------------------------------------------------------------
# Hook plumbing


def keep_kwargs(bridge: Any, keep: Sequence[int] | None, device: Any) -> dict[str, Any]:
    """The forward argument that unembeds only the positions ``keep`` (``logits_to_keep``,
    where the wrapped Hugging Face model takes it; nothing elsewhere or without ``keep``): a
    1,000-token run then skips 999 rows of the unembedding and their vocabulary-wide logits."""
    model = getattr(bridge, "original_model", None)
    try:
        takes = model is not None and \
            "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        takes = False
    if keep is None or not takes:
        return {}
    return {"logits_to_keep": torch.tensor(list(keep), dtype=torch.long, device=device)}


def collect(bridge: Any, tokens: Tensor, names: Sequence[str], *,
            keep: Sequence[int] | None = None, **forward: Any
            ) -> tuple[Tensor, dict[str, Tensor]]:
    """One forward (``forward``: the bridge's keyword arguments, e.g. ``past_key_values``);
    activations keyed by the names WE registered (``hook.name`` may alias). With ``keep``
    (positions of ``tokens``) the logits returned are those at ``keep`` alone,
    ``[batch, len(keep), vocab]``, and only those positions are unembedded where the model
    allows it (not when the unembedding's own input is collected: it must see every
    position)."""
    store: dict[str, Tensor] = {}

    def saver(name: str) -> Callable[..., Tensor]:
        def fn(act: Tensor, *, hook: Any) -> Tensor:
            store[name] = act.detach()
            return act
        return fn

    kept = {} if UNEMBED_IN in names else keep_kwargs(bridge, keep, tokens.device)
    with bridge.hooks(fwd_hooks=[(n, saver(n)) for n in names]):
        logits = bridge(tokens, **forward, **kept)
    if keep is not None and not kept:
        logits = logits[:, list(keep)]
    return logits, store


def span_setter(source: Tensor, s: int, e: int, head: int | None, offset: int = 0,
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


def tolerance(bridge: Any) -> float:
    """Relative agreement expected between two exact computations in the model's dtype."""
    dtype = next(bridge.parameters()).dtype
    return 1e-4 if dtype in (torch.float32, torch.float64) else 5e-2



