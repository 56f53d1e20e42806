"""Unlearning one text from a checkpoint's weights, and putting the weights back exactly.

The parametric test of a step (FUR, Tutek et al. 2025) trains a few of the model's weights to
forget the step, asks the question again, then restores the weights. This module holds the
tensor half; :mod:`faithprobe.stages.unlearn` turns it into records.

- :func:`select_params`: the weights that may change, by name. The default group ``mlp_out``
  is each layer's MLP output projection (``mlp.fc_out``, ``mlp.down_proj``, ``mlp.c_proj``...,
  weights only), the FF2 matrices FUR trains; other groups are ``mlp`` (every MLP weight),
  ``attn_out`` and ``all``; anything else is a shell pattern over the parameter names with
  TransformerBridge's ``._original_component`` parts removed (``layers.3.mlp.*``).
- :func:`gradient_problem`: why a checkpoint cannot take gradients on those weights (quantized,
  frozen, inference tensors, no gradient reaching them), or None.
- :func:`unlearning`: a context manager that copies the chosen weights (and only those) on
  entry and copies them back on exit, bit for bit, whatever happens inside; every other
  parameter is kept from gradients meanwhile.
- :func:`npo_kl_unlearn`: NPO on the forget text's tokens with a KL term to the original model
  on retain sequences (FUR's ``npo_KL``): per epoch one optimizer step on
  ``-(2 / beta) * logsigmoid(-beta * (logp_now - logp_ref)) + kl_coeff * KL(ref || now)``,
  where ``logp`` is the forget tokens' summed log-likelihood and the KL is the mean over the
  retain sequence's positions of the full next-token distributions' KL; AdamW, the learning
  rate decaying linearly to 0 over the epochs, one retain sequence an epoch in turn. The
  reference quantities are computed once with the original weights, so no second copy of the
  model is kept. The model stays in eval mode (no dropout): the same inputs unlearn the same.
- :func:`weights_digest`: a SHA-256 over every parameter and buffer, in name order: the proof
  that a restore was exact.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from faithprobe.errors import FaithprobeError
from faithprobe.models.precision import was_trainable

__all__ = ["MLP_OUT", "PARAM_GROUPS", "Forget", "UnlearnLog", "clean_name", "gradient_problem",
           "gradients_only", "npo_kl_unlearn", "select_params", "sequence_logprob", "unlearning",
           "weights_digest"]

# the MLP output projection's module name in the architectures TransformerBridge wraps
MLP_OUT = ("mlp.fc_out", "mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2",
           "mlp.out_proj", "mlp.w2", "mlp.wo")
_ATTN_OUT = ("attn.o", "self_attn.o_proj", "attn.c_proj", "self_attention.dense",
             "attention.dense", "attn.out_proj", "self_attn.dense")
PARAM_GROUPS = ("mlp_out", "mlp", "attn_out", "all")


def clean_name(name: str) -> str:
    """A parameter's name without TransformerBridge's ``._original_component`` parts."""
    return name.replace("._original_component", "")


def _in_group(group: str, name: str) -> bool:
    if group == "all":
        return True
    if not name.endswith(".weight"):
        return False
    module = name[: -len(".weight")]
    if group == "mlp":
        return ".mlp." in f".{module}"
    ends = MLP_OUT if group == "mlp_out" else _ATTN_OUT
    return any(module == e or module.endswith("." + e) for e in ends)


def select_params(bridge: torch.nn.Module, patterns: Sequence[str]
                  ) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters ``patterns`` name (groups or shell patterns, see the module docstring),
    as (clean name, parameter) in the model's order. A pattern that names nothing raises."""
    params = [(clean_name(n), p) for n, p in bridge.named_parameters()]
    chosen: dict[str, torch.nn.Parameter] = {}
    for i, pattern in enumerate(patterns):
        hits = [(n, p) for n, p in params if (_in_group(pattern, n) if pattern in PARAM_GROUPS
                                              else fnmatch.fnmatchcase(n, pattern))]
        if not hits:
            raise FaithprobeError(f"{pattern!r} names no parameter of this model (groups: "
                                  f"{', '.join(PARAM_GROUPS)}; or a pattern over names such "
                                  f"as {params[-1][0]!r})", field=f"unlearn.params[{i}]")
        chosen.update(hits)
    return [(n, p) for n, p in params if n in chosen]


