"""Exact against reference in bfloat16: the fast patching path on one device and dtype.

Exact command (from the repository root; run by ``experiments/gpu_check.sh``)::

    python experiments/gpu_exact_check.py --device cuda \
        --out results/bench/gpu-exact-smollm2-bf16.json
    python experiments/gpu_exact_check.py --device cpu --model organism:base-llama --out /tmp/x.json

SmolLM2-135M-Instruct (``smollm2``) is loaded in bfloat16 and in float32 on ``--device``. The
step x layer patching grid (every layer, every component) of one arithmetic prompt with two of
its numbers changed is measured with the fast path and with the reference loop (one full
forward a cell) in bfloat16, and with the reference loop in float32. It passes when the model
keeps the fast path (:func:`~faithprobe.activation.check_fast_path`), the fast path is within
the half-precision tolerance of the bfloat16 reference (5e-2 of the largest logit difference,
at least 1) and within 0.15 of float32's reference (the whole model runs in bfloat16; the
unembedding in float32). It writes the gaps, the shares' largest gap to float32's, the
tolerances and whether it passed; exit 1 when it did not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from faithprobe.activation import Answer, check_fast_path, patch_steps
from faithprobe.models.checkpoints import load_checkpoint

HALF_TOLERANCE = 5e-2  # faithprobe.activation.core.tolerance in half precision
VS_FLOAT32 = 0.15  # tests/test_bf16.py: fast bfloat16 against float32's reference loop
PROMPTS = {  # (clean, corrupted, answer token, alternative)
    "smollm2": ("Q: 23 + 48 - 15? 23 + 48 = 71. 71 - 15 = 56. Therefore, the answer is",
                "Q: 23 + 48 - 15? 23 + 48 = 74. 74 - 15 = 59. Therefore, the answer is",
                " 5", " 9"),
    "organism": ("t3: 4 + 5 = 9\n9 + 2 = 11\nA: 1", "t3: 4 + 6 = 8\n8 + 2 = 10\nA: 1",
                 "1", "0"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    half = load_checkpoint(args.model, device=args.device, dtype="bfloat16")
    full = load_checkpoint(args.model, device=args.device, dtype="float32")
    tok = half.tokenizer
    text, bad, ans, alt = PROMPTS["smollm2" if args.model == "smollm2" else "organism"]
    clean = tok.prefix_ids + tok.encode(text)[0]
    corrupted = tok.prefix_ids + tok.encode(bad)[0]
    if len(clean) != len(corrupted):
        raise SystemExit("the corrupted prompt changes the token count")
    diff = [i for i, (x, y) in enumerate(zip(clean, corrupted)) if x != y]
    spans = [(diff[0], diff[0] + 1), (diff[-1], diff[-1] + 1)]
    last = len(clean) - 1
    answer = Answer.of(last, tok.encode(ans)[0][-1], tok.encode(alt)[0][-1])
    inputs = (torch.tensor([clean], device=args.device),
              torch.tensor([corrupted], device=args.device), spans, answer)
    fast_path = check_fast_path(half.bridge)
    ref = patch_steps(half.bridge, *inputs, method="reference")
    fast = patch_steps(half.bridge, *inputs, method="fast")
    ref32 = patch_steps(full.bridge, *inputs, method="reference")
    gap = float((fast.logit_diff - ref.logit_diff).abs().max()) / max(
        1.0, float(ref.logit_diff.abs().max()))
    gap32 = float((fast.logit_diff - ref32.logit_diff).abs().max()) / max(
        1.0, float(ref32.logit_diff.abs().max()))
    share = (fast.share - ref32.share).abs()
    passed = fast_path.method == "fast" and gap <= HALF_TOLERANCE and gap32 <= VS_FLOAT32
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    result = {"model": args.model, "dtype": "bfloat16", "device": args.device, "card": card,
              "fast_path": fast_path.to_json(), "cells": int(fast.logit_diff.numel()),
              "fast_vs_reference": gap, "fast_vs_reference_tolerance": HALF_TOLERANCE,
              "fast_vs_float32_reference": gap32, "fast_vs_float32_tolerance": VS_FLOAT32,
              "share_gap_vs_float32": float(share[~share.isnan()].max())
              if (~share.isnan()).any() else None,
              "logits_dtype": str(fast.logit_diff.dtype).replace("torch.", ""),
              "seconds": time.perf_counter() - t0, "passed": passed}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"exact vs reference ({args.model}, bfloat16, {card}): fast - reference {gap:.3g} "
          f"(<= {HALF_TOLERANCE}), fast - float32 reference {gap32:.3g} (<= {VS_FLOAT32}): "
          f"{'passed' if passed else 'FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
