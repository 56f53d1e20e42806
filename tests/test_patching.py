"""Activation patching of step spans on tiny random bridges (native and HuggingFace Llama)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformer_lens")

from transformer_lens.config import TransformerBridgeConfig  # noqa: E402
from transformer_lens.hook_points import HookPoint  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402
from transformer_lens.patching import get_act_patch_resid_pre  # noqa: E402

from faithprobe.activation import (  # noqa: E402
    Answer,
    FastPath,
    attention_to_steps,
    attribution_correlation,
    attribution_patch_steps,
    check_fast_path,
    knockout_steps,
    patch_answer_positions,
    patch_steps,
    pearson,
)
from faithprobe.errors import FaithprobeError  # noqa: E402
from faithprobe.stages.patching import knockout_records, patch_records  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, T = 20, 24
SPANS = [(2, 6), (7, 10), (12, 17)]
ANSWER = Answer.of(T - 1, 3, 4)


@pytest.fixture(scope="module")
def native():
    cfg = TransformerBridgeConfig(d_model=32, n_layers=3, n_heads=4, d_head=8, d_mlp=64,
                                  d_vocab=VOCAB, n_ctx=64, act_fn="gelu",
                                  normalization_type="LN", seed=0)
    bridge = TransformerBridge.boot_native(cfg).eval()
    bridge(torch.zeros(1, 4, dtype=torch.long))  # the bridge wires its own pre-hooks lazily
    _BASELINE[id(bridge)] = hook_state(bridge)
    return bridge


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny random HF Llama (GQA, rotary) behind the bridge: exercises the KV-prefix path."""
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg).eval()
    folder = tmp_path_factory.mktemp("tiny_llama")
    cfg.save_pretrained(folder)  # the bridge reads the config from a folder, not the hub
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(
        {f"t{i}": i for i in range(VOCAB)}, unk_token="t0")), unk_token="t0")
    bridge = TransformerBridge.boot_transformers(str(folder), hf_model=hf, tokenizer=tok).eval()
    # transformers installs its permanent output-capturing hooks lazily, on the first cached
    # forward: warm every entry point before taking the baseline
    x = torch.zeros(1, 4, dtype=torch.long)
    bridge(x)
    bridge(x, return_type="logits_and_cache")
    bridge.run_with_cache(x)
    _BASELINE[id(bridge)] = hook_state(bridge)
    return bridge


@pytest.fixture(scope="module")
def tokens():
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, VOCAB, (1, T), generator=g)
    corrupted = clean.clone()
    for s, e in SPANS:
        corrupted[0, s:e] = (clean[0, s:e] + torch.randint(1, VOCAB, (e - s,), generator=g)) % VOCAB
    return clean, corrupted


def hook_state(bridge):
    """Every module hook and HookPoint hook on the model, by module name."""
    state = {}
    for name, module in bridge.named_modules():
        state[name] = (tuple(module._forward_hooks), tuple(module._forward_pre_hooks),
                       tuple(module._backward_hooks))
        if isinstance(module, HookPoint):
            state[name] += (len(module.fwd_hooks), len(module.bwd_hooks))
    return state


_BASELINE: dict[int, dict] = {}


def assert_no_hooks(bridge):
    """No hook of ours is left: HookPoints carry none, and the module hooks are exactly the
    ones the bridge and transformers install themselves (ln1 capture pre-hooks, HF output
    capturing hooks), as before any call."""
    state = hook_state(bridge)
    for name, module in bridge.named_modules():
        if isinstance(module, HookPoint):
            assert not module.fwd_hooks and not module.bwd_hooks, name
            assert not module._forward_hooks and not module._backward_hooks, name
    assert state == _BASELINE[id(bridge)]


def preferred_answer(bridge, clean):
    """An answer the clean run prefers by a wide margin: its top token against its bottom one."""
    with torch.no_grad():
        logits = bridge(clean)[0, T - 1]
    return Answer.of(T - 1, int(logits.argmax()), int(logits.argmin()))