def gradient_problem(bridge: torch.nn.Module, params: Sequence[tuple[str, torch.nn.Parameter]]
                     ) -> str | None:
    """Why ``params`` cannot be trained (one line), or None. Checks each weight's type and
    flags, then runs one forward and backward pass on two tokens and checks that every chosen
    weight got a finite gradient (no weight changes; gradients are cleared)."""
    for name, p in params:
        if not p.dtype.is_floating_point or type(p) is not torch.nn.Parameter:
            kind = str(p.dtype).replace("torch.", "") if not p.dtype.is_floating_point \
                else type(p).__name__
            return (f"{name} is a quantized weight ({kind}): load the checkpoint dequantized "
                    "(a float dtype) to unlearn")
        if p.is_inference():
            return f"{name} was made in inference mode and cannot take gradients"
        if not was_trainable(bridge, p):
            return f"{name} is frozen (requires_grad is false)"
        if p.is_meta:
            return f"{name} has no data (meta device)"
    try:
        with gradients_only(bridge, params), torch.enable_grad():
            device = params[0][1].device
            logits = bridge(torch.zeros((1, 2), dtype=torch.long, device=device))
            logits.float().logsumexp(-1).sum().backward()
            missing = [n for n, p in params if p.grad is None or not bool(
                torch.isfinite(p.grad).all())]
    except Exception as exc:  # noqa: BLE001 - any failure is the reason
        return f"a backward pass fails ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    finally:
        for _, p in params:
            p.grad = None
    if missing:
        return f"no finite gradient reaches {missing[0]}"
    return None


@contextlib.contextmanager
def gradients_only(bridge: torch.nn.Module, params: Sequence[tuple[str, torch.nn.Parameter]]
          ) -> Iterator[None]:
    """Gradients for ``params`` only, for the duration; every flag put back after."""
    chosen = {id(p) for _, p in params}
    flags = [(p, p.requires_grad) for p in bridge.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in chosen)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None


@contextlib.contextmanager
def unlearning(bridge: torch.nn.Module, params: Sequence[tuple[str, torch.nn.Parameter]]
               ) -> Iterator[None]:
    """Copy-on-write of ``params``: inside, they may be trained (and only they take
    gradients); on exit, every one is copied back from its saved copy, bit for bit, and the
    model's training mode and gradient flags are what they were."""
    saved = [p.detach().clone() for _, p in params]
    training = bridge.training
    try:
        with gradients_only(bridge, params):
            yield
    finally:
        with torch.no_grad():
            for (_, p), original in zip(params, saved):
                p.copy_(original)
        bridge.train(training)


