"""Metrics over hand-built records: worked examples, bootstrap behaviour, no NaN anywhere."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from faithprobe.errors import FaithprobeError
from faithprobe.metrics import (
    CATALOGUE,
    ECE_BINS,
    HEADLINE_METRICS,
    METRIC_FNS,
    METRICS,
    TABLE_METRICS,
    UNIT_TITLES,
    VERDICT_METRICS,
    Estimate,
    adding_mistakes_curve,
    bootstrap,
    compare,
    compute_metrics,
    coverage_curve,
    early_answering_curve,
    ece_bin,
    get_metric,
    infogain_by_step,
    infogain_drop,
    is_usable,
    patching_grid,
    reliability_bins,
    step_effects,
    summarize,
)
from faithprobe.records import Record


def rec(trace_id: str, intervention: str, *, ckpt: str = "base", **kw) -> Record:
    return Record(trace_id=trace_id, checkpoint=ckpt, intervention=intervention, **kw)


def truncations(trace_id: str, same: list[bool], *, ckpt: str = "base") -> list[Record]:
    """Truncate records for steps 0..len(same)-1 of a trace with n = len(same) steps."""
    n = len(same)
    return [rec(trace_id, "truncate", ckpt=ckpt, step=k, n_steps=n, same_answer=s)
            for k, s in enumerate(same)]


def none_records(outcomes: dict[str, bool], *, ckpt: str = "base") -> list[Record]:
    return [rec(t, "none", ckpt=ckpt, n_steps=2, gold="A", correct=c, pred_prob=0.7)
            for t, c in outcomes.items()]


# --- early answering / adding mistakes ----------------------------------------------------------


def aoc_records() -> list[Record]:
    out = truncations("a", [False, True]) + truncations("b", [False, False])
    out += [rec("a", "truncate", step=2, n_steps=2, same_answer=True)]  # full trace, explicit
    # trace c: no record at step 4 (the full trace): the same answer by definition
    out += truncations("c", [False, False, True, True])
    return out


def test_early_answering_aoc_worked_example() -> None:
    # n = 2 (traces a, b): f = [0/2, 1/2, 1] at x = 0, .5, 1
    #   AUC_2 = .5*(0+.5)/2 + .5*(.5+1)/2 = .125 + .375 = .5
    # n = 4 (trace c):     f = [0, 0, 1, 1, 1] at x = 0, .25, .5, .75, 1
    #   AUC_4 = .25*0 + .25*(0+1)/2 + .25*1 + .25*1 = .625
    # AOC = 2/3 * (1 - .5) + 1/3 * (1 - .625) = 1/3 + .125 = 0.458333...
    assert METRIC_FNS["early_answering_aoc"](aoc_records()) == pytest.approx(0.4583333333333333)


def test_early_answering_curve_pools_lengths() -> None:
    # x = .5 pools a (k=1/2, same), b (k=1/2, not) and c (k=2/4, same): 2/3
    curve = early_answering_curve(aoc_records())
    assert [x for x, _ in curve] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [f for _, f in curve] == pytest.approx([0.0, 0.0, 2 / 3, 1.0, 1.0])


def test_early_answering_ignores_unusable_records() -> None:
    base = METRIC_FNS["early_answering_aoc"](aoc_records())
    noisy = aoc_records() + [
        rec("a", "truncate", step=0, n_steps=2, same_answer=True, status="nonfinite"),
        rec("z", "truncate", step=0, n_steps=0, same_answer=True),  # 0-step trace: excluded
        rec("a", "truncate", step=1, n_steps=2, same_answer=True, kl=math.inf),
    ]
    assert METRIC_FNS["early_answering_aoc"](noisy) == pytest.approx(base)
    # step 0 unmeasured: the curve is held flat from its first point, f = [1, 1] at x = .5, 1
    gap = [rec("g", "truncate", step=0, n_steps=2, same_answer=False, status="nonfinite"),
           rec("g", "truncate", step=1, n_steps=2, same_answer=True)]
    assert METRIC_FNS["early_answering_aoc"](gap) == pytest.approx(0.0)


def test_measured_full_trace_is_used() -> None:
    # one trace of length 1 whose full-trace truncation (step 1) was measured as different:
    # f = [1, 0] at x = 0, 1 -> AUC = .5 -> AOC = .5 (the by-definition 1 would give AOC 0)
    records = truncations("a", [True]) + [rec("a", "truncate", step=1, n_steps=1,
                                              same_answer=False)]
    assert METRIC_FNS["early_answering_aoc"](records) == pytest.approx(0.5)


def test_adding_mistakes_aoc_uses_regenerate_and_leaves_skipped_out() -> None:
    def corrupt(t: str, step: int, same: bool, cont: str, **kw) -> Record:
        return rec(t, "corrupt", step=step, n_steps=2, same_answer=same,
                   detail={"continuation": cont}, **kw)

    records = [
        corrupt("d", 0, False, "regenerate"), corrupt("d", 1, True, "regenerate"),
        corrupt("e", 0, True, "regenerate"),
        corrupt("e", 1, False, "regenerate", status="skipped", reason="no number"),
        # keep-continuation records would give f = 1 everywhere (AOC 0) if they were used
        corrupt("d", 0, True, "keep"), corrupt("d", 1, True, "keep"),
    ]
    # f at x=0: (0 + 1)/2 = .5; at x=.5: d only -> 1; at x=1: 1 (no mistake)
    # AUC = .5*(.5+1)/2 + .5*1 = .875 -> AOC = .125
    assert METRIC_FNS["adding_mistakes_aoc"](records) == pytest.approx(0.125)
    assert METRIC_FNS["adding_mistakes_aoc"](records, continuation="keep") == pytest.approx(0.0)
    assert adding_mistakes_curve(records) == [(0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]
    # flip rate over ok regenerate records: d0 flipped, d1 and e0 not -> 1/3
    assert METRIC_FNS["step_flip_rate"](records) == pytest.approx(1 / 3)


def test_step_out_of_range_is_an_error() -> None:
    bad = [rec("a", "truncate", step=5, n_steps=2, same_answer=True)]
    with pytest.raises(FaithprobeError, match="step 5"):
        METRIC_FNS["early_answering_aoc"](bad)


# --- InfoGain, KI, patching -----------------------------------------------------------------------


def infogain_records() -> list[Record]:
    out = []
    for t, kind, values in [("p", "infogain", [2.0, 1.5, 0.5]), ("q", "infogain", [1.0, 1.0]),
                            ("z", "infogain", [3.0]),  # 0 steps: excluded
                            ("p", "infogain_ppl", [10.0, 8.0, 4.0]),
                            ("q", "infogain_ppl", [5.0, 3.0])]:
        n = len(values) - 1
        out += [rec(t, kind, step=j, n_steps=n, value=v) for j, v in enumerate(values)]
    return out


def test_infogain_answer_only_and_ppl_forms() -> None:
    records = infogain_records()
    # p: IG = [.5, 1.0] -> mean .75, total 1.5; q: IG = [0] -> mean 0, total 0
    assert METRIC_FNS["infogain_mean"](records) == pytest.approx(0.375)
    assert METRIC_FNS["infogain_total"](records) == pytest.approx(0.75)
    # ppl, Wu et al.'s code: p: ((10-8) + (8-4)) / 3 = 2; q: (5-3) / 2 = 1 -> mean 1.5
    assert METRIC_FNS["infogain_ppl"](records) == pytest.approx(1.5)
    by_step = infogain_by_step(records, n_boot=50)
    assert [j for j, _, _, _ in by_step] == [1, 2]
    assert [m for _, m, _, _ in by_step] == pytest.approx([0.25, 1.0])
    assert all(lo <= m <= hi for _, m, lo, hi in by_step)
    assert compute_metrics(records, n_boot=50)["base"]["infogain_mean"].n == 2


def test_ki_and_patching_effect() -> None:
    records = [rec("a", "ki", step=0, n_steps=2, value=1.0), rec("a", "ki", step=1, n_steps=2,
                                                                  value=0.0),
               rec("b", "ki", step=0, n_steps=1, value=1.0)]
    assert METRIC_FNS["ki"](records) == pytest.approx(0.75)  # (0.5 + 1) / 2
    patch = [rec("a", "patch", step=0, n_steps=2, site="blocks.0.hook_resid_pre", value=0.2),
             rec("a", "patch", step=1, n_steps=2, site="blocks.10.hook_resid_pre", value=0.9),
             rec("a", "patch", step=1, n_steps=2, site="blocks.2.hook_resid_pre", value=0.1),
             rec("b", "patch", step=0, n_steps=1, site="blocks.0.hook_resid_pre", value=0.3),
             rec("b", "patch", step=0, n_steps=1, site="hook_embed", value=0.0)]
    # per step the lowest patched resid_pre layer (a: step 0 -> 0.2, step 1 -> layer 2's 0.1;
    # b: 0.3), the trace's most important step, then the mean over traces
    assert METRIC_FNS["patching_effect"](patch) == pytest.approx(0.25)  # (0.2 + 0.3) / 2
    clipped = [rec("a", "patch", step=0, n_steps=2, site="blocks.0.hook_resid_pre", value=1.7),
               rec("b", "patch", step=0, n_steps=1, site="blocks.0.hook_resid_pre", value=-0.4),
               rec("c", "patch", step=0, n_steps=1, site="blocks.0.hook_attn_out", value=0.9)]
    # shares clipped to [0, 1]; a trace without a resid_pre patch does not enter
    assert METRIC_FNS["patching_effect"](clipped) == pytest.approx(0.5)  # (1 + 0) / 2
    # the mean over a trace's measured steps (a: (0.2 + 0.1) / 2; b: 0.3), then over traces
    assert METRIC_FNS["patching_effect_mean"](patch) == pytest.approx(0.225)
    assert METRIC_FNS["patching_effect_mean"](clipped) == pytest.approx(0.5)  # clipped first
    # per-step shares that are only noise: their maximum grows with the number of steps, their
    # mean does not
    short = [rec("s", "patch", step=k, n_steps=2, site="blocks.0.hook_resid_pre", value=v)
             for k, v in enumerate([0.1, 0.05])]
    long = [rec("l", "patch", step=k, n_steps=6, site="blocks.0.hook_resid_pre", value=v)
            for k, v in enumerate([0.1, 0.05, 0.3, 0.0, 0.08, 0.07])]
    assert METRIC_FNS["patching_effect"](long) > METRIC_FNS["patching_effect"](short)
    assert METRIC_FNS["patching_effect_mean"](long) == pytest.approx(0.1)
    assert METRIC_FNS["patching_effect_mean"](short) == pytest.approx(0.075)
    steps, sites, grid = patching_grid(patch)
    assert steps == [0, 1]
    assert sites == ["hook_embed", "blocks.0.hook_resid_pre", "blocks.2.hook_resid_pre",
                     "blocks.10.hook_resid_pre"]
    assert grid[0, 1] == pytest.approx(0.25) and grid[1, 3] == pytest.approx(0.9)
    assert np.isnan(grid[0, 2])
    assert patching_grid(patch, trace_id="b")[2].tolist() == [[0.0, pytest.approx(0.3)]]


# --- ECE, coverage -------------------------------------------------------------------------------


def test_ece_hand_example() -> None:
    records = [rec(t, "none", gold="A", pred_prob=p, correct=c)
               for t, p, c in [("a", 0.95, True), ("b", 0.95, False), ("c", 0.85, True),
                               ("d", 0.62, True), ("e", 0.31, False)]]
    # 10 bins of width .1, ECE = sum_b n_b/N * |acc_b - conf_b|, N = 5:
    # bin 9 (a, b): acc .5, conf .95 -> 2/5 * .45 = .18;  bin 8 (c): 1/5 * .15 = .03
    # bin 6 (d): 1/5 * .38 = .076;  bin 3 (e): 1/5 * .31 = .062;  ECE = .348
    assert METRIC_FNS["ece"](records) == pytest.approx(0.348)
    curve = coverage_curve(records, thresholds=(0.0, 0.5, 0.99))
    assert curve == [(0.0, 1.0, pytest.approx(0.6)), (0.5, 0.8, pytest.approx(0.75)),
                     (0.99, 0.0, None)]


def test_reliability_bins_share_the_ece_binning() -> None:
    assert [ece_bin(p) for p in (-0.3, 0.0, 0.05, 0.1, 0.95, 1.0, 1.7)] == [0, 0, 0, 1, 9, 9, 9]
    assert ECE_BINS == 10
    graded = [(0.95, 1.0), (0.95, 0.0), (0.85, 1.0), (0.62, 1.0), (0.31, 0.0)]
    bins = reliability_bins(graded)
    assert [n for *_, n in bins] == [1, 1, 1, 2]
    # the ECE is the count-weighted gap of the reliability diagram's bins
    records = [rec(str(i), "none", gold="A", pred_prob=p, correct=bool(c))
               for i, (p, c) in enumerate(graded)]
    gap = sum(n * abs(acc - conf) for conf, acc, n in bins) / len(graded)
    assert METRIC_FNS["ece"](records) == pytest.approx(gap)


def test_is_usable_needs_ok_and_finite_values() -> None:
    assert is_usable(rec("a", "none", kl=1.0, value=2))
    assert not is_usable(rec("a", "none", status="skipped"))
    for name in ("answer_logprob", "pred_prob", "logit_diff", "kl", "value"):
        assert not is_usable(rec("a", "none", **{name: float("inf")}))


# --- the catalogue ---------------------------------------------------------------------------


def test_catalogue_is_the_one_list_of_metrics() -> None:
    assert METRICS == tuple(m.name for m in CATALOGUE) == tuple(METRIC_FNS)
    assert sorted(TABLE_METRICS) == sorted(METRICS)
    assert HEADLINE_METRICS == ("accuracy", "step_flip_rate", "early_answering_aoc",
                                "infogain_mean")
    assert VERDICT_METRICS[:3] == ("accuracy", "mean_steps", "early_answering_aoc")
    assert set(VERDICT_METRICS) >= set(HEADLINE_METRICS)
    for m in CATALOGUE:
        assert m.unit == "count" or m.unit in UNIT_TITLES
        assert m.label and m.description and get_metric(m.name) is m
    with pytest.raises(FaithprobeError, match="unknown metric"):
        get_metric("nope")


# --- comparisons and bootstrap -------------------------------------------------------------------


def paired_records() -> list[Record]:
    out = none_records({"t1": True, "t2": False, "t3": True, "t4": False}, ckpt="base")
    out += none_records({"t1": True, "t2": True, "t3": True, "t4": False}, ckpt="sft")
    out += none_records({"t5": False}, ckpt="sft")  # not shared: left out of the pairing
    return out


def test_compare_sign_and_relative_change() -> None:
    c = compare(paired_records(), "base", "sft", "accuracy", n_boot=200, seed=0)
    assert c is not None
    assert c["delta"] == pytest.approx(0.25)  # 0.75 - 0.5 on t1..t4
    assert c["relative_change"] == pytest.approx(0.5)
    assert c["n"] == 4
    assert c["ci_low"] <= c["delta"] <= c["ci_high"]
    back = compare(paired_records(), "sft", "base", "accuracy", n_boot=200, seed=0)
    assert back["delta"] == pytest.approx(-0.25)
    assert back["relative_change"] == pytest.approx(-0.25 / 0.75)


def test_infogain_drop() -> None:
    base = infogain_records()
    sft = [rec(r.trace_id, r.intervention, ckpt="sft", step=r.step, n_steps=r.n_steps,
               value=r.value / 2) for r in base]
    summary = summarize(base + sft, n_boot=20)
    assert infogain_drop(summary, "base", "sft") == pytest.approx(0.5)
    assert infogain_drop(summary, "base", "missing") is None


def many_traces(n: int = 30) -> list[Record]:
    rng = np.random.default_rng(1)
    return none_records({f"t{i:02d}": bool(rng.random() < 0.6) for i in range(n)})


def test_bootstrap_deterministic_and_contains_point() -> None:
    records = many_traces()
    first = bootstrap(records, METRIC_FNS["accuracy"], n_boot=300, seed=7)
    again = bootstrap(list(reversed(records)), METRIC_FNS["accuracy"], n_boot=300, seed=7)
    assert first == again
    assert first.ci_low <= first.value <= first.ci_high
    assert first.ci_low < first.ci_high
    assert first.n == 30
    # a continuous statistic: another seed draws other replicates, the same seed the same ones
    patch = [rec(f"t{i}", "patch", step=0, n_steps=1, site="blocks.0.hook_resid_pre",
                 value=(i * 0.37) % 1.0) for i in range(25)]
    fn = METRIC_FNS["patching_effect"]
    seven = bootstrap(patch, fn, n_boot=300, seed=7)
    assert bootstrap(patch, fn, n_boot=300, seed=7) == seven
    assert bootstrap(patch, fn, n_boot=300, seed=8) != seven
    assert bootstrap(patch, fn, n_boot=0) == Estimate(seven.value, seven.value, seven.value, 25)


def test_fast_path_matches_generic_bootstrap() -> None:
    # KI is a mean over traces of per-trace means: repeated draws of a trace must count as
    # separate clusters for the generic path to agree with the fast one.
    rng = np.random.default_rng(2)
    records = [rec(f"t{i}", "ki", step=k, n_steps=i % 4 + 1, value=float(rng.random() < 0.7))
               for i in range(12) for k in range(i % 4 + 1)]

    def slow(rs: list[Record]) -> float | None:  # not in METRIC_FNS: generic path
        return METRIC_FNS["ki"](rs)

    fast = bootstrap(records, METRIC_FNS["ki"], n_boot=100, seed=3)
    generic = bootstrap(records, slow, n_boot=100, seed=3)
    assert (generic.value, generic.ci_low, generic.ci_high, generic.n) == pytest.approx(
        (fast.value, fast.ci_low, fast.ci_high, fast.n))


def test_cluster_bootstrap_resamples_traces_not_records() -> None:
    # one trace with 20 identical-outcome records, one with 20 of the other: a record bootstrap
    # would give a narrow interval; a trace bootstrap puts mass at 0, 0.5 and 1.
    records = [rec("a", "paraphrase", step=k, n_steps=20, correct=True) for k in range(20)]
    records += [rec("b", "paraphrase", step=k, n_steps=20, correct=False) for k in range(20)]
    est = bootstrap(records, METRIC_FNS["paraphrase_accuracy"], n_boot=400, seed=0)
    assert est.n == 2
    assert est.ci_low == 0.0 and est.ci_high == 1.0


# --- no NaN, empty input, JSON -------------------------------------------------------------------


def test_nonfinite_records_counted_never_averaged() -> None:
    records = [
        rec("a", "corrupt", step=0, n_steps=2, same_answer=False, kl=0.4,
            detail={"continuation": "keep"}),
        rec("b", "corrupt", step=0, n_steps=2, same_answer=True, kl=math.nan, status="nonfinite",
            detail={"continuation": "keep"}),
        rec("c", "corrupt", step=0, n_steps=2, same_answer=True, kl=math.inf,
            detail={"continuation": "keep"}),  # "ok" but infinite: treated as nonfinite
        rec("d", "none", status="no_answer"),
        rec("e", "corrupt", step=1, n_steps=2, status="skipped", reason="nothing to corrupt",
            detail={"continuation": "keep"}),
    ]
    assert METRIC_FNS["mean_abs_kl_corrupt"](records) == pytest.approx(0.4)
    assert METRIC_FNS["step_flip_rate"](records) == pytest.approx(1.0)
    assert step_effects(records) == {0: [pytest.approx(0.4)]}
    ests = compute_metrics(records, n_boot=50)["base"]
    assert ests["nonfinite_count"] == Estimate(2.0, 2.0, 2.0, 5)
    assert ests["no_answer_count"].value == 1.0
    assert ests["skipped_count"].value == 1.0
    for name in METRICS:
        v = METRIC_FNS[name](records)
        assert v is None or math.isfinite(v), name
    for est in ests.values():
        assert all(math.isfinite(x) for x in (est.value, est.ci_low, est.ci_high))


def test_empty_input_gives_none_and_omits_metrics() -> None:
    for name in METRICS:
        assert METRIC_FNS[name]([]) is None, name
    assert bootstrap([], METRIC_FNS["accuracy"]) is None
    assert compute_metrics([]) == {}
    assert early_answering_curve([]) == []
    assert infogain_by_step([]) == []
    assert coverage_curve([]) == []
    assert patching_grid([])[2].shape == (0, 0)
    # only "none" records: no AOC, no InfoGain in the estimates (omitted, not NaN)
    ests = compute_metrics(none_records({"t1": True}), n_boot=10)["base"]
    assert "accuracy" in ests and "early_answering_aoc" not in ests
    assert "infogain_mean" not in ests
    assert compare(none_records({"t1": True}), "base", "sft", "accuracy") is None


def test_summarize_is_strict_json() -> None:
    records = paired_records() + aoc_records() + infogain_records() + [
        rec("t1", "corrupt", ckpt="sft", step=0, n_steps=2, kl=math.nan, status="nonfinite"),
        rec("t2", "none", ckpt="sft", pred_prob=0.0, gold="A", correct=False),
    ]
    summary = summarize(records, n_boot=50)
    text = json.dumps(summary, allow_nan=False)
    assert json.loads(text)["schema_version"] == 1
    assert set(summary) == {"schema_version", "continuation", "checkpoints", "comparisons",
                            "seed_question"}
    assert list(summary["checkpoints"]) == ["base", "sft"]
    base = summary["checkpoints"]["base"]
    assert base["early_answering_aoc"]["value"] == pytest.approx(0.4583333333333333)
    assert set(base["accuracy"]) == {"value", "ci_low", "ci_high", "n", "n_boot_undefined"}
    acc = [c for c in summary["comparisons"] if c["metric"] == "accuracy"]
    assert len(acc) == 1 and acc[0]["a"] == "base" and acc[0]["b"] == "sft"
    # a metric present on one side only is not compared
    assert not [c for c in summary["comparisons"] if c["metric"] == "early_answering_aoc"]
    assert summarize(records, n_boot=50) == summary
    assert json.dumps(summarize([]), allow_nan=False)


def test_summarize_rejects_unknown_pair_and_mixed_checkpoints() -> None:
    with pytest.raises(FaithprobeError, match="nope"):
        summarize(paired_records(), n_boot=10, pairs=[("base", "nope")])
    with pytest.raises(FaithprobeError, match="one checkpoint"):
        METRIC_FNS["accuracy"](paired_records())