@pytest.mark.parametrize("corrupted", ["each", "all"])
@pytest.mark.parametrize("model", ["native", "llama"])
def test_clean_into_clean_changes_nothing(model, corrupted, tokens, request):
    bridge = request.getfixturevalue(model)
    clean, _ = tokens
    strong = preferred_answer(bridge, clean)
    for method in ("fast", "reference"):
        r = patch_steps(bridge, clean, clean, SPANS, strong, heads=True, method=method,
                        corrupted=corrupted)
        assert r.corrupted == corrupted
        # equal up to float rounding: the clean run unembeds its answer position alone, a
        # batch of cells several rows at once (a matrix product rounds by its shape)
        exact = {"rtol": 0.0, "atol": 1e-5}
        assert torch.allclose(r.logit_diff, torch.full_like(r.logit_diff, r.clean_logit_diff),
                              **exact)
        assert torch.allclose(r.logprob, torch.full_like(r.logprob, r.clean_logprob), **exact)
        # the TransformerLens ratio is undefined (0 / 0); the share is 0
        assert torch.isnan(r.effect).all() and r.skipped_reason is None
        assert torch.allclose(r.share, torch.zeros_like(r.share), **exact)
        recs = patch_records(r, "t0", "base")
        assert {x.status for x in recs} == {"ok"} and all(abs(x.value) < 1e-5 for x in recs)
        assert all(x.detail["effect"] is None for x in recs)
    assert_no_hooks(bridge)


def test_share_undefined_where_clean_run_does_not_prefer_the_answer(native, tokens):
    clean, corrupted = tokens
    strong = preferred_answer(native, clean)
    flipped = Answer(strong.positions, strong.alt_ids, strong.answer_ids)
    r = patch_steps(native, clean, corrupted, SPANS, flipped)
    assert r.clean_logit_diff < 0 and r.skipped_reason is not None
    assert "prefers the answer" in r.skipped_reason and torch.isnan(r.share).all()
    recs = patch_records(r, "t0", "base")
    assert {x.status for x in recs} == {"skipped"} and all(x.value is None for x in recs)
    assert all(x.reason == r.skipped_reason for x in recs)


def test_whole_sequence_at_layer0_reproduces_corrupted(native, tokens):
    clean, corrupted = tokens
    corrupted = corrupted.clone()
    corrupted[0, -1] = (clean[0, -1] + 1) % VOCAB  # differ everywhere the span covers
    for method in ("fast", "reference"):
        for how in ("each", "all"):  # one span: its own corrupted run is the whole one
            r = patch_steps(native, clean, corrupted, [(0, T)], ANSWER, layers=[0],
                            components=("resid_pre",), method=method, corrupted=how)
            want = float(r.corrupted_logit_diff[0])
            assert r.logit_diff[0, 0, 0].item() == pytest.approx(want, abs=1e-5)
            assert r.effect[0, 0, 0].item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("model", ["native", "llama"])
def test_per_position_equals_transformer_lens(model, tokens, request):
    bridge = request.getfixturevalue(model)
    clean, corrupted = tokens
    _, clean_cache = bridge.run_with_cache(clean)

    def metric(logits):
        return logits[0, T - 1, 3] - logits[0, T - 1, 4]

    # every position corrupted at once: TransformerLens' own grid, one corrupted run
    ref = get_act_patch_resid_pre(bridge, corrupted, clean_cache, metric)  # [layer, pos]
    spans = [(p, p + 1) for p in range(T)]
    ours = patch_steps(bridge, clean, corrupted, spans, ANSWER, components=("resid_pre",),
                       direction="denoising", corrupted="all")
    assert torch.allclose(ours.logit_diff[:, :, 0].T, ref.detach(), atol=1e-4)
    # one corrupted run per position: TransformerLens on the input with that position alone
    # corrupted, read at that position
    each = patch_steps(bridge, clean, corrupted, spans, ANSWER, components=("resid_pre",),
                       direction="denoising", corrupted="each")
    for p in (2, 9, 14, 20):
        one = clean.clone()
        one[0, p] = corrupted[0, p]
        tl = get_act_patch_resid_pre(bridge, one, clean_cache, metric)[:, p]  # [layer]
        assert torch.allclose(each.logit_diff[p, :, 0], tl.detach(), atol=1e-4), p
    assert not torch.allclose(each.logit_diff, ours.logit_diff, atol=1e-3)
    assert_no_hooks(bridge)


