"""Patching conformance on every architecture family the installed libraries build offline.

Each family of ``zoo.WORKING`` is saved as a Hugging Face folder and loaded with
``load_checkpoint`` as a user would. On it:

- the self-check that guards runs (``check_fast_path``) picks the fast path, or says why not,
  as ``NOT_FAST`` records; whatever it picks equals the reference loop (one full
  ``run_with_hooks`` forward per cell) within 1e-4, for ``resid_pre``, ``attn_out`` and
  ``mlp_out`` (a site the family lacks is NaN in both), noising and denoising, with each step's
  cells patched from (into) its own corrupted run (``corrupted="each"``: the reference runs
  that step's own corrupted input in full) and from the all-steps-corrupted run (``"all"``);
- patching layer 0's ``resid_pre`` over a step's span equals running the text with that step
  alone corrupted (the identity that pins the meaning of a patch), within 1e-4, under both;
- no hook is left behind.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import zoo  # noqa: E402

from faithprobe.activation import (  # noqa: E402
    Answer,
    answer_metrics,
    check_fast_path,
    patch_steps,
)
from faithprobe.models.checkpoints import load_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

T = 24
# steps 0-2 lie past a 4-token sliding window of the answer position; step 3 lies inside it
SPANS = [(2, 6), (7, 10), (12, 17), (18, 21)]
ATOL = RTOL = 1e-4  # torch.allclose: |a - b| <= ATOL + RTOL * |b|


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, zoo.VOCAB, (1, T), generator=g)
    corrupted = clean.clone()
    for s, e in SPANS:
        corrupted[0, s:e] = (clean[0, s:e] + torch.randint(1, zoo.VOCAB, (e - s,), generator=g)
                             ) % zoo.VOCAB
    return clean, corrupted


def hook_state(bridge) -> dict[str, tuple]:
    """Every hook on the model (TransformerLens wires some of its own, permanently)."""
    from transformer_lens.hook_points import HookPoint

    return {name: (len(m.fwd_hooks), len(m.bwd_hooks), len(m._forward_hooks),
                   len(m._forward_pre_hooks)) if isinstance(m, HookPoint) else
            (len(m._forward_hooks), len(m._forward_pre_hooks))
            for name, m in bridge.named_modules()}


# Families the fast path cannot run as is, and what the self-check falls back to (measured
# with transformers 5.23.0 and TransformerLens 4.3). Everything else: the batched fast path.
NOT_FAST = {
    "bloom": "fast, one cell a batch",  # ALiBi biases shaped [batch * heads, 1, key]
    "xglm": "fast, one cell a batch",  # the block checks its mask's batch size
    "cohere": "reference",  # logits scaled after unembed (logit_scale)
    "cohere2": "reference",
    "modernbert_decoder": "reference",  # a dense + norm head before the decoder
    "falcon_h1": "fast, no prefix reuse",  # its cache also holds SSM states
    "zamba2": "fast, one cell a batch",  # hybrid blocks take state shaped for a batch of one
    "nanochat": "reference",  # logits soft-capped after unembed
}
# Families where layer 0's resid_pre is not the only way a token reaches later layers.
IDENTITY_EXEMPT = {"zamba2": "its shared attention blocks also read the embeddings directly"}


def status(fast_path) -> str:
    if fast_path.method == "reference":
        return "reference"
    how = ["fast"]
    if fast_path.batch_size == 1:
        how.append("one cell a batch")
    if fast_path.prefix_reuse is False:
        how.append("no prefix reuse")
    return ", ".join(how)


@pytest.mark.parametrize("arch", zoo.WORKING)
def test_patching_is_exact(arch, tmp_path):
    if "blocks.0.hook_resid_pre" in zoo.HOOKS_MISSING.get(arch, ()):
        pytest.skip(f"{arch}: the bridge exposes no blocks.<L> hook points")
    ckpt = load_checkpoint(str(zoo.build(arch, tmp_path / arch)))
    bridge = ckpt.bridge
    clean, corrupted = inputs()
    with torch.no_grad():
        logits = bridge(clean)[0, T - 1]
        bridge.run_with_cache(clean)  # let the bridge wire its own lazy hooks first
    before = hook_state(bridge)
    answer = Answer.of(T - 1, int(logits.argmax()), int(logits.argmin()))
    fast_path = check_fast_path(bridge)
    assert status(fast_path) == NOT_FAST.get(arch, "fast"), fast_path.reason
    assert (fast_path.reason is None) == (arch not in NOT_FAST)
    for direction, how in [(d, c) for d in ("noising", "denoising") for c in ("each", "all")]:
        kw = dict(direction=direction, corrupted=how)
        ref = patch_steps(bridge, clean, corrupted, SPANS, answer, method="reference", **kw)
        got = patch_steps(bridge, clean, corrupted, SPANS, answer, method=fast_path.method,
                          batch_size=fast_path.batch_size, prefix_reuse=fast_path.prefix_reuse,
                          **kw)
        close = dict(atol=ATOL, rtol=RTOL, equal_nan=True)
        assert torch.allclose(got.logit_diff, ref.logit_diff, **close), (
            arch, direction, how,
            (got.logit_diff - ref.logit_diff).abs().nan_to_num().max().item())
        assert torch.allclose(got.logprob, ref.logprob, **close), (arch, direction, how)
        assert torch.allclose(got.corrupted_logit_diff, ref.corrupted_logit_diff, **close), arch
        assert not ref.logit_diff[:, :, 0].isnan().any()  # resid_pre exists everywhere
        if direction == "noising" and arch not in IDENTITY_EXEMPT:
            moved = (ref.logit_diff - ref.clean_logit_diff).nan_to_num().abs().max().item()
            assert moved > 1e-3, f"{arch}: no patch moves the answer, the test would be vacuous"
            # layer 0 resid_pre over step i == the text with step i alone corrupted
            for i, (s, e) in enumerate(SPANS):
                one = clean.clone()
                one[0, s:e] = corrupted[0, s:e]
                with torch.no_grad():
                    want, _ = answer_metrics(bridge(one)[:, [T - 1]], answer)
                for result in (got, ref):
                    value, expected = float(result.logit_diff[i, 0, 0]), float(want[0])
                    assert abs(value - expected) <= ATOL + RTOL * abs(expected), (arch, how, i)
                if how == "each":  # that run is step i's own corrupted run
                    value = float(got.corrupted_logit_diff[i])
                    assert abs(value - expected) <= ATOL + RTOL * abs(expected), (arch, i)
    assert hook_state(bridge) == before
