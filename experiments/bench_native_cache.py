"""Benchmark: generation on a native model with faithprobe's KV cache against the full forward.

Exact command (from the repository root, virtualenv active)::

    python experiments/bench_native_cache.py --out results/bench/native-cache-organisms.json

What the demo generates most: each organism trace's steps written again after a truncation
(the probe's regeneration: every prefix of the trace, 24 new tokens at most, greedy), and
resampling's rollouts (temperature 3). Both run twice in the same process on one torch thread,
alternating, the faster of two timings kept: once with :mod:`faithprobe.models.native_cache`
and once with it turned off (the bridge's full forward for every new token, as before it
existed). The texts must be the same; the last line is ``speedup=<x> same_texts=<bool>``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from faithprobe.models import decode as decode_module
from faithprobe.models.checkpoints import load_checkpoint
from faithprobe.models.decode import draw_seed, generate, sample_continuations
from faithprobe.models.scoring import continuation_ids
from faithprobe.organisms.task import generate as organism_traces


def _work(ckpt, prompts: list[tuple[int, ...]]) -> tuple[list, tuple]:
    greedy = generate(ckpt, prompts, max_new_tokens=24, stop=["ans:"], batch_size=16)
    seeds = [draw_seed(0, k, "bench") for k in range(len(prompts))]
    sampled = sample_continuations(ckpt, prompts, seeds, max_new_tokens=24, temperature=3.0,
                                   stop=["ans:"], batch_size=16)
    return greedy, sampled.texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ckpt = load_checkpoint("organism:base")
    traces = organism_traces("id", args.traces, 1)
    prompts = [continuation_ids(ckpt, ckpt.template, t.question, t.steps[:k], t.id)
               for t in traces for k in range(t.n_steps)]
    full = decode_module.native_decoder
    seconds: dict[str, list[float]] = {"cached": [], "full": []}
    outputs = {}
    for _ in range(2):
        for name in ("cached", "full"):
            decode_module.native_decoder = full if name == "cached" else (lambda ckpt: None)
            t0 = time.perf_counter()
            outputs[name] = _work(ckpt, prompts)
            seconds[name].append(time.perf_counter() - t0)
    decode_module.native_decoder = full
    same = outputs["cached"] == outputs["full"]
    best = {k: min(v) for k, v in seconds.items()}
    result = {"model": "organism:base", "prompts": len(prompts), "max_new_tokens": 24,
              "threads": 1, "seconds": seconds, "best_s": best,
              "speedup": best["full"] / best["cached"], "same_texts": same,
              "load": os.getloadavg()[0]}
    print(f"{len(prompts)} prompts, greedy + sampled: cached {best['cached']:.2f} s, "
          f"full forward {best['full']:.2f} s (load {result['load']:.1f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"speedup={result['speedup']:.2f} same_texts={same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