@pytest.mark.parametrize("corrupted", ["each", "all"])
@pytest.mark.parametrize("model", ["native", "llama"])
@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_fast_equals_reference_and_batching(model, direction, corrupted, tokens, request):
    bridge = request.getfixturevalue(model)
    clean, corrupted_tokens = tokens
    corrupted, how = corrupted_tokens, corrupted
    kw = dict(heads=True, direction=direction, corrupted=how)
    ref = patch_steps(bridge, clean, corrupted, SPANS, ANSWER, method="reference", **kw)
    fast = patch_steps(bridge, clean, corrupted, SPANS, ANSWER, **kw)
    one = patch_steps(bridge, clean, corrupted, SPANS, ANSWER, batch_size=1, **kw)
    sub = patch_steps(bridge, clean, corrupted, SPANS, ANSWER, layers=[2, 1], **kw)
    for a, b in [(ref, fast), (one, fast)]:
        assert torch.allclose(a.logit_diff, b.logit_diff, atol=1e-4)
        assert torch.allclose(a.logprob, b.logprob, atol=1e-4)
    assert torch.allclose(sub.logit_diff, ref.logit_diff[:, [2, 1]], atol=1e-4)
    assert torch.allclose(ref.corrupted_logit_diff, fast.corrupted_logit_diff, atol=1e-4)
    # the grid is not trivially constant: patches do move the answer
    assert (ref.logit_diff - ref.clean_logit_diff if direction == "noising"
            else ref.logit_diff - ref.corrupted_logit_diff[:, None, None]).abs().max() > 1e-3
    assert_no_hooks(bridge)


def hand_loop(bridge, clean, corrupted, answer, direction, how):
    """The reference written out: for each step, run_with_cache on its corrupted input (that
    step alone corrupted, or every step), then one run_with_hooks per (layer, component)."""
    out = torch.zeros(len(SPANS), bridge.cfg.n_layers, 3)  # [step, layer, comp]
    bad_ld = torch.zeros(len(SPANS))
    for i, (s, e) in enumerate(SPANS):
        bad = corrupted
        if how == "each":
            bad = clean.clone()
            bad[0, s:e] = corrupted[0, s:e]
        base, src = (clean, bad) if direction == "noising" else (bad, clean)
        with torch.no_grad():
            bad_logits, cache = bridge.run_with_cache(src if direction == "noising" else base)
            bad_ld[i] = bad_logits[0, T - 1, answer.answer_ids[0]] - \
                bad_logits[0, T - 1, answer.alt_ids[0]]
            if direction == "denoising":
                _, cache = bridge.run_with_cache(src)
            for layer in range(bridge.cfg.n_layers):
                for ci, comp in enumerate(("resid_pre", "attn_out", "mlp_out")):
                    name = f"blocks.{layer}.hook_{comp}"

                    def setter(act, *, hook, name=name, s=s, e=e, cache=cache):
                        act = act.clone()
                        act[:, s:e] = cache[name][:, s:e]
                        return act

                    logits = bridge.run_with_hooks(base, fwd_hooks=[(name, setter)])
                    out[i, layer, ci] = (logits[0, T - 1, answer.answer_ids[0]]
                                         - logits[0, T - 1, answer.alt_ids[0]])
    return out, bad_ld


@pytest.mark.parametrize("model", ["native", "llama"])
@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_each_step_patched_from_its_own_corrupted_run(model, direction, tokens, request):
    """corrupted="each": every cell of step i equals a hand-written loop from the input with
    step i alone corrupted; "all" equals the same loop from the input with every step
    corrupted. Noising, the two agree at layer 0's resid_pre (the step's own tokens) and not
    above; denoising, "each" restores the clean run exactly at layer 0's resid_pre."""
    bridge = request.getfixturevalue(model)
    clean, corrupted = tokens
    got = {how: patch_steps(bridge, clean, corrupted, SPANS, ANSWER, direction=direction,
                            corrupted=how) for how in ("each", "all")}
    for how, result in got.items():
        want, bad_ld = hand_loop(bridge, clean, corrupted, ANSWER, direction, how)
        assert torch.allclose(result.logit_diff, want, atol=1e-4), how
        assert torch.allclose(result.corrupted_logit_diff, bad_ld, atol=1e-4), how
    each, every = got["each"].logit_diff, got["all"].logit_diff
    assert (each[:, 1:] - every[:, 1:]).abs().max() > 1e-3  # the label matters above layer 0
    if direction == "denoising":
        clean_ld = torch.full_like(each[:, 0, 0], got["each"].clean_logit_diff)
        assert torch.allclose(each[:, 0, 0], clean_ld, atol=1e-5)
    else:  # layer 0 resid_pre over step i == corrupting step i's text, under both settings
        assert torch.allclose(each[:, 0, 0], every[:, 0, 0], atol=1e-5)
        for i, (s, e) in enumerate(SPANS):
            one = clean.clone()
            one[0, s:e] = corrupted[0, s:e]
            with torch.no_grad():
                logits = bridge(one)[0, T - 1]
            alone = float(logits[ANSWER.answer_ids[0]] - logits[ANSWER.alt_ids[0]])
            assert float(each[i, 0, 0]) == pytest.approx(alone, abs=1e-4)
    assert_no_hooks(bridge)


