"""Long traces close to their floor: logits only where read, duplicates once, tails batched
without long padding, perplexities from one shared run; every result as without them."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import zoo  # noqa: E402

from faithprobe.data.prompts import PromptTemplate  # noqa: E402
from faithprobe.data.traces import Trace  # noqa: E402
from faithprobe.errors import FaithprobeError  # noqa: E402
from faithprobe.models import forward, kvcache  # noqa: E402
from faithprobe.models.checkpoints import load_checkpoint  # noqa: E402
from faithprobe.models.forward import forward_logprobs, forward_token_logprobs  # noqa: E402
from faithprobe.stages.probe import ProbeConfig, probe  # noqa: E402


class Counting:
    """Counts the rows and token positions a bridge computes (padding included)."""

    def __init__(self, bridge) -> None:
        self.inner, self.rows, self.positions, self.kept = bridge, 0, 0, []
        self.widths: list[int] = []

    def __call__(self, ids, *args, **kw):
        self.rows += ids.shape[0]
        self.widths.append(ids.shape[1])
        self.positions += ids.shape[0] * ids.shape[1]
        self.kept.append(kw.get("logits_to_keep"))
        return self.inner(ids, *args, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return load_checkpoint(str(zoo.build("llama", tmp_path_factory.mktemp("zoo") / "llama")))


def full_logprobs(ckpt, seq):
    with torch.no_grad():
        return torch.log_softmax(ckpt.bridge(torch.tensor([list(seq)]))[0].float(), -1)


def seqs_sharing_a_prefix():
    base = [zoo.BOS_ID] + [(7 * k) % zoo.VOCAB for k in range(1, 40)]
    return [base, base[:25] + [3, 4, 5], base[:10] + [9] * 20, base[:30], [5, 6] + base[2:20],
            base[:31] + [1] + base[32:]]


def test_token_logprobs_shared_equal_each_alone(llama, monkeypatch):
    """Perplexity reads from one run of the longest sequence (in chunks) equal each sequence
    run alone: a prefix of it, sequences leaving it early or late, one differing at once."""
    monkeypatch.setattr(forward, "CHUNK", 8)  # the 40-token reference runs in 5 chunks
    seqs = seqs_sharing_a_prefix()
    llama.bridge = Counting(llama.bridge)
    shared = forward_token_logprobs(llama, seqs, batch_size=4, share_prefix=True)
    computed = llama.bridge.positions
    llama.bridge = llama.bridge.inner
    for s, got in zip(seqs, shared):
        lp = full_logprobs(llama, s)
        want = lp[torch.arange(len(s) - 1), torch.tensor(s[1:])]
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-5)
    plain = forward_token_logprobs(llama, seqs, batch_size=4)
    for a, b in zip(shared, plain):
        assert torch.allclose(a, b, atol=1e-5)
    # the reference once, and each other sequence only after its shared prefix (less at most
    # the slack by which sequences leaving close together share one batch)
    def shared_with(s):
        return next((i for i, (a, b) in enumerate(zip(s, seqs[0])) if a != b), len(s))

    bound = len(seqs[0]) + sum(len(s) - max(shared_with(s) - 1 - kvcache.GROUP_SLACK, 0)
                               for s in seqs[1:] if shared_with(s) < len(s))
    assert computed <= bound < sum(len(s) for s in seqs)


def test_reads_only_unembed_the_positions_read_and_duplicates_run_once(llama):
    seqs = seqs_sharing_a_prefix()
    seqs.append(list(seqs[1]))  # the same sequence and reads twice
    reads = [[len(s) - 3, len(s) - 1] for s in seqs]
    llama.bridge = Counting(llama.bridge)
    got = forward_logprobs(llama, seqs, reads, batch_size=16)
    bridge, llama.bridge = llama.bridge, llama.bridge.inner
    assert bridge.rows == len(seqs) - 1
    assert all(k is not None and len(k) <= 2 * len(seqs) for k in bridge.kept)
    for s, r, lp in zip(seqs, reads, got):
        assert torch.allclose(lp, full_logprobs(llama, s)[r], atol=1e-5)
    assert got[-1] is got[1]


def test_tails_of_very_different_lengths_are_not_padded_to_each_other(llama):
    """Edits leaving the trace at the same point: a truncation's short tail is not padded to
    a deletion's long one (a batch's padding stays within a quarter of its tokens)."""
    base = [zoo.BOS_ID] + [(5 * k) % zoo.VOCAB for k in range(1, 60)]
    seqs = [base, base[:20] + [1, 2], base[:20] + [3, 4], base[:20] + base[21:],
            base[:20] + [9] + base[21:]]
    reads = [[len(s) - 1] for s in seqs]
    llama.bridge = Counting(llama.bridge)
    got = forward_logprobs(llama, seqs, reads, batch_size=16, reuse_prefix=base)
    bridge, llama.bridge = llama.bridge, llama.bridge.inner
    tails = sum(len(s) - 20 for s in seqs[1:]) + 1  # unedited: from its read on
    prefix_run = len(base)
    assert bridge.positions - prefix_run <= 1.25 * tails
    for s, r, lp in zip(seqs, reads, got):
        assert torch.allclose(lp, full_logprobs(llama, s)[r], atol=1e-5)


def test_text_suite_with_shared_prefix_equals_the_naive_way(llama):
    """The whole text suite (truncate, corrupt keep, delete, filler, InfoGain of both forms)
    records the same numbers with prefix reuse as with every sequence run alone."""
    template = PromptTemplate(question_prefix="", reasoning_prefix=" ", step_prefix="",
                              step_sep=" ", suffix=" t39", answer_sep=" ")
    llama.template = template
    steps = tuple(zoo.words([3 + k, 4 + k, 5 + k, 6 + k]) for k in range(6))
    trace = Trace("t", zoo.words([1, 2, 7]), steps, "t9 t8", gold="t9 t8")
    runs = {}
    for share in (True, False):
        cfg = ProbeConfig(interventions=("truncate", "corrupt", "filler", "delete"),
                          options={"corrupt": {"corrupter": "generic",
                                               "continuations": ["keep"]}},
                          ki=False, share_prefix=share, batch_size=16 if share else 1)
        runs[share] = probe(llama, "llama", [trace], cfg)
    assert len(runs[True]) == len(runs[False]) > 30
    assert {r.intervention for r in runs[True]} >= {"truncate", "corrupt", "filler", "delete",
                                                    "infogain", "infogain_ppl"}
    for a, b in zip(runs[True], runs[False]):
        assert (a.intervention, a.step, a.pred, a.status) == \
            (b.intervention, b.step, b.pred, b.status)
        for f in ("answer_logprob", "value", "logit_diff", "kl", "pred_prob"):
            x, y = getattr(a, f), getattr(b, f)
            assert (x is None) == (y is None)
            if x is not None:
                assert abs(x - y) <= 1e-5 * max(1.0, abs(y)), (a.intervention, a.step, f)


def test_long_tails_run_in_pieces_as_they_would_whole(llama, monkeypatch):
    """With tails longer than ``PIECE`` each forward feeds at most ``PIECE`` tokens, and the
    reads (out of order, repeated) and greedy continuations are those of whole runs."""
    base = [zoo.BOS_ID] + [(7 * k) % zoo.VOCAB for k in range(1, 40)]
    seqs = [base, base[:6] + [3, 4, 5] + base[9:], base[:12] + base[14:], base[:30]]
    reads = [[len(s) - 1, 8, len(s) - 1, 20] for s in seqs]
    prompts = [len(s) - 5 for s in seqs]

    def scored():
        greedy = forward.GreedyAfter(prompts, lambda k, lp: True, max_new_tokens=6)
        reads_ = [r + list(range(p - 1, len(s))) for r, p, s in zip(reads, prompts, seqs)]
        got = forward_logprobs(llama, seqs, reads_, batch_size=4, reuse_prefix=base,
                               greedy=greedy)
        return got, greedy.results

    whole, whole_greedy = scored()
    monkeypatch.setattr(kvcache, "PIECE", 7)
    monkeypatch.setattr(forward, "PIECE", 7)
    llama.bridge = Counting(llama.bridge)
    try:
        pieces, piece_greedy = scored()
        widest = max(llama.bridge.widths)
    finally:
        llama.bridge = llama.bridge.inner
    assert widest <= 7
    for a, b in zip(pieces, whole):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    assert piece_greedy.keys() == whole_greedy.keys() and len(whole_greedy) == len(seqs)
    for k in whole_greedy:
        assert piece_greedy[k][:2] == whole_greedy[k][:2]
        assert abs(piece_greedy[k][2] - whole_greedy[k][2]) < 1e-4
    for s, r, lp in zip(seqs, reads, pieces):
        assert torch.allclose(lp[: len(r)], full_logprobs(llama, s)[r], atol=1e-5)


@pytest.mark.parametrize("arch", zoo.WORKING)
def test_reads_equal_full_logits_on_every_family(arch, tmp_path, monkeypatch):
    """Unembedding only the positions read (``logits_to_keep``), with and without the shared
    prefix's cache, reads what the whole logits of the same padded batch hold, on every
    family the zoo loads."""
    try:
        ckpt = load_checkpoint(str(zoo.build(arch, tmp_path / arch)))
    except FaithprobeError as exc:  # a family the checkpoint bounds refuse (hrm_text)
        pytest.skip(f"{arch} does not load: {exc}")
    base = [zoo.BOS_ID] + [(3 * k) % zoo.VOCAB for k in range(1, 24)]
    seqs = [base, base[:12] + [5, 6, 7], base[:16] + base[17:]]
    reads = [[len(s) - 2, len(s) - 1] for s in seqs]
    keeps = kvcache.keeps_logits(ckpt)
    with monkeypatch.context() as m:
        m.setattr(forward, "keeps_logits", lambda ckpt: False)
        want = forward_logprobs(ckpt, seqs, reads, batch_size=3)
    for reuse, piece in ((None, None), (base, None), (base, 5)):
        with monkeypatch.context() as m:
            if piece:  # the prefix and every tail run 5 tokens at a time on their cache
                m.setattr(kvcache, "PIECE", piece)
                m.setattr(forward, "PIECE", piece)
            got = forward_logprobs(ckpt, seqs, reads, batch_size=3, reuse_prefix=reuse)
        for a, b in zip(got, want):
            assert torch.allclose(a, b, atol=1e-4), (arch, keeps, reuse is not None, piece)
    if arch == "llama":
        assert keeps