def weights_digest(bridge: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    for name, t in sorted(bridge.state_dict(keep_vars=True).items()):
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.contiguous().reshape(-1)
        if flat.numel():
            h.update(flat.view(torch.uint8).cpu().numpy().tobytes()
                     if flat.element_size() and flat.dtype != torch.bool
                     else flat.cpu().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Forget:
    """The text to forget: token ids, and the positions ``[start, end)`` of the tokens whose
    likelihood is pushed down (each predicted from the tokens before it)."""

    ids: tuple[int, ...]
    start: int
    end: int

    def __post_init__(self) -> None:
        if not 1 <= self.start < self.end <= len(self.ids):
            raise FaithprobeError(f"forget span [{self.start}, {self.end}) is not inside "
                                  f"{len(self.ids)} tokens after the first", field="forget")


@dataclass(frozen=True)
class UnlearnLog:
    """What :func:`npo_kl_unlearn` did: the forget tokens' summed log-likelihood before
    (original weights) and after, the loss of each epoch and its two parts, and the passes run
    (``forward`` with gradients, ``backward``, ``reference``: forward passes without)."""

    logprob_before: float
    logprob_after: float
    n_tokens: int
    losses: tuple[float, ...] = ()
    npo: tuple[float, ...] = ()
    kl: tuple[float, ...] = ()
    passes: dict[str, int] = field(default_factory=dict)


def _logits(bridge: torch.nn.Module, ids: Sequence[int], device: torch.device) -> Tensor:
    return bridge(torch.tensor([list(ids)], dtype=torch.long, device=device))[0].float()


def sequence_logprob(bridge: torch.nn.Module, forget: Forget) -> Tensor:
    """Summed log-probability of ``forget``'s span tokens given the tokens before (a scalar
    that carries gradients where they are enabled)."""
    device = next(bridge.parameters()).device
    logits = _logits(bridge, forget.ids[: forget.end], device)
    lp = torch.log_softmax(logits[forget.start - 1: forget.end - 1], dim=-1)
    target = torch.tensor(forget.ids[forget.start: forget.end], device=device)
    return lp.gather(-1, target[:, None]).sum()


def npo_kl_unlearn(bridge: torch.nn.Module, params: Sequence[tuple[str, torch.nn.Parameter]],
                   forget: Forget, retain: Sequence[Sequence[int]], *, epochs: int, lr: float,
                   beta: float = 0.1, kl_coeff: float = 1.0, weight_decay: float = 0.01
                   ) -> UnlearnLog:
    """Train ``params`` to forget ``forget`` (see the module docstring); call it inside
    :func:`unlearning`, which puts the weights back. ``retain``: token sequences, one used an
    epoch in turn (none: NPO alone). The model is left in eval mode."""
    if epochs < 0 or lr < 0:
        raise FaithprobeError("epochs and lr must not be negative", field="unlearn")
    device = next(bridge.parameters()).device
    bridge.eval()
    used = [list(retain[e % len(retain)]) for e in range(min(epochs, len(retain)))] \
        if retain else []
    with torch.no_grad():
        ref_forget = sequence_logprob(bridge, forget)
        ref_retain = [torch.log_softmax(_logits(bridge, ids, device), dim=-1) for ids in used]
    passes = {"forward": 0, "backward": 0, "reference": 1 + len(used)}
    losses, npo_parts, kl_parts = [], [], []
    if epochs and lr > 0:
        weights = [p for _, p in params]
        opt = torch.optim.AdamW(weights, lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: max(0.0, 1.0 - k / epochs))
        for epoch in range(epochs):
            with torch.enable_grad():
                now = sequence_logprob(bridge, forget)
                # NPO: -(2/beta) log sigmoid(beta * (NLL_now - NLL_ref))
                npo = -2.0 / beta * F.logsigmoid(-beta * (now - ref_forget))
                loss = npo
                passes["forward"] += 1
                kl = torch.zeros((), device=device)
                if used:
                    ref = ref_retain[epoch % len(used)]
                    cur = torch.log_softmax(_logits(bridge, used[epoch % len(used)], device),
                                            dim=-1)
                    kl = F.kl_div(cur, ref, reduction="batchmean", log_target=True)
                    loss = npo + kl_coeff * kl
                    passes["forward"] += 1
                opt.zero_grad(set_to_none=True)
                loss.backward()
                passes["backward"] += 1
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            npo_parts.append(float(npo.detach()))
            kl_parts.append(float(kl.detach()))
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        after = sequence_logprob(bridge, forget)
    passes["reference"] += 1
    return UnlearnLog(float(ref_forget), float(after), forget.end - forget.start,
                      tuple(losses), tuple(npo_parts), tuple(kl_parts), passes)