def test_records_carry_full_hook_names(native, tokens):
    clean, corrupted = tokens
    r = patch_steps(native, clean, corrupted, SPANS, preferred_answer(native, clean), heads=True)
    recs = patch_records(r, "t0", "sft", model="tiny")
    assert len(recs) == 3 * 3 * (3 + 4)
    sites = {x.site for x in recs}
    assert {"blocks.2.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.1.hook_mlp_out",
            "blocks.1.attn.hook_z"} <= sites
    x = next(x for x in recs if x.step == 1 and x.site == "blocks.1.hook_mlp_out")
    share = (r.clean_logit_diff - float(r.logit_diff[1, 1, 2])) / r.clean_logit_diff
    assert x.intervention == "patch" and x.value == pytest.approx(share, rel=1e-5)
    assert x.detail["effect"] == pytest.approx(float(r.effect[1, 1, 2]))
    assert x.detail["logit_diff"] == pytest.approx(float(r.logit_diff[1, 1, 2]))
    assert x.detail["variant"] == {"direction": "noising", "head": None, "kind": "step",
                                   "corrupted": "each"}
    assert x.detail["corrupted_steps"] == [1]
    assert x.detail["corrupted_logit_diff"] == pytest.approx(float(r.corrupted_logit_diff[1]))
    every = patch_records(patch_steps(native, clean, corrupted, SPANS, ANSWER, corrupted="all"),
                          "t0", "sft", steps=[0, 2, 5])
    assert {x.detail["variant"]["corrupted"] for x in every} == {"all"}
    assert {tuple(x.detail["corrupted_steps"]) for x in every} == {(0, 2, 5)}


def test_no_hooks_left_after_exception(native, llama, tokens):
    clean, corrupted = tokens

    def boom(module, args, output):
        raise RuntimeError("boom")

    for bridge in (native, llama):
        for method in ("fast", "reference"):
            handle = bridge.blocks[1].hook_out.register_forward_hook(boom)
            try:
                with pytest.raises(RuntimeError, match="boom"):
                    patch_steps(bridge, clean, corrupted, SPANS, ANSWER, components=("attn_out",),
                                method=method)
            finally:
                handle.remove()
            assert_no_hooks(bridge)


def test_no_hooks_left_when_the_forward_that_captures_block_arguments_raises(llama, tokens,
                                                                              monkeypatch):
    clean, corrupted = tokens

    def bad_final(*args, **kwargs):
        raise RuntimeError("late")

    monkeypatch.setattr(type(llama.ln_final), "forward", bad_final)
    with pytest.raises(RuntimeError, match="late"):
        patch_steps(llama, clean, corrupted, SPANS, ANSWER)
    monkeypatch.undo()
    assert_no_hooks(llama)


def test_span_length_mismatch_refused(native, tokens):
    clean, corrupted = tokens
    bad = [SPANS[0], (7, 11), SPANS[2]]
    with pytest.raises(FaithprobeError, match=r"step 1 spans 3 tokens .* and 4 tokens"):
        patch_steps(native, clean, corrupted, SPANS, ANSWER, corrupted_spans=bad)
    with pytest.raises(FaithprobeError, match="step 1"):
        attribution_patch_steps(native, clean, corrupted, SPANS, ANSWER, corrupted_spans=bad)
    with pytest.raises(FaithprobeError, match="differ in length"):
        patch_steps(native, clean, corrupted[:, :-1], SPANS, Answer.of(T - 2, 3, 4))


