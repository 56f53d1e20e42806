"""Counterfactual resampling: the seeded sampler, the resample stage, its metric and config."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest

pytest.importorskip("transformers")

import zoo  # noqa: E402

from faithprobe.cli import main
from faithprobe.data.traces import Trace
from faithprobe.errors import FaithprobeError
from faithprobe.metrics import compute_metrics
from faithprobe.models.checkpoints import load_checkpoint
from faithprobe.models.decode import sample_continuations
from faithprobe.organisms.task import generate as organism_problems
from faithprobe.run.config import validate_config
from faithprobe.run.units import probe_traces, select_traces
from faithprobe.stages.resample import (
    ResampleConfig,
    differs,
    hidden_similarity,
    resample_trace,
    rollout_seed,
    total_variation,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _prompts(ckpt, texts):
    return [ckpt.tokenizer.prefix_ids + ckpt.tokenizer.encode(t)[0] for t in texts]


def test_samples_are_seeded_and_the_same_in_any_batch(tiny):
    prompts = _prompts(tiny, ["a=1;", "a=1;", "b=22;c", "q?"]) * 3
    seeds = [rollout_seed(0, "t", j, k) for j, k in enumerate(range(len(prompts)))]
    kw = dict(max_new_tokens=6, temperature=1.5, top_p=0.9, stop=[";"])
    together = sample_continuations(tiny, prompts, seeds, batch_size=64, **kw)
    alone = [sample_continuations(tiny, [p], [s], batch_size=1, **kw)
             for p, s in zip(prompts, seeds)]
    assert together.texts == tuple(a.texts[0] for a in alone)
    assert together.stopped == tuple(a.stopped[0] for a in alone)
    again = sample_continuations(tiny, prompts, seeds, batch_size=3, **kw)
    assert again.texts == together.texts
    other = sample_continuations(tiny, prompts, [s + 1 for s in seeds], **kw)
    assert other.texts != together.texts  # the seed is what draws them
    # the same prompt with different seeds gives different draws (a sampler, not argmax)
    assert len(set(together.texts[:2] + together.texts[4:6])) > 1
    for text, stopped in zip(together.texts, together.stopped):
        assert ";" not in text and (stopped or len(text) <= 6)


def test_hf_samples_share_the_prefix_cache_and_match_recomputation(tmp_path):
    ckpt = load_checkpoint(str(zoo.build("llama", tmp_path / "llama")))
    prefix = list(range(5, 25))
    k, new = 6, 5
    prompts = [prefix] * k
    seeds = list(range(k))
    kw = dict(max_new_tokens=new, temperature=1.0)
    shared = sample_continuations(ckpt, prompts, seeds, shared_prefix=prefix, **kw)
    plain = sample_continuations(ckpt, prompts, seeds, **kw)
    assert shared.texts == plain.texts
    # the prefix ran once: then one token a row a step (the prompt's last token first)
    assert shared.tokens_run <= len(prefix) + k * new
    assert plain.tokens_run >= k * len(prefix)


def test_total_variation_and_different_rules():
    assert total_variation(Counter("aab"), Counter("aab")) == 0.0
    assert total_variation(Counter("aa"), Counter("bb")) == 1.0
    assert total_variation(Counter("ab"), Counter("aa")) == pytest.approx(0.5)
    new = ["b=9", " b=9 ", "B=9", "b = 9", "b=3", ""]
    assert differs("b=9", new, "any") == [True] * 6
    assert differs("b=9", new, "text") == [False, False, False, True, True, True]
    assert differs("b=9", new, "numbers") == [False, False, False, False, True, True]
    assert differs("b=9", ["x"] * 3, "cosine", similarity=[0.95, 0.5, float("nan")],
                   threshold=0.8) == [False, True, True]
    with pytest.raises(FaithprobeError):
        differs("b=9", new, "cosine")


def test_hidden_similarity_is_one_for_the_same_step(tiny):
    sim = hidden_similarity(tiny, "b=9", ["b=9", "zzz q", ""])
    assert sim[0] == pytest.approx(1.0)
    assert sim[1] < 1.0
    assert sim[2] != sim[2]  # an empty step has no vector: NaN, counted as different


def test_cosine_rule_in_the_stage_reads_hidden_states(tiny):
    trace = Trace("t", "a=1,b=a+1;b?", ("a=1", "b=2"), "2", options=tuple("0123456789"))
    config = ResampleConfig(samples=3, temperature=2.0, max_new_tokens=6, different="cosine",
                            threshold=0.999)
    recs = resample_trace(tiny, "x", trace, tiny.template, config)
    for r in recs:
        sim = r.detail["similarity"]
        assert len(sim) == 3
        assert r.detail["n_different"] == sum(not s >= 0.999 for s in sim)
        same = [s for s, new in zip(sim, r.detail["resampled_steps"])
                if new == trace.steps[r.step]]
        assert all(s == pytest.approx(1.0) for s in same)


def _organism_traces(n):
    return organism_problems("id", n, 1)


DEMO_LIKE = ResampleConfig(samples=6, temperature=3.0, top_p=1.0, max_new_tokens=24,
                           different="numbers")


def test_resample_records_are_deterministic_and_complete():
    ckpt = load_checkpoint("organism:base")
    trace = _organism_traces(1)[0]
    recs = resample_trace(ckpt, "base", trace, ckpt.template, DEMO_LIKE)
    assert recs == resample_trace(ckpt, "base", trace, ckpt.template, DEMO_LIKE)
    assert [r.step for r in recs] == list(range(trace.n_steps))
    for r in recs:
        d = r.detail
        assert sum(d["kept_answers"].values()) == DEMO_LIKE.samples
        assert sum(d["resampled_answers"].values()) == DEMO_LIKE.samples
        assert sum(d["different_answers"].values()) == d["n_different"]
        assert d["n_different"] == sum(differs(trace.steps[r.step], d["resampled_steps"],
                                               "numbers"))
        if r.status == "ok":
            assert 0.0 <= r.value <= 1.0
            assert r.value == pytest.approx(total_variation(
                Counter(d["kept_answers"]), Counter(d["different_answers"])))
        else:
            assert d["n_different"] == 0 and r.value is None


def exact_tv_bootstrap(kept: dict[str, int], chosen: dict[str, int]
                       ) -> list[tuple[float, float]]:
    """(value, probability) of every outcome of one bootstrap replicate of the total variation
    between the kept and the chosen answers: both multisets redrawn with replacement, every
    multinomial outcome enumerated (the oracle of the stage's 200 seeded draws)."""
    def outcomes(counts: dict[str, int]):
        names, n = list(counts), sum(counts.values())
        probs = [counts[x] / n for x in names]
        for split in itertools.product(range(n + 1), repeat=len(names)):
            if sum(split) == n:
                p = math.factorial(n) * math.prod(
                    q ** c / math.factorial(c) for q, c in zip(probs, split))
                yield {x: c / n for x, c in zip(names, split)}, p
    out = []
    for (fa, pa), (fb, pb) in itertools.product(list(outcomes(kept)), list(outcomes(chosen))):
        tv = sum(abs(fa.get(x, 0.0) - fb.get(x, 0.0)) for x in {*fa, *fb}) / 2
        out.append((tv, pa * pb))
    return out


def quantile(dist: list[tuple[float, float]], q: float) -> float:
    total = 0.0
    for value, p in sorted(dist):
        total += p
        if total >= q - 1e-12:
            return value
    return max(v for v, _ in dist)


def test_sampling_interval_matches_the_exact_bootstrap_distribution():
    """Each step's interval and standard error against the replicate distribution enumerated
    exactly from its answer counts: the 2.5th percentile of 200 draws lies between the exact
    0.1% and 10% quantiles, the 97.5th between the 90% and 99.9% ones (a miss has a probability
    under 1e-4), and the standard error is within 25% of the exact one (5 of its own standard
    errors at 200 draws)."""
    ckpt = load_checkpoint("organism:base")
    checked = degenerate = 0
    for trace in _organism_traces(4):
        for r in resample_trace(ckpt, "base", trace, ckpt.template, DEMO_LIKE):
            if r.status != "ok":
                continue
            d = r.detail
            dist = exact_tv_bootstrap(d["kept_answers"], d["different_answers"])
            mean = sum(v * p for v, p in dist)
            sd = math.sqrt(max(0.0, sum((v - mean) ** 2 * p for v, p in dist)))
            assert quantile(dist, 0.001) - 1e-9 <= d["ci_low"] <= quantile(dist, 0.10) + 1e-9
            assert quantile(dist, 0.90) - 1e-9 <= d["ci_high"] <= quantile(dist, 0.999) + 1e-9
            assert abs(d["se"] - sd) <= 0.25 * sd + 1e-9
            checked += 1
            degenerate += sd < 1e-12
    assert checked >= 6 and checked - degenerate >= 2  # some intervals have a width to check


def test_records_are_the_same_in_another_process():
    """Float sums in a fixed order: string hashing (PYTHONHASHSEED) changes no digit."""
    import os
    import subprocess
    import sys

    script = ("import torch; torch.set_num_threads(1)\n"
              "from faithprobe.models.checkpoints import load_checkpoint\n"
              "from faithprobe.organisms.task import generate\n"
              "from faithprobe.records import dumps_record\n"
              "from faithprobe.stages.resample import ResampleConfig, resample_trace\n"
              "c = load_checkpoint('organism:base')\n"
              "t = generate('id', 2, 1)[1]\n"
              "cfg = ResampleConfig(samples=6, temperature=3.0, top_p=1.0, max_new_tokens=24,"
              " different='numbers')\n"
              "print('\\n'.join(dumps_record(r) for r in resample_trace(c, 'b', t, c.template,"
              " cfg)))\n")
    outs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": str(h),
                                            "OMP_NUM_THREADS": "1"}).stdout
            for h in (1, 2)]
    assert outs[0] == outs[1] and '"status": "ok"' in outs[0]


