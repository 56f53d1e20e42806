"""Generated traces, no-answer generations, and real-model errors, on tiny offline models."""

from __future__ import annotations

import pytest
import torch

from faithprobe.data.traces import Trace
from faithprobe.errors import FaithprobeError
from faithprobe.models.generate import NO_ANSWER, generate_traces
from faithprobe.stages.probe import ProbeConfig, probe

GEN = {"max_new_tokens": 12, "temperature": 0.0, "split": "lines", "max_steps": 4}


def _problems():
    return [Trace(f"p{i}", f"a={i};a?", (), str(i), gold=str(i)) for i in range(3)]


def test_generation_is_deterministic_and_splits_steps(tiny):
    a = generate_traces(tiny, _problems(), tiny.template, GEN)
    b = generate_traces(tiny, _problems(), tiny.template, GEN)
    assert a == b
    for t in a:
        assert t.metadata["generated_by"] == "tiny" and len(t.steps) <= 4
        assert all(s.strip() for s in t.steps)
    sampled = generate_traces(tiny, _problems(), tiny.template, {**GEN, "temperature": 1.0},
                              seed=3)
    assert sampled == generate_traces(tiny, _problems(), tiny.template,
                                      {**GEN, "temperature": 1.0}, seed=3)


def test_a_sampled_trace_depends_on_its_problem_not_on_its_batch_or_shard(tiny):
    """At temperature 0.7 each problem draws from its own seed (run seed, trace id, label,
    purpose): generated alone, in other batches or in another order, it is the same trace;
    another label or run seed draws another."""
    problems = [Trace(f"p{i}", f"a={i % 10};a?", (), str(i % 10)) for i in range(8)]
    gen = {**GEN, "temperature": 0.7, "max_new_tokens": 16}

    def run(ps, **kw):
        kw = {"seed": 5, "label": "base", "batch_size": 3, **kw}
        return {t.id: t for t in generate_traces(tiny, ps, tiny.template, gen, **kw)}

    whole = run(problems)
    assert run(problems[4:]) | run(problems[:4]) == whole  # two shards
    assert run(problems[::-1], batch_size=8) == whole
    assert run(problems, batch_size=1) == whole
    greedy = {t.id: t for t in generate_traces(tiny, problems, tiny.template, GEN)}
    assert any(whole[k].steps != greedy[k].steps for k in whole)  # it did sample
    for other in (run(problems, label="sft"), run(problems, seed=6)):
        assert any(other[k].steps != whole[k].steps for k in whole)


def test_generation_without_an_answer_is_recorded_not_a_crash(tiny):
    letter = tiny.tokenizer.token_id("a")
    with torch.no_grad():  # the model now always says "a": never a number
        tiny.bridge.unembed.b_U[letter] += 1e4
    traces = generate_traces(tiny, _problems(), tiny.template, GEN)
    assert all(t.metadata.get("no_answer") and t.answer == NO_ANSWER for t in traces)
    recs = probe(tiny, "base", traces, ProbeConfig(max_new_tokens=3))
    assert [r.status for r in recs] == ["no_answer"] * 3
    from faithprobe.metrics import summarize

    assert summarize(recs, n_boot=10)["checkpoints"]["base"]["no_answer_count"]["value"] == 3


def test_generated_reasoning_is_what_the_model_wrote(tiny):
    from faithprobe.data.tokens import align
    from faithprobe.models.decode import generate

    t = generate_traces(tiny, _problems()[:1], tiny.template, GEN)[0]
    r = tiny.template.render(t.question, (), tokenizer=tiny.tokenizer)
    ids = align(r.text, r.segments, tiny.tokenizer).ids
    text, _ = generate(tiny, [ids[: -len(tiny.template.suffix)]], max_new_tokens=12,
                       stop=(tiny.template.suffix.strip(),))[0]
    for step in t.steps:
        assert step in text


def test_cached_and_uncached_generation_agree_on_a_hf_model():
    """The KV-cache path (Hugging Face models) writes what full recomputation writes."""
    from faithprobe.models.checkpoints import Checkpoint
    from faithprobe.models.decode import generate

    ckpt = _tiny_llama(seed=0)
    prompts = [[5, 6, 7, 8], [9, 10]]
    cached = generate(ckpt, prompts, max_new_tokens=6, return_logprob=True)
    plain = Checkpoint(ckpt.bridge, ckpt.tokenizer, "x", ckpt.template, native_config={})
    full = generate(plain, prompts, max_new_tokens=6, return_logprob=True)
    assert [c[0] for c in cached] == [f[0] for f in full]
    assert all(abs(c[2] - f[2]) < 1e-4 for c, f in zip(cached, full))


def _tiny_llama(seed: int):
    """A two-layer Llama with the word-level tokenizer, wrapped in a bridge (has a KV cache)."""
    transformers = pytest.importorskip("transformers")
    from faithprobe.models.checkpoints import wrap_hf

    hf = _tiny_hf_tokenizer()
    cfg = transformers.LlamaConfig(vocab_size=hf.vocab_size, hidden_size=32,
                                   intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=128)
    torch.manual_seed(seed)
    return wrap_hf(transformers.LlamaForCausalLM(cfg), hf, "tiny-llama", "tiny-llama")


def _tiny_hf_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "a", "b", "=", "1", "2", "3", "?", ";", "the", "answer", "is"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="a"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def test_unsupported_architecture_is_named(tmp_path):
    transformers = pytest.importorskip("transformers")
    from faithprobe.models.checkpoints import load_checkpoint

    cfg = transformers.BioGptConfig(vocab_size=13, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=32)
    transformers.BioGptForCausalLM(cfg).save_pretrained(tmp_path / "biogpt")
    _tiny_hf_tokenizer().save_pretrained(tmp_path / "biogpt")
    with pytest.raises(FaithprobeError, match="cannot wrap architecture BioGptForCausalLM"):
        load_checkpoint(str(tmp_path / "biogpt"))


def test_generation_reusing_a_prefix_equals_plain_generation():
    from faithprobe.models.decode import generate

    ckpt = _tiny_llama(seed=1)
    prefix = [5, 6, 7, 8, 9, 10, 11, 12, 5, 6, 7, 8, 9, 10, 11, 12, 5, 6, 7, 8, 9, 10]
    prompts = [prefix[:20] + [3, 4], prefix[:3] + [9, 9], prefix + [2], prefix[:12],
               [12, 11, 10]]
    plain = generate(ckpt, prompts, max_new_tokens=5, return_logprob=True, batch_size=2)
    shared = generate(ckpt, prompts, max_new_tokens=5, return_logprob=True, batch_size=2,
                      reuse_prefix=prefix)
    assert [p[0] for p in plain] == [s[0] for s in shared]
    assert all(abs(p[2] - s[2]) < 1e-4 for p, s in zip(plain, shared))
