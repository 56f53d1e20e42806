"""The step-to-step suppression matrix and receiver heads' vertical scores, at the tensor level.

- the batched suppression equals its reference (one ``run_with_hooks`` forward a step, the
  pattern edited by a plain TransformerLens hook) on a native bridge and on every zoo family
  whose attention patterns can be edited, within 1e-4 of the matrix's largest value; the
  others are recorded with the reason ``suppression_support`` gives (``NO_SUPPRESSION``);
- renormalising the edited pattern equals masking the keys before the softmax (Thought
  Anchors' suppression, through ``hook_attn_scores``);
- the vertical scores equal a direct computation from the cached patterns;
- no hook is left behind.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformer_lens")

from transformer_lens.config import TransformerBridgeConfig  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402

from faithprobe.activation.suppression import (  # noqa: E402
    pattern_names,
    suppress_steps,
    suppress_steps_reference,
    suppression_support,
    token_kl,
    vertical_scores,
)
from faithprobe.errors import FaithprobeError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

T = 24
SPANS = [(2, 6), (7, 10), (12, 17), (18, 21)]
ANSWER = [T - 1]
REL = 1e-4  # |fast - reference| <= REL * the reference matrix's largest value


def hook_state(bridge) -> dict[str, tuple]:
    from transformer_lens.hook_points import HookPoint

    return {name: (len(m.fwd_hooks), len(m.bwd_hooks), len(m._forward_hooks),
                   len(m._forward_pre_hooks)) if isinstance(m, HookPoint) else
            (len(m._forward_hooks), len(m._forward_pre_hooks))
            for name, m in bridge.named_modules()}


@pytest.fixture(scope="module")
def native():
    cfg = TransformerBridgeConfig(d_model=32, n_layers=3, n_heads=4, d_head=8, d_mlp=64,
                                  d_vocab=20, n_ctx=64, act_fn="gelu",
                                  normalization_type="LN", seed=0)
    bridge = TransformerBridge.boot_native(cfg).eval()
    bridge(torch.zeros(1, 4, dtype=torch.long))
    return bridge


def tokens(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (1, T), generator=torch.Generator().manual_seed(3))


def assert_exact(got, ref, arch: str) -> None:
    lower = torch.tril(torch.ones(len(SPANS), len(SPANS), dtype=torch.bool), -1)
    assert torch.equal(got.matrix.isnan(), ~lower) and torch.equal(ref.matrix.isnan(), ~lower)
    scale = ref.matrix[lower].abs().max().item()
    assert scale > 1e-7, f"{arch}: no suppression moves a later step, the test would be vacuous"
    gap = (got.matrix[lower] - ref.matrix[lower]).abs().max().item()
    assert gap <= REL * scale, (arch, gap, scale)
    gap = (got.answer_kl - ref.answer_kl).abs().max().item()
    assert gap <= REL * max(scale, ref.answer_kl.abs().max().item()), (arch, gap)
    assert (ref.matrix[lower] >= -1e-7).all() and (ref.answer_kl >= -1e-7).all()


def test_suppression_is_exact_on_a_native_bridge(native):
    ids = tokens(20)
    before = hook_state(native)
    assert suppression_support(native) is None
    for temperature in (1.0, 0.6):
        ref = suppress_steps_reference(native, ids, SPANS, ANSWER, temperature=temperature)
        for batch_size in (1, 3, None):
            got = suppress_steps(native, ids, SPANS, ANSWER, temperature=temperature,
                                 batch_size=batch_size)
            assert_exact(got, ref, "native")
    hot = suppress_steps(native, ids, SPANS, ANSWER, temperature=0.6).matrix
    cold = suppress_steps(native, ids, SPANS, ANSWER).matrix
    lower = ~cold.isnan()
    assert not torch.allclose(hot[lower], cold[lower])  # the temperature is applied
    assert hook_state(native) == before


KL_FLOAT32_FLOOR = 1e-6


def test_renormalised_pattern_equals_masked_scores(tmp_path):
    """Zeroing a step's pattern columns and renormalising == Thought Anchors' -inf on its
    scores before the softmax (a llama bridge fires hook_attn_scores inside its attention)."""
    import zoo

    from faithprobe.models.checkpoints import load_checkpoint

    bridge = load_checkpoint(str(zoo.build("llama", tmp_path / "llama"))).bridge
    ids = tokens(zoo.VOCAB)
    got = suppress_steps(bridge, ids, SPANS, ANSWER)
    names = [n.replace("hook_pattern", "hook_attn_scores") for n in pattern_names(bridge)]
    scale = got.matrix.nan_to_num().abs().max().item()
    assert scale > 1e-5
    with torch.no_grad():
        clean = bridge(ids)
        for i, (s, e) in enumerate(SPANS):
            def mask(scores, *, hook, s=s, e=e):
                scores = scores.clone()
                scores[:, :, e:, s:e] = float("-inf")
                return scores
            edited = bridge.run_with_hooks(ids, fwd_hooks=[(n, mask) for n in names])
            kl = token_kl(clean[0], edited[0])
            for j in range(i + 1, len(SPANS)):
                sj, ej = SPANS[j]
                gap = abs(float(kl[sj:ej].mean()) - float(got.matrix[j, i]))
                # KL of float32 log-probabilities near log(vocab) rounds at about 1e-7 per
                # token: the random model's KLs (3e-4 here) sit close to that floor
                assert gap <= REL * scale + KL_FLOAT32_FLOOR, (i, j, gap, scale)


def test_vertical_scores_equal_the_cached_patterns(native):
    ids = tokens(20)
    before = hook_state(native)
    got = vertical_scores(native, ids, SPANS, proximity=4)
    assert got.shape == (3, 4, len(SPANS))
    assert torch.allclose(suppress_steps(native, ids, SPANS, ANSWER).vertical, got)
    _, cache = native.run_with_cache(ids)
    for layer in range(3):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]  # [head, query, key]
        for i, (s, e) in enumerate(SPANS):
            pairs = [(q, k) for k in range(s, e) for q in range(k + 4, T)]
            want = torch.stack([pattern[:, q, k] for q, k in pairs]).mean(0)
            assert torch.allclose(got[layer, :, i], want, atol=1e-6), (layer, i)
    far = vertical_scores(native, ids, SPANS, proximity=T)
    assert far.isnan().all()  # no query is 24 tokens after any key
    assert hook_state(native) == before


def test_bad_inputs_raise(native):
    ids = tokens(20)
    for spans, answer, kw in (([(0, 3)], ANSWER, {}), ([(5, 3)], ANSWER, {}),
                              ([(2, 6), (4, 8)], ANSWER, {}), (SPANS, [T], {}),
                              (SPANS, ANSWER, {"temperature": 0.0}),
                              (SPANS, ANSWER, {"batch_size": 0})):
        with pytest.raises(FaithprobeError):
            suppress_steps(native, ids, spans, answer, **kw)
    with pytest.raises(FaithprobeError):
        vertical_scores(native, ids, SPANS, proximity=0)


# Families whose attention patterns cannot be suppressed, and why (measured with transformers
# 5.23.0 and TransformerLens 4.3 by ``suppression_support``). Everything else is checked exact.
_HOOKLESS = "no attention pattern hook"
_DISCARDED = "editing hook_pattern does not change the logits"
NO_SUPPRESSION = {
    **{arch: _DISCARDED for arch in (
        "gptj", "opt", "gpt_neo", "xglm", "phimoe", "jetmoe", "llama4_text", "gemma4_text",
        "afmoe", "laguna", "nanochat", "modernbert_decoder")},
    **{arch: _HOOKLESS for arch in (
        "qwen3_next", "qwen3_5", "qwen3_5_moe", "lfm2", "lfm2_moe", "mamba", "mamba2",
        "falcon_mamba", "rwkv", "recurrent_gemma", "jamba", "bamba", "granitemoehybrid",
        "nemotron_h", "zamba2", "olmo_hybrid")},
}


def zoo_archs() -> list[str]:
    import zoo

    return zoo.WORKING


@pytest.mark.parametrize("arch", zoo_archs())
def test_suppression_is_exact_on_the_zoo(arch, tmp_path):
    import zoo

    from faithprobe.models.checkpoints import load_checkpoint

    if "blocks.0.hook_resid_pre" in zoo.HOOKS_MISSING.get(arch, ()):
        pytest.skip(f"{arch}: the bridge exposes no blocks.<L> hook points")
    bridge = load_checkpoint(str(zoo.build(arch, tmp_path / arch))).bridge
    ids = tokens(zoo.VOCAB)
    with torch.no_grad():
        bridge.run_with_cache(ids)  # let the bridge wire its own lazy hooks first
    before = hook_state(bridge)
    reason = suppression_support(bridge)
    assert (reason or "").startswith(NO_SUPPRESSION.get(arch, "")) and \
        (reason is None) == (arch not in NO_SUPPRESSION), (arch, reason)
    if reason is None:
        got = suppress_steps(bridge, ids, SPANS, ANSWER, batch_size=3)
        assert_exact(got, suppress_steps_reference(bridge, ids, SPANS, ANSWER), arch)
        assert got.vertical is not None and got.vertical.shape[:2] == (
            bridge.cfg.n_layers, bridge.cfg.n_heads)
        assert math.isfinite(float(got.vertical[:, :, 0].sum()))
    assert hook_state(bridge) == before
