"""The native models' KV cache: the same logits and the same generations as the bridge's full
forward, and never used while a hook is registered."""

from __future__ import annotations

import pytest
import torch

from faithprobe.models import decode as decode_module
from faithprobe.models.checkpoints import Checkpoint, build_native, load_checkpoint
from faithprobe.models.decode import generate, sample_continuations
from faithprobe.models.native_cache import native_decoder
from tests.conftest import TINY_TEMPLATE, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = {
    "gelu-LN": {},
    "rotary-gqa-rms-gated": dict(positional_embedding_type="rotary", n_key_value_heads=2,
                                 normalization_type="RMS", gated_mlp=True, act_fn="silu"),
    "softcaps": dict(attn_scores_soft_cap=5.0, output_logits_soft_cap=3.0),
    "attn-only": dict(attn_only=True),
}


def _ckpt(tokenizer, **overrides) -> Checkpoint:
    torch.manual_seed(0)
    config = tiny_config(tokenizer.vocab_size, **overrides)
    return Checkpoint(build_native(config), tokenizer, "tiny", TINY_TEMPLATE, config)


def _batch(vocab: int, rows: int = 3, width: int = 30):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (rows, width), generator=g)
    mask = torch.ones(rows, width, dtype=torch.long)
    for r in range(1, rows):  # left padding of different widths
        mask[r, : 4 * r] = 0
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@torch.no_grad()
def test_cached_steps_equal_the_full_forward(tiny_tokenizer, variant):
    ckpt = _ckpt(tiny_tokenizer, **VARIANTS[variant])
    dec = native_decoder(ckpt)
    assert dec is not None
    ids, mask, pos = _batch(tiny_tokenizer.vocab_size)
    full = ckpt.bridge(ids, attention_mask=mask, position_ids=pos)
    whole, _ = dec.step(ids, mask, pos, None)
    torch.testing.assert_close(whole, full, rtol=0, atol=1e-5)
    # a prompt of 20 tokens, then one token at a time, a row dropped half-way
    logits, kv = dec.step(ids[:, :20], mask[:, :20], pos[:, :20], None)
    got = [logits]
    for t in range(20, ids.shape[1]):
        logits, kv = dec.step(ids[:, t:t + 1], mask[:, :t + 1], pos[:, t:t + 1], kv)
        got.append(logits)
    stepped = torch.cat(got, 1)
    real = mask.bool()
    assert (stepped - full)[real].abs().max() < 1e-4
    keep = torch.tensor([2, 0])
    logits, kv = dec.step(ids[:, :25], mask[:, :25], pos[:, :25], None)
    kv.batch_select_indices(keep)
    nxt, _ = dec.step(ids[keep, 25:26], mask[keep, :26], pos[keep, 25:26], kv, last_only=True)
    assert (nxt[:, 0] - full[keep, 25]).abs().max() < 1e-4


def _uncached(monkeypatch):
    monkeypatch.setattr(decode_module, "native_decoder", lambda ckpt: None)


@pytest.mark.parametrize("variant", ["gelu-LN", "rotary-gqa-rms-gated"])
def test_generation_equals_the_uncached_loop(tiny_tokenizer, monkeypatch, variant):
    ckpt = _ckpt(tiny_tokenizer, **VARIANTS[variant])
    prompts = [tiny_tokenizer.encode(t)[0] for t in
               ("a=3;b=4;", "the sum of 12 and 30 is", "x", "q;q;q;q;q;q;q;q;q;")]
    kw = dict(max_new_tokens=12, stop=[";"])
    greedy = generate(ckpt, prompts, **kw)
    seeds = [11, 12, 13, 14]
    sampled = sample_continuations(ckpt, prompts, seeds, temperature=1.5, **kw)
    _uncached(monkeypatch)
    assert generate(ckpt, prompts, **kw) == greedy
    again = sample_continuations(ckpt, prompts, seeds, temperature=1.5, **kw)
    assert again.texts == sampled.texts
    assert sampled.tokens_run < again.tokens_run  # the cached loop ran fewer positions
    assert len(set(sampled.texts)) > 1  # it generated text, not one repeated token


def test_the_organisms_generate_as_before(monkeypatch):
    """The organisms' regenerated steps, greedy and sampled, are those of the full forward."""
    from faithprobe.models.scoring import continuation_ids
    from faithprobe.organisms.task import generate as organism_traces

    ckpt = load_checkpoint("organism:sft")
    traces = organism_traces("id", 6, 3)
    prompts = [continuation_ids(ckpt, ckpt.template, t.question, t.steps[:k], t.id)
               for k, t in enumerate(traces)]
    kw = dict(max_new_tokens=24)
    greedy = generate(ckpt, prompts, **kw)
    sampled = sample_continuations(ckpt, prompts, list(range(6)), temperature=3.0, **kw)
    _uncached(monkeypatch)
    assert generate(ckpt, prompts, **kw) == greedy
    assert sample_continuations(ckpt, prompts, list(range(6)), temperature=3.0,
                                **kw).texts == sampled.texts


def test_not_used_while_a_hook_is_registered(tiny_tokenizer):
    """An intervention's hook must see every position of every forward: with one registered,
    generation runs the bridge's full forward (the hook sees the whole prompt each step)."""
    ckpt = _ckpt(tiny_tokenizer)
    assert native_decoder(ckpt) is not None
    seen: list[int] = []

    def record(act, hook):
        seen.append(act.shape[1])
        return act

    prompt = [tiny_tokenizer.encode("a=3;b=4;")[0]]
    with ckpt.bridge.hooks(fwd_hooks=[("blocks.0.hook_out", record)]):
        assert native_decoder(ckpt) is None
        generate(ckpt, prompt, max_new_tokens=5)
    assert seen == [8, 9, 10, 11, 12][: len(seen)] and len(seen) >= 2
    handle = ckpt.bridge.blocks[1].register_forward_pre_hook(lambda m, a: None)
    assert native_decoder(ckpt) is None
    handle.remove()
    assert native_decoder(ckpt) is not None