def test_attribution_estimates_and_correlation(native, tokens):
    clean, corrupted = tokens
    exact = patch_steps(native, clean, corrupted, SPANS, ANSWER, heads=True)
    est = attribution_patch_steps(native, clean, corrupted, SPANS, ANSWER, heads=True)
    assert est.method == "attribution" and est.logit_diff.shape == exact.logit_diff.shape
    base = est.clean_logit_diff
    # attn_out is linear in the heads' z: the per-head estimates must sum to attn_out's exactly
    heads_sum = (est.logit_diff[..., 3:] - base).sum(-1)
    assert torch.allclose(heads_sum, est.logit_diff[..., 1] - base, atol=1e-5)
    # a patch the answer cannot see (last layer's outputs on earlier positions): both exactly 0
    assert torch.equal(est.logit_diff[:, 2, 1:3], exact.logit_diff[:, 2, 1:3])
    rho = attribution_correlation(est, exact)
    assert 0.5 < rho <= 1.0, rho  # measured 0.85 on this model and these inputs (noising)
    # each step's estimate starts from its own corrupted run, as exact patching does: the same
    # corrupted baselines; at layer 0's resid_pre the same tokens differ as in the all-steps run
    assert torch.allclose(est.corrupted_logit_diff, exact.corrupted_logit_diff, atol=1e-5)
    every = attribution_patch_steps(native, clean, corrupted, SPANS, ANSWER, heads=True,
                                    corrupted="all")
    assert est.corrupted == "each" and every.corrupted == "all"
    assert torch.allclose(est.logit_diff[:, 0, 0], every.logit_diff[:, 0, 0], atol=1e-5)
    assert (est.logit_diff[:, 1:] - every.logit_diff[:, 1:]).abs().max() > 1e-4
    for direction in ("noising", "denoising"):
        both = [f(native, clean, corrupted, SPANS, ANSWER, direction=direction)
                for f in (attribution_patch_steps, patch_steps)]
        assert torch.allclose(both[0].corrupted_logit_diff, both[1].corrupted_logit_diff,
                              atol=1e-5)
        assert both[0].clean_logit_diff == pytest.approx(both[1].clean_logit_diff, abs=1e-5)
    x = torch.arange(6.0)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert_no_hooks(native)


def test_attention_knockout_changes_output(native, tokens):
    clean, _ = tokens
    attn = attention_to_steps(native, clean, SPANS, [T - 1])
    assert attn.shape == (3, 3) and (attn >= 0).all() and (attn.sum(-1) <= 1 + 1e-5).all()
    for renorm in (True, False):
        k = knockout_steps(native, clean, SPANS, ANSWER, renormalise=renorm)
        assert (k.logit_diff - k.clean_logit_diff).abs().min() > 1e-6
        assert (k.kl > 0).all()
    only_last = knockout_steps(native, clean, SPANS, ANSWER, layers=[2])
    assert not torch.allclose(only_last.logit_diff, k.logit_diff)
    recs = knockout_records(only_last, "t0", "base")
    assert recs[0].site == "blocks.2.attn.hook_pattern"
    assert_no_hooks(native)


def test_answer_position_patching(native, tokens):
    clean, corrupted = tokens
    # the whole sequence at layer 0 resid_pre reproduces the corrupted run
    r = patch_answer_positions(native, clean, corrupted, ANSWER, n_positions=T, layers=[0],
                               components=("resid_pre",))
    assert r.logit_diff[0, 0, 0].item() == pytest.approx(r.corrupted_logit_diff, abs=1e-5)
    # a length-changing edit: 3 tokens dropped from step 0; answers aligned from the end
    shorter = torch.cat([corrupted[:, :2], corrupted[:, 5:]], dim=1)
    r = patch_answer_positions(native, clean, shorter, ANSWER, n_positions=4)
    assert r.logit_diff.shape == (1, 3, 3) and torch.isfinite(r.logit_diff).all()
    assert r.spans == [(T - 4, T)] and patch_records(r, "t0", "base")[0].step is None
    assert_no_hooks(native)


def batch_noise(module, args, output):
    """A block whose output depends on the batch size: batched cells see other numbers."""
    return output if output.shape[0] == 1 else output + shift(output)


def shift(x):
    """Not a constant (LayerNorm would remove one)."""
    return torch.linspace(-1.0, 1.0, x.shape[-1])


