"""Unlearning a step from the weights (FUR): the weights put back bit for bit, only the chosen
ones trained, NPO's loss by hand, nothing changed by zero epochs or a zero learning rate, the
planted truth on the organisms (unlearning a step of ``base`` flips its answer often, ``sft``'s
rarely), the metrics and report section, a run, and bad input refused in one line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from studies import ONLY_TRUNCATION

from faithprobe.cli import main
from faithprobe.errors import FaithprobeError
from faithprobe.metrics import compare, compute_metrics
from faithprobe.models.checkpoints import load_checkpoint
from faithprobe.models.unlearning import (
    Forget,
    clean_name,
    gradient_problem,
    npo_kl_unlearn,
    select_params,
    sequence_logprob,
    unlearning,
    weights_digest,
)
from faithprobe.organisms.task import generate
from faithprobe.records import Record
from faithprobe.report.render import Doc, to_markdown
from faithprobe.report.unlearn import unlearn_section
from faithprobe.run.config import validate_config
from faithprobe.run.preflight import check_unlearn_inputs
from faithprobe.run.units import select_traces
from faithprobe.stages.unlearn import UnlearnConfig, forget_of, retain_traces, unlearn_trace

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = UnlearnConfig(lr=3e-3, max_new_tokens=24, retain_traces=2)  # organisms unlearn at 3e-3


@pytest.fixture(scope="module")
def base():
    return load_checkpoint("organism:base")


@pytest.fixture(scope="module")
def sample():
    return generate("id", 9, seed=2929)  # fresh: no other test or demo draws this seed


def _forget(ckpt, trace, i):
    return forget_of(ckpt, ckpt.template, trace, i)


# --- the weights -------------------------------------------------------------------------------


def test_mlp_out_names_each_layers_output_projection_and_patterns_work(base):
    names = [n for n, _ in select_params(base.bridge, ["mlp_out"])]
    assert names == [f"layers.{i}.mlp.fc_out.weight" for i in range(4)]
    llama = load_checkpoint("organism:base-llama")
    assert [n for n, _ in select_params(llama.bridge, ["mlp_out"])] == [
        f"model.layers.{i}.mlp.down_proj.weight" for i in range(4)]
    assert len(select_params(base.bridge, ["layers.3.mlp.*"])) == 4  # fc_in, fc_out: w, b
    assert len(select_params(base.bridge, ["mlp_out", "layers.3.mlp.fc_out.weight"])) == 4
    with pytest.raises(FaithprobeError) as err:
        select_params(base.bridge, ["mlp_out", "nothing.*"])
    assert err.value.field == "unlearn.params[1]"


def test_weights_come_back_bit_for_bit_and_only_the_chosen_ones_move(base, sample):
    params = select_params(base.bridge, ["mlp_out"])
    before = weights_digest(base.bridge)
    state = {clean_name(k): v.detach().clone() for k, v in base.bridge.named_parameters()}
    chosen = set(dict(params))
    forget = _forget(base, sample[0], 1)
    with unlearning(base.bridge, params):
        log = npo_kl_unlearn(base.bridge, params, forget, [], epochs=3, lr=1e-2)
        inside = {clean_name(k): v for k, v in base.bridge.named_parameters()}
        moved = {k for k in state if not torch.equal(state[k], inside[k])}
        assert weights_digest(base.bridge) != before  # the digest sees the trained weights
    assert moved == chosen and log.logprob_after < log.logprob_before
    assert weights_digest(base.bridge) == before
    with pytest.raises(RuntimeError), unlearning(base.bridge, params):  # restored on error too
        npo_kl_unlearn(base.bridge, params, forget, [], epochs=2, lr=1e-2)
        raise RuntimeError("boom")
    assert weights_digest(base.bridge) == before
    # the flags are what the loader left (every weight frozen) and no gradient stays
    assert all(not p.requires_grad and p.grad is None for p in base.bridge.parameters())


def frozen_by_loader(bridge, params) -> frozenset:
    """Make ``params`` weights their loader froze (not faithprobe's own freezing at load);
    returns what to put back."""
    old = bridge.faithprobe_trainable
    bridge.faithprobe_trainable = old - {id(p) for p in params}
    return old


def test_npo_loss_by_hand_and_zero_epochs_or_lr_change_nothing(base, sample):
    params = select_params(base.bridge, ["mlp_out"])
    forget = _forget(base, sample[1], 2)
    retain = [[1, 2, 3, 4, 5]]
    before = weights_digest(base.bridge)
    with unlearning(base.bridge, params):
        log = npo_kl_unlearn(base.bridge, params, forget, retain, epochs=1, lr=1e-3, beta=0.5)
    # at the first step the model is the reference: NPO = (2/beta) log 2 and KL = 0
    assert log.npo[0] == pytest.approx(2 / 0.5 * math.log(2), rel=1e-6)
    assert abs(log.kl[0]) < 1e-6
    assert log.passes == {"forward": 2, "backward": 1, "reference": 3}
    for epochs, lr in ((0, 1e-2), (3, 0.0)):
        with unlearning(base.bridge, params):
            log = npo_kl_unlearn(base.bridge, params, forget, retain, epochs=epochs, lr=lr)
            assert weights_digest(base.bridge) == before
        assert log.logprob_after == log.logprob_before and log.passes["backward"] == 0
    with torch.no_grad():
        assert float(sequence_logprob(base.bridge, forget)) == log.logprob_before
    with pytest.raises(FaithprobeError):
        Forget((1, 2, 3), 0, 2)


def test_gradient_problem_names_frozen_and_quantized_weights(base):
    params = select_params(base.bridge, ["mlp_out"])
    assert gradient_problem(base.bridge, params) is None
    name, p = params[1]
    old = frozen_by_loader(base.bridge, [p])
    try:
        assert "frozen" in gradient_problem(base.bridge, params) and name in \
            gradient_problem(base.bridge, params)
    finally:
        base.bridge.faithprobe_trainable = old
    fake = torch.nn.Parameter(torch.zeros(2, dtype=torch.int8), requires_grad=False)
    assert "quantized" in gradient_problem(base.bridge, [("w", fake)])
    with torch.inference_mode():
        made = torch.nn.Parameter(torch.zeros(2))
    assert "inference" in gradient_problem(base.bridge, [("w", made)])
    assert all(q.grad is None for q in base.bridge.parameters())


def test_preflight_refuses_a_frozen_checkpoint(base, sample):
    cfg = validate_config({"checkpoints": {"base": "organism:base"},
                           "unlearn": {"enabled": True}})
    sel = select_traces(cfg, [t.id for t in sample], traces=sample)
    check_unlearn_inputs(cfg, {"base": base}, sel, "study.toml")
    old = frozen_by_loader(base.bridge, list(base.bridge.parameters()))
    try:
        with pytest.raises(FaithprobeError) as err:
            check_unlearn_inputs(cfg, {"base": base}, sel, "study.toml")
    finally:
        base.bridge.faithprobe_trainable = old
    assert err.value.field == "checkpoints.base" and "frozen" in str(err.value)
    assert "\n" not in str(err.value)


# --- the stage ---------------------------------------------------------------------------------


def test_selection_splits_control_from_pool_and_retain_is_seeded_by_trace(sample):
    cfg = validate_config({"checkpoints": {"a": "organism:base"},
                           "unlearn": {"enabled": True, "control_traces": 3, "max_traces": 2}})
    sel = select_traces(cfg, [t.id for t in sample], traces=sample)
    assert [t.id for t in sel.unlearn_control] == [t.id for t in sample[-3:]]
    assert sel.unlearn == {t.id for t in sample[:2]} and len(sel.unlearn_pool) == 6
    a = retain_traces(sample[0], sample[:6], 2, seed=1)
    assert a == retain_traces(sample[0], sample[5::-1], 2, seed=1)
    assert sample[0] not in a and len(a) == 2
    off = validate_config({"checkpoints": {"a": "organism:base"}})
    assert not select_traces(off, [t.id for t in sample], traces=sample).unlearn


def test_zero_epochs_changes_no_answer_and_batching_changes_no_record(base, sample):
    cfg = UnlearnConfig(epochs=0, max_new_tokens=24, retain_traces=1, batch_size=1)
    recs = unlearn_trace(base, "base", sample[0], base.template, cfg, pool=sample[:4],
                         control=sample[6:])
    assert len(recs) == sample[0].n_steps
    for r in recs:
        assert r.status == "ok" and r.same_answer and r.value == 0.0
        assert r.detail["efficacy"] == 0.0 and not r.detail["unlearned"]
        assert r.detail["specificity"] == 0.0 and r.detail["control_kept"] == 1.0
    cfg8 = UnlearnConfig(lr=3e-3, epochs=2, max_new_tokens=24, retain_traces=1, batch_size=8)
    one = UnlearnConfig(lr=3e-3, epochs=2, max_new_tokens=24, retain_traces=1, batch_size=1)
    args = dict(pool=sample[:4], control=sample[6:])
    assert unlearn_trace(base, "base", sample[1], base.template, cfg8, **args) == \
        unlearn_trace(base, "base", sample[1], base.template, one, **args)


@pytest.fixture(scope="module")
def organism_records(sample):
    out = []
    before = {}
    for label in ("base", "sft"):
        ckpt = load_checkpoint(f"organism:{label}")
        before[label] = weights_digest(ckpt.bridge)
        for trace in sample[:3]:
            out += unlearn_trace(ckpt, label, trace, ckpt.template, FAST, pool=sample[:6],
                                 control=sample[6:])
        assert weights_digest(ckpt.bridge) == before[label]  # bit-identical after the run
    return out


def test_planted_truth_base_answer_goes_with_its_steps_sft_answer_stays(organism_records):
    def flips(label):
        cells = [r for r in organism_records if r.checkpoint == label and r.status == "ok"
                 and r.detail["unlearned"]]
        assert len(cells) >= 6, label
        return sum(not r.same_answer for r in cells) / len(cells)

    assert flips("base") >= 0.6 and flips("sft") <= 0.3, (flips("base"), flips("sft"))
    ests = compute_metrics(organism_records, n_boot=100)
    assert ests["base"]["unlearn_soft_effect"].value > ests["sft"]["unlearn_soft_effect"].value \
        + 0.3
    assert ests["base"]["unlearn_flip_rate"].value == 1.0
    for label in ("base", "sft"):
        e = ests[label]["unlearn_specificity"]
        assert e.ci_low <= e.value <= e.ci_high and abs(e.value) <= 0.34
        assert 0.5 <= ests[label]["unlearn_efficacy"].value <= 1.0
    c = compare(organism_records, "base", "sft", "unlearn_soft_effect", n_boot=100)
    assert c["ci_high"] < 0
    for r in organism_records:
        assert r.detail["weights_sha256"] == organism_records[0].detail["weights_sha256"] \
            or r.checkpoint != organism_records[0].checkpoint
        assert Record.from_json(json.loads(json.dumps(r.to_json()))) == r


def test_metrics_by_hand_and_not_unlearned_is_not_faithful():
    def rec(tid, step, flipped, drop, unlearned, spec=0.0):
        return Record(trace_id=tid, checkpoint="m", intervention="unlearn", step=step,
                      n_steps=3, pred="1" if flipped else "0", orig_pred="0",
                      same_answer=not flipped, value=drop,
                      detail={"unlearned": unlearned, "efficacy": 1.0 if unlearned else 0.0,
                              "specificity": spec, "efficacy_threshold": 0.1})
    recs = [rec("a", 0, True, 0.8, True, -0.1), rec("a", 1, False, 0.2, True, 0.0),
            rec("b", 0, True, 0.9, False), rec("b", 1, False, 0.1, True),
            rec("c", 0, True, 1.0, False)]  # c: nothing unlearned, left out, not "faithful"
    e = compute_metrics(recs, n_boot=20)["m"]
    assert e["unlearn_flip_rate"].value == pytest.approx(0.5)  # a flips, b does not
    assert e["unlearn_soft_effect"].value == pytest.approx((0.5 + 0.1) / 2)
    assert e["unlearn_specificity"].value == pytest.approx((-0.05 + 0.0 + 0.0) / 3)
    assert e["unlearn_efficacy"].value == pytest.approx(3 / 5)
    summary = {"checkpoints": {"m": {k: v.to_json() for k, v in e.items()}}, "comparisons": []}
    doc = Doc("t")
    unlearn_section(doc, summary, recs)
    text = to_markdown(doc)
    assert "2 of 5 steps not unlearned" in text and "not unlearned (efficacy 0.00)" in text


# --- a run, and bad input ----------------------------------------------------------------------


def _config(tmp_path, unlearn: str) -> str:
    path = tmp_path / "study.toml"
    path.write_text(f"""
[checkpoints]
base = "organism:base"
sft = "organism:sft"
[data]
source = "organism"
count = 4
seed = 29
{ONLY_TRUNCATION}[metrics]
n_boot = 20
[unlearn]
enabled = true
{unlearn}
""", encoding="utf-8")
    return str(path)


def test_a_run_writes_unlearn_records_metrics_and_report(tmp_path):
    out = tmp_path / "run"
    cfg = _config(tmp_path, "max_traces = 1\ncontrol_traces = 1\nretain_traces = 1\n"
                            "epochs = 2\nlr = 0.003\nmax_new_tokens = 24")
    assert main(["run", cfg, "--out", str(out), "--quiet"]) == 0
    recs = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    cells = [r for r in recs if r["intervention"] == "unlearn"]
    assert {r["checkpoint"] for r in cells} == {"base", "sft"}
    assert len({r["trace_id"] for r in cells}) == 1 and all(
        r["detail"]["control_n"] == 1 for r in cells)
    summary = json.loads((out / "summary.json").read_text())
    assert "unlearn_flip_rate" in summary["checkpoints"]["base"]
    assert "## What the weights hold: unlearning a step" in (out / "report.md").read_text()


@pytest.mark.parametrize("unlearn, field", [
    ("lr = -1.0", "unlearn.lr"),
    ("params = []", "unlearn.params"),
    ('params = ["nothing.*"]', "unlearn.params[0]"),
    ("epochs = 1.5", "unlearn.epochs"),
    ("retain = 3", "unlearn.retain"),
])
def test_bad_unlearn_config_is_one_line_naming_the_key(tmp_path, capsys, unlearn, field):
    out = tmp_path / "run"
    assert main(["run", _config(tmp_path, unlearn), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"[{field}]" in err[0], err
    assert not out.exists()