def test_organisms_separate_base_above_sft():
    """The faithful organism's answer follows a resampled step; the shortcut's does not."""
    traces = _organism_traces(4)
    records = []
    for label in ("base", "sft"):
        ckpt = load_checkpoint(f"organism:{label}")
        for t in traces:
            records += resample_trace(ckpt, label, t, ckpt.template, DEMO_LIKE)
    est = {k: v["resampling_importance"] for k, v in compute_metrics(records, n_boot=500).items()}
    assert est["base"].ci_low > est["sft"].ci_high
    assert est["base"].value > 0.5 and est["sft"].value < 0.1


def test_runs_resample_the_selected_traces_the_same_together_or_alone(tiny):
    traces = [Trace(f"t{i}", f"a={i},b=a+1;b?", (f"a={i}", f"b={i + 1}"), str(i + 1),
                    options=tuple("0123456789")) for i in range(3)]
    cfg = validate_config({
        "checkpoints": {"x": "tiny"}, "seed": 3,
        "probe": {"interventions": ["truncate"], "max_new_tokens": 4},
        "infogain": {"enabled": False}, "ki": {"enabled": False},
        "patching": {"enabled": False},
        "resample": {"enabled": True, "samples": 3, "temperature": 2.0, "max_new_tokens": 8,
                     "different": "any", "max_traces": 2}})
    sel = select_traces(cfg, [t.id for t in traces])
    assert not sel.patch and sel.resample == {"t0", "t1"}

    def resampled(batch):
        return [r for _, recs in probe_traces(cfg, tiny, "x", tiny.template, batch,
                                              selection=sel)
                for r in recs if r.intervention == "resample"]

    together = resampled(traces)
    alone = [r for t in traces for r in resampled([t])]
    assert together == alone
    assert {r.trace_id for r in together} == {"t0", "t1"}
    assert all(r.status == "ok" for r in together)  # "any": every resample counts