@pytest.mark.parametrize("model", ["native", "llama"])
def test_self_check_falls_back_where_the_fast_path_disagrees(model, tokens, request):
    bridge = request.getfixturevalue(model)
    assert check_fast_path(bridge) == FastPath("fast")
    inside = []  # blocks that behave only inside the model's own forward
    # module hooks on the block's output hook point (a plain module in both bridges)
    handles = [bridge.blocks[1].hook_out.register_forward_hook(batch_noise)]
    try:
        one = check_fast_path(bridge)
        assert one.method == "fast" and one.batch_size == 1
        assert "disagrees with the reference" in one.reason
        handles.append(bridge.register_forward_pre_hook(lambda m, a: inside.append(1)))
        handles.append(bridge.register_forward_hook(lambda m, a, o: inside.clear()))

        def outside_noise(module, args, output):
            return output if inside else output + shift(output)

        handles.append(bridge.blocks[1].hook_out.register_forward_hook(outside_noise))
        ref = check_fast_path(bridge)
        assert ref.method == "reference" and "disagrees with the reference" in ref.reason
        clean, corrupted = tokens
        # what the fallback gives is the reference, whatever the blocks do outside a forward
        got = patch_steps(bridge, clean, corrupted, SPANS, ANSWER, method=ref.method)
        want = patch_steps(bridge, clean, corrupted, SPANS, ANSWER, method="reference")
        assert torch.equal(got.logit_diff, want.logit_diff)
        fast = patch_steps(bridge, clean, corrupted, SPANS, ANSWER, method="fast")
        assert not torch.allclose(fast.logit_diff, want.logit_diff, atol=1e-2)
    finally:
        for h in handles:
            h.remove()
    assert check_fast_path(bridge) == FastPath("fast")
    assert_no_hooks(bridge)


def test_patch_trace_records_the_fallback():
    from faithprobe.models.checkpoints import load_checkpoint
    from faithprobe.organisms.task import generate
    from faithprobe.stages.patching import patch_trace

    ckpt = load_checkpoint("organism:base")
    trace = generate("id", 1, 0)[0]
    forced = FastPath("reference", reason="the fast path disagrees (forced in a test)")
    fast = patch_trace(ckpt, "base", trace, ckpt.template, knockout=False)
    slow = patch_trace(ckpt, "base", trace, ckpt.template, knockout=False, fast_path=forced)
    assert len(fast) == len(slow) > 0
    assert {r.detail["method"] for r in fast} == {"fast"}
    assert all("fallback_reason" not in r.detail for r in fast)
    assert {r.detail["method"] for r in slow} == {"reference"}
    assert {r.detail["fallback_reason"] for r in slow} == {forced.reason}
    for a, b in zip(fast, slow):
        assert (a.step, a.site) == (b.step, b.site)
        assert a.detail["logit_diff"] == pytest.approx(b.detail["logit_diff"], abs=1e-4)


def test_organisms_max_and_mean_patching_effect_on_a_fresh_sample():
    """The planted truth on traces neither training nor the demo saw: base's answer rests on
    its last step (the maximum near 1, the mean over steps about 1 / steps), sft's on none."""
    from faithprobe.metrics import METRIC_FNS, bootstrap
    from faithprobe.models.checkpoints import load_checkpoint
    from faithprobe.organisms.task import generate
    from faithprobe.stages.patching import patch_trace

    traces = generate("id", 16, seed=3203)
    got = {}
    for label in ("base", "sft"):
        ckpt = load_checkpoint(f"organism:{label}")
        recs = [r for t in traces for r in patch_trace(
            ckpt, label, t, ckpt.template, components=("resid_pre",), knockout=False,
            corrupter="organism")]
        assert {r.detail["variant"]["corrupted"] for r in recs} == {"each"}
        got[label] = {m: bootstrap(recs, METRIC_FNS[m], n_boot=500, seed=0)
                      for m in ("patching_effect", "patching_effect_mean")}
    base, sft = got["base"], got["sft"]
    assert base["patching_effect"].value >= 0.9 and sft["patching_effect"].value <= 0.1
    assert base["patching_effect_mean"].n == sft["patching_effect_mean"].n == len(traces)
    assert base["patching_effect_mean"].ci_low > sft["patching_effect_mean"].ci_high
    # measured: base 0.304 [0.282, 0.323] against a mean 1 / steps of 0.302; sft 0.0007
    one_over_n = sum(1 / t.n_steps for t in traces) / len(traces)
    assert base["patching_effect_mean"].value == pytest.approx(one_over_n, abs=0.05)
    assert sft["patching_effect_mean"].value <= 0.05
