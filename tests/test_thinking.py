"""Thinking models: reasoning in a <think> ... </think> block, on tiny random Qwen2 and Qwen3
with chat templates that open the block themselves (R1-Distill) or insert an empty one
(Qwen3 with thinking off)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from faithprobe.data.prompts import PromptTemplate, step_segment  # noqa: E402
from faithprobe.data.thinking import split_thinking, thinking_template  # noqa: E402
from faithprobe.data.traces import Trace  # noqa: E402

R1_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}<|User|>{{ m['content'] }}"
               "{% endif %}{% endfor %}{% if add_generation_prompt %}<|Assistant|><think>\n"
               "{% endif %}")
QWEN3_OFF_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                      "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
                      "<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}")
STEPS = ("Two plus three is five.", "Five times two is ten.", "So the result is ten.")


def test_split_thinking_paragraphs_sentences_and_the_rest():
    steps, after, closed = split_thinking("<think>\nA is 1.\n\nB is 2.\n</think>\n\nIt is 3")
    assert (steps, after, closed) == (["A is 1.", "B is 2."], "It is 3", True)
    steps, after, closed = split_thinking("A is 1. B is 2. So 3.")  # prompt opened the block
    assert (steps, after, closed) == (["A is 1.", "B is 2.", "So 3."], "", False)


def test_plain_rendering_and_alignment():
    t = thinking_template()
    r = t.render("What is (2 + 3) * 2?", STEPS, "10")
    assert r.text == ("What is (2 + 3) * 2?\n<think>\nTwo plus three is five.\n\nFive times two is "
                      "ten.\n\nSo the result is ten.\n</think>\n\nTherefore, the answer is 10")
    start, end = r.char_span(step_segment(1))
    assert r.text[start:end] == "\n\nFive times two is ten."
    assert r.text[slice(*r.char_span("suffix"))].startswith("\n</think>")
    empty = t.render("Q?", (), None).text  # truncated to no step: an empty block
    assert empty == "Q?\n<think>\n</think>\n\nTherefore, the answer is"


def _bpe_folder(tmp_path, arch: str, chat_template: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"<|User|>What is (2 + 3) * 2?<|Assistant|><think>\n{' '.join(STEPS)}\n</think>"
              "\n\nTherefore, the answer is 10"] * 30
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    hf_tok.chat_template = chat_template
    cls = {"qwen2": (transformers.Qwen2Config, "Qwen2ForCausalLM"),
           "qwen3": (transformers.Qwen3Config, "Qwen3ForCausalLM")}[arch]
    cfg = cls[0](vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=256, head_dim=8)
    cfg.architectures = [cls[1]]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    folder = tmp_path / arch
    model.save_pretrained(str(folder))
    hf_tok.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("arch,chat_template", [("qwen2", R1_TEMPLATE),
                                                ("qwen3", QWEN3_OFF_TEMPLATE)])
def test_chat_templates_that_open_or_switch_off_the_block(arch, chat_template, tmp_path):
    from faithprobe.models.checkpoints import load_checkpoint
    from faithprobe.models.generate import generate_traces
    from faithprobe.stages.probe import ProbeConfig, probe

    ckpt = load_checkpoint(str(_bpe_folder(tmp_path, arch, chat_template)))
    template = thinking_template(PromptTemplate(chat=True))
    text = template.render("What is (2 + 3) * 2?", STEPS, "10", tokenizer=ckpt.tokenizer).text
    assert text.count("<think>") == 1 and text.count("</think>") == 1  # one block, ours
    assert text.index("<think>") < text.index(STEPS[0]) < text.index("</think>")
    trace = Trace("t", "What is (2 + 3) * 2?", STEPS, "10", options=("10", "5", "7"))
    cfg = ProbeConfig(interventions=("truncate", "delete", "corrupt"), infogain=False, ki=False,
                      max_new_tokens=6,
                      options={"corrupt": {"corrupter": "number",
                                           "continuations": ["keep", "regenerate"]}})
    records = probe(ckpt, arch, [trace], cfg, template=template)
    kinds = {(r.intervention, r.status) for r in records}
    assert ("truncate", "ok") in kinds and ("delete", "ok") in kinds
    assert {r.step for r in records if r.intervention == "truncate"} == {0, 1, 2, 3}
    # a checkpoint writes its own thinking: the steps come from its block
    gen = {"max_new_tokens": 12, "temperature": 0.0, "split": "auto", "max_steps": 8}
    made = generate_traces(ckpt, [trace], template, gen)
    assert len(made) == 1 and "<think>" not in " ".join(made[0].steps)


def test_generated_thinking_becomes_steps():
    from faithprobe.models.generate import steps_of

    text = "Let me add.\n\n2 + 3 = 5.\n\n5 * 2 = 10.\n</think>\n\nThe answer is 10"
    assert steps_of(text, "auto", 8, thinking=True) == ("Let me add.", "2 + 3 = 5.",
                                                       "5 * 2 = 10.")
    assert steps_of(text, "auto", 2, thinking=True) == ("Let me add.", "2 + 3 = 5.")
    # without thinking the same text splits by lines, tags and answer included
    assert "</think>" in steps_of(text, "lines", 8)