def test_selection_is_the_first_traces_of_the_whole_list_and_pickles():
    import pickle

    cfg = validate_config({"checkpoints": {"x": "organism:base"},
                           "patching": {"max_traces": 1},
                           "resample": {"enabled": True, "max_traces": 3}})
    sel = select_traces(cfg, ["a", "b", "c", "d"])
    back = pickle.loads(pickle.dumps(sel))  # as engines ship it to their tasks
    assert back == sel and back.patch == {"a"} and back.resample == {"a", "b", "c"}


@pytest.mark.parametrize(("section", "fragment"), [
    ('different = "meaning"', "[resample.different]"),
    ("samples = 1", "[resample.samples]"),
    ("top_p = 0.0", "[resample.top_p]"),
    ("temperature = 0", "[resample.temperature]"),
    ("threshold = 2.0", "[resample.threshold]"),
    ('bogus = 1', "[resample.bogus]: unknown key"),
])
def test_bad_resample_options_exit_2_with_one_line(tmp_path, capsys, section, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(f'[checkpoints]\nbase = "organism:base"\n[resample]\nenabled = true\n'
                    f"{section}\n", encoding="utf-8")
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_resample_config_checks_its_own_values():
    with pytest.raises(FaithprobeError, match="samples"):
        ResampleConfig(samples=1)
    with pytest.raises(FaithprobeError, match="different"):
        ResampleConfig(different="meaning")  # type: ignore[arg-type]
