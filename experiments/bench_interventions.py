"""Benchmark: text interventions scored naively vs faithprobe's way (prefix reuse + batching).

    python experiments/bench_interventions.py                      # the organism (seconds)
    python experiments/bench_interventions.py --model smollm2      # SmolLM2-135M (minutes)
    python experiments/bench_interventions.py --model smollm2-random --config-dir DIR \
        --traces-file gsm.jsonl --device cuda    # SmolLM2's shapes, random weights (a GPU box)

For the same traces, the truncation, corruption (later steps kept) and deletion edits are scored
twice: naively (every edited sequence from scratch, one forward each) and as a probe run scores
them (the unedited trace's KV cache reused from each edit's first changed token, edits batched).
It checks that the answer log-probabilities agree, prints the forward-pass equivalents each way
(token positions computed, padding included, over one trace's length) and the wall time, and
prints last a line ``speedup=<x> max_abs_diff=<y>``.
"""

from __future__ import annotations

import argparse
import time

import torch

from faithprobe.edits.interventions import EditContext, make_intervention
from faithprobe.models.checkpoints import load_checkpoint
from faithprobe.models.scoring import score
from faithprobe.stages.probe import item_of

N_TRACES = 4
BATCH_SIZE = 16
KINDS = {"truncate": {}, "corrupt": {"continuations": ["keep"]}, "delete": {}}


class _Counting:
    """Counts the token positions a bridge computes (padding included)."""

    def __init__(self, bridge):
        self.bridge = bridge
        self.positions = 0

    def __call__(self, ids, *args, **kwargs):
        self.positions += int(ids.shape[0] * ids.shape[1])
        return self.bridge(ids, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.bridge, name)


def _traces(model: str, n: int, path: str | None = None):
    if path is not None:
        from faithprobe.data.traces import read_traces

        return [t for t in read_traces(path) if t.n_steps >= 4][:n]
    if model.startswith("organism"):
        from faithprobe.organisms.task import generate

        return [t for t in generate("id", 4 * n, seed=5) if t.n_steps >= 4][:n]
    from faithprobe.data.sources import load_traces

    pool = load_traces({"source": "reasoning_gym", "task": "gsm_symbolic", "count": 40,
                        "seed": 0})
    six = [t for t in pool if t.n_steps >= 4]
    return six[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism:base")
    parser.add_argument("--traces", type=int, default=N_TRACES)
    parser.add_argument("--traces-file", help="JSONL traces (default: generated here)")
    parser.add_argument("--config-dir", help="smollm2-random: config.json + tokenizer files")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write-traces", help="write the benchmark's traces here and stop")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(2)
    if args.write_traces:
        from faithprobe.data.traces import write_traces

        write_traces(args.write_traces, _traces(args.model, args.traces))
        return
    if args.model == "smollm2-random":
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from faithprobe.models.checkpoints import wrap_hf

        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.config_dir))
        ckpt = wrap_hf(hf.to(args.device), AutoTokenizer.from_pretrained(args.config_dir),
                        "smollm2-random", "smollm2-random")
    else:
        ckpt = load_checkpoint(args.model)
        ckpt.bridge.to(args.device)
    counter = _Counting(ckpt.bridge)
    ckpt.bridge = counter
    traces = _traces(args.model, args.traces, args.traces_file)
    ctx = EditContext(ckpt.tokenizer, ckpt.template, seed=0)
    kinds = [make_intervention(k, **o) for k, o in KINDS.items()]
    per_trace = []
    for t in traces:
        items = [item_of(t, t.steps)] + [item_of(t, e.steps) for k in kinds for e in k.edits(t, ctx)
                                       if e.skipped is None]
        per_trace.append(items)
    n_items = sum(len(i) for i in per_trace)
    lengths = []
    for t in traces:
        r = ckpt.template.render(t.question, t.steps, t.answer, tokenizer=ckpt.tokenizer)
        lengths.append(len(ckpt.tokenizer.prefix_ids)
                       + len(ckpt.tokenizer.encode(r.text, r.markup)[0]))
    print(f"model={args.model} device={args.device} traces={len(traces)} "
          f"steps={[t.n_steps for t in traces]} tokens={lengths} edited sequences={n_items}")

    def run(naive: bool):
        counter.positions = 0
        start = time.perf_counter()
        out = []
        for items in per_trace:
            if naive:
                out += [score(ckpt, [it], batch_size=1)[0] for it in items]
            else:
                out += score(ckpt, items, batch_size=BATCH_SIZE, share_prefix=True)
        return out, time.perf_counter() - start, counter.positions

    run(False)  # warm-up
    naive, t_naive, pos_naive = run(True)
    fast, t_fast, pos_fast = run(False)
    diff = max(abs(a.answer_logprob - b.answer_logprob) for a, b in zip(naive, fast))
    same_pred = sum(a.pred == b.pred for a, b in zip(naive, fast))
    mean_len = sum(lengths) / len(lengths)
    print(f"naive:      {t_naive:8.2f} s  forward-pass equivalents {pos_naive / mean_len:8.1f}")
    print(f"faithprobe: {t_fast:8.2f} s  forward-pass equivalents {pos_fast / mean_len:8.1f}")
    print(f"same argmax answer: {same_pred}/{len(naive)}")
    print(f"speedup={t_naive / t_fast:.2f} max_abs_diff={diff:.2e}")


if __name__ == "__main__":
    main()
