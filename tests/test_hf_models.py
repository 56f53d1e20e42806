"""Hugging Face checkpoints offline: folders, LoRA adapters, and answers tokenized in context."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")


def _bpe_tokenizer():
    """A byte-level BPE tokenizer trained here: " 12" in context is not "12" alone."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["Q: what is 5 + 7? 5 + 7 = 12. Therefore, the answer is 12"] * 50 + \
        ["a b c 1 2 3 4 5 6 7 8 9 0 12 = + ? ."] * 5
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


@pytest.fixture
def hf_folder(tmp_path):
    tok = _bpe_tokenizer()
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


def test_hf_folder_loads_and_matches_transformers(hf_folder):
    from faithprobe.models.checkpoints import load_checkpoint

    ckpt = load_checkpoint(str(hf_folder))
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(hf_folder))
    ids = torch.tensor([[5, 9, 17, 30, 44]])
    with torch.no_grad():
        assert torch.allclose(ckpt.bridge(ids), ref(ids).logits, atol=1e-5)


def test_answer_tokenized_in_context_not_alone(hf_folder):
    from faithprobe.data.prompts import PromptTemplate
    from faithprobe.models.checkpoints import load_checkpoint
    from faithprobe.models.scoring import ScoreItem, score

    ckpt = load_checkpoint(str(hf_folder))
    alone = ckpt.tokenizer.encode("12")[0]
    in_context = ckpt.tokenizer.encode(" 12")[0]
    assert alone != in_context  # the case this test is about
    tpl = PromptTemplate(suffix=" Therefore, the answer is")
    item = ScoreItem("Q: what is 5 + 7?", ("5 + 7 = 12.",), "12", None, "t")
    got = score(ckpt, [item], tpl)[0]
    text = tpl.render(item.question, item.steps, "12").text
    ids = ckpt.tokenizer.encode(text)[0]
    n = len(in_context)
    assert ids[-n:] == in_context and got.n_answer_tokens == n
    with torch.no_grad():
        lp = torch.log_softmax(ckpt.bridge(torch.tensor([ids]))[0].float(), -1)
    manual = sum(float(lp[len(ids) - n - 1 + k, t]) for k, t in enumerate(in_context))
    assert abs(got.answer_logprob - manual) < 1e-5


def test_lora_adapter_over_its_base(hf_folder, tmp_path):
    peft = pytest.importorskip("peft")
    from faithprobe.models.checkpoints import load_checkpoint

    base = transformers.AutoModelForCausalLM.from_pretrained(str(hf_folder))
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                     init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        ids = torch.tensor([[5, 9, 17, 30, 44]])
        want = lora(ids).logits
        plain = load_checkpoint(str(hf_folder)).bridge(ids)
    ckpt = load_checkpoint(f"lora:{tmp_path / 'adapter'}@{hf_folder}")
    with torch.no_grad():
        got = ckpt.bridge(ids)
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter changed the model
    assert ckpt.spec.startswith("lora:")


def test_prefix_reuse_equals_full_recompute(hf_folder):
    """Edits scored from the unedited trace's KV cache equal edits run from scratch."""
    from faithprobe.data.prompts import PromptTemplate
    from faithprobe.data.traces import Trace
    from faithprobe.edits.interventions import EditContext, make_intervention
    from faithprobe.models.checkpoints import load_checkpoint
    from faithprobe.models.scoring import score
    from faithprobe.stages.probe import item_of

    ckpt = load_checkpoint(str(hf_folder))
    ckpt.template = PromptTemplate(suffix=" Therefore, the answer is")
    t = Trace("t", "Q: what is 5 + 7?", ("5 + 7 = 12.", "a b c 12.", "12 = 12."), "12")
    ctx = EditContext(ckpt.tokenizer, ckpt.template)
    items = [item_of(t, t.steps)] + [
        item_of(t, e.steps) for k in (make_intervention("truncate"), make_intervention("delete"),
                                    make_intervention("corrupt", continuations=["keep"]))
        for e in k.edits(t, ctx) if e.skipped is None]
    assert len(items) >= 8
    shared = score(ckpt, items, share_prefix=True, batch_size=4)
    alone = [score(ckpt, [it], batch_size=1)[0] for it in items]
    for a, b in zip(shared, alone):
        assert abs(a.answer_logprob - b.answer_logprob) < 1e-5
        assert a.pred == b.pred


@pytest.mark.parametrize("arch", ["gemma3", "mistral"])
def test_prefix_reuse_exact_on_sliding_windows_longer_than_the_trace(arch, tmp_path):
    """A sliding window (4 tokens here) shorter than the trace: the text suite's cache reuse
    must not crash (HF refuses to crop a sliding layer past its window) and must equal a run
    without reuse, in scoring and in regeneration after a corrupted step."""
    import zoo

    from faithprobe.data.prompts import PromptTemplate
    from faithprobe.data.traces import Trace
    from faithprobe.models.checkpoints import load_checkpoint
    from faithprobe.stages.probe import ProbeConfig, probe

    ckpt = load_checkpoint(str(zoo.build(arch, tmp_path / arch)))
    assert zoo.SLIDING_WINDOW < 20
    ckpt.template = PromptTemplate(question_prefix="", reasoning_prefix=" ", step_prefix="",
                                   step_sep=" ", suffix=" t39", answer_sep=" ")
    steps = tuple(zoo.words([3 + k, 4 + k, 5 + k]) for k in range(5))  # 15 step tokens
    t = Trace("t", zoo.words([1, 2, 7]), steps, "t9", options=("t9", "t8", "t7"))
    runs = {}
    for share in (True, False):
        cfg = ProbeConfig(interventions=("truncate", "delete", "corrupt"), infogain=False,
                          ki=False, max_new_tokens=6, share_prefix=share,
                          options={"corrupt": {"corrupter": "generic",
                                               "continuations": ["keep", "regenerate"]}})
        runs[share] = probe(ckpt, arch, [t], cfg)
    assert len(runs[True]) == len(runs[False]) >= 10
    for a, b in zip(runs[True], runs[False]):
        assert (a.intervention, a.step, a.pred) == (b.intervention, b.step, b.pred)
        if a.answer_logprob is not None:
            assert abs(a.answer_logprob - b.answer_logprob) < 1e-5
