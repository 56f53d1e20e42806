from __future__ import annotations

import json

import pytest
import torch

from faithprobe.data.prompts import Rendered
from faithprobe.data.tokens import CharTokenizer
from faithprobe.errors import FaithprobeError
from faithprobe.models.checkpoints import Checkpoint, check_same_tokenizer, load_checkpoint


def test_native_round_trip(tiny, tiny_folder):
    loaded = load_checkpoint(str(tiny_folder))
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    assert torch.equal(loaded.bridge(ids), tiny.bridge(ids))
    assert loaded.template == tiny.template
    assert loaded.tokenizer.alphabet == tiny.tokenizer.alphabet


def test_missing_and_truncated_weights(tiny_folder, tmp_path):
    with pytest.raises(FaithprobeError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.safetensors"))
    weights = tiny_folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(FaithprobeError, match="damaged or truncated"):
        load_checkpoint(str(tiny_folder))


def test_config_that_does_not_match_weights(tiny_folder):
    meta = json.loads((tiny_folder / "faithprobe.json").read_text())
    meta["config"]["d_model"] = 48
    meta["config"]["d_head"] = 12
    (tiny_folder / "faithprobe.json").write_text(json.dumps(meta))
    with pytest.raises(FaithprobeError, match="config does not match its weights"):
        load_checkpoint(str(tiny_folder))


def test_pickle_refused_then_weights_only(tiny, tiny_folder):
    state = tiny.bridge.state_dict()
    torch.save(state, tiny_folder / "model.pt")
    with pytest.raises(FaithprobeError, match="pickle-based"):
        load_checkpoint(str(tiny_folder / "model.pt"))
    loaded = load_checkpoint(str(tiny_folder / "model.pt"), allow_pickle=True)
    ids = torch.tensor([[1, 5, 6]])
    assert torch.equal(loaded.bridge(ids), tiny.bridge(ids))


def test_pickle_with_code_is_refused_even_when_allowed(tiny_folder):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tiny_folder / "evil.pt").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(FaithprobeError, match="weights_only"):
        load_checkpoint(str(tiny_folder / "evil.pt"), allow_pickle=True)


def test_unknown_organism_and_bad_spec():
    with pytest.raises(FaithprobeError, match="no such organism"):
        load_checkpoint("organism:does-not-exist")
    with pytest.raises(FaithprobeError, match="non-empty"):
        load_checkpoint("  ")


def _r(text: str) -> Rendered:
    return Rendered(text, (("question", 0, len(text)),))


def test_different_tokenizers_refused(tiny):
    other = Checkpoint(tiny.bridge, CharTokenizer("xyz"), "other")
    check_same_tokenizer(tiny, tiny)
    with pytest.raises(FaithprobeError, match="tokenize differently.*trace 't1'.*"
                                              r"\[patching\] enabled = false"):
        check_same_tokenizer(tiny, other, [("t1", _r("xy"), _r("xy"))])


def test_a_tokenizer_with_an_added_token_is_patched_on_traces_that_do_not_use_it(tiny):
    grown = Checkpoint(tiny.bridge, CharTokenizer(tiny.tokenizer.alphabet + "!"), "grown")
    check_same_tokenizer(tiny, grown, [("t1", _r("a=1;a?\na=1"), _r("a=1;a?\na=1"))])
    with pytest.raises(FaithprobeError, match="trace 't2' becomes different token ids"):
        check_same_tokenizer(tiny, grown, [("t1", _r("a=1"), _r("a=1")),
                                           ("t2", _r("a=1"), _r("a=1!"))])
