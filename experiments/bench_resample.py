"""Benchmark: what counterfactual resampling of one trace costs on SmolLM2-135M.

Exact commands (from the repository root, virtualenv active):

    python experiments/bench_resample.py                          # organism:base, seconds
    HF_HUB_OFFLINE=1 python experiments/bench_resample.py --model smollm2 \\
        --out results/bench/resample-smollm2.json                  # SmolLM2-135M, minutes

One four-step arithmetic trace is resampled as a run does (``resample_trace``): ``(n + 1) x K``
rollouts, each continuing the reasoning from a prefix of the trace and answering after the
template's suffix, on one torch thread (``torch.set_num_threads(1)``). Printed: the number of
rollouts, the wall time (model load excluded), the time per rollout, the token positions the
model ran, and each step's importance. The last line is ``rollouts=<r> seconds=<s>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from faithprobe.data.traces import Trace
from faithprobe.models.checkpoints import load_checkpoint
from faithprobe.stages.resample import ResampleConfig, resample_trace

TRACE = Trace("bench", "A shop has 23 boxes of 14 pens. It sells 97 pens, then 58, then gets 36 "
              "more. How many pens are left?",
              ("23 * 14 = 322 pens.", "322 - 97 = 225.", "225 - 58 = 167.", "167 + 36 = 203."),
              "203", gold="203")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["organism", "smollm2"], default="organism")
    parser.add_argument("--samples", type=int, default=4, help="K rollouts a prefix")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ckpt = load_checkpoint("organism:base" if args.model == "organism" else "smollm2")
    trace = TRACE
    if args.model == "organism":
        from faithprobe.organisms.task import generate

        trace = generate("id", 1, 1)[0]
    load_s = time.perf_counter() - t0
    config = ResampleConfig(samples=args.samples, temperature=0.6, top_p=0.95,
                            max_new_tokens=args.max_new_tokens, different="numbers")
    t0 = time.perf_counter()
    records = resample_trace(ckpt, args.model, trace, ckpt.template, config)
    seconds = time.perf_counter() - t0
    rollouts = (trace.n_steps + 1) * config.samples
    detail = records[0].detail
    result = {
        "model": args.model, "steps": trace.n_steps, "samples": config.samples,
        "rollouts": rollouts, "max_new_tokens": config.max_new_tokens, "load_s": load_s,
        "seconds": seconds, "seconds_per_rollout": seconds / rollouts,
        "tokens_run": detail["tokens_run"], "unstopped_rollouts": detail["unstopped_rollouts"],
        "threads": torch.get_num_threads(),
        "importance": [r.value for r in records], "importance_all":
            [r.detail["importance_all"] for r in records],
        "n_different": [r.detail["n_different"] for r in records],
        "kept_answers": [r.detail["kept_answers"] for r in records], "argv": sys.argv,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "argv"}))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"rollouts={rollouts} seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
