"""Trace generation: each checkpoint writes its own chain of thought.

For each problem the checkpoint continues the rendered prompt (through its chat template where
it has one) greedily or with seeded sampling, up to a length limit; the text is cut at the first
stop string (the forced-answer suffix, "The answer is", "####"), split into steps, and the
answer is then forced with the template's suffix and read back normalised. A generation whose
forced answer cannot be read is kept with ``metadata["no_answer"] = True`` (recorded as
``no_answer`` and counted, never a crash).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from faithprobe.data.prompts import THINK_CLOSE, PromptTemplate
from faithprobe.data.sources import ARITHMETIC_JUDGE, arithmetic_step_truth
from faithprobe.data.thinking import split_thinking
from faithprobe.data.traces import MAX_FIELD_CHARS, SplitMode, Trace, split_steps
from faithprobe.models.checkpoints import Checkpoint
from faithprobe.models.decode import draw_seed, generate
from faithprobe.models.scoring import ScoreItem, continuation_ids, normalize_answer, score

__all__ = ["NO_ANSWER", "generate_traces", "steps_of"]

NO_ANSWER = "no_answer"
_STOPS = ("The answer is", "the answer is", "####", "Final answer", "final answer")


def steps_of(text: str, mode: SplitMode, max_steps: int, *, thinking: bool = False
             ) -> tuple[str, ...]:
    """The steps of a generated chain of thought: split by ``mode``, or, for a thinking model,
    the paragraphs (else sentences) of its ``<think>`` block."""
    if thinking:
        pieces = split_thinking(text)[0]
    else:
        pieces = [s.text for s in split_steps(text, mode)]
    steps = [p[:MAX_FIELD_CHARS] for p in pieces]
    return tuple(s for s in steps if s.strip())[:max_steps]


def generate_traces(
    ckpt: Checkpoint,
    problems: Sequence[Trace],
    template: PromptTemplate,
    gen: dict[str, Any],
    *,
    seed: int = 0,
    label: str = "",
    purpose: str = "generate",
    batch_size: int = 16,
    quiet: bool = True,
) -> list[Trace]:
    """One generated trace per problem (question, gold and options kept; steps and answer the
    checkpoint's own). ``gen`` holds ``max_new_tokens``, ``temperature``, ``split`` and
    ``max_steps`` (the ``[generation]`` section of a run config). Sampled at a temperature
    above 0, problem ``p`` draws from a generator seeded by (``seed``, ``p.id``, ``label``,
    ``purpose``): its trace is the same whatever shard, batch or Ray task it is written in."""
    prompts = [continuation_ids(ckpt, template, p.question, (), p.id) for p in problems]
    stops = tuple(s for s in (THINK_CLOSE if template.thinking else "",
                              template.suffix.strip(), *_STOPS) if s)
    outs = []
    step = max(1, batch_size)
    iterator = range(0, len(prompts), step)
    if not quiet:
        from tqdm.auto import tqdm

        # disable=None: no bar where stderr is not a terminal (a log file)
        iterator = tqdm(iterator, desc=f"{ckpt.spec}: generating", unit="batch", disable=None)
    for lo in iterator:
        outs += generate(ckpt, prompts[lo: lo + step], max_new_tokens=gen["max_new_tokens"],
                         stop=stops, temperature=gen["temperature"], batch_size=batch_size,
                         seeds=[draw_seed(seed, p.id, label, purpose)
                                for p in problems[lo: lo + step]])
    drafts = []
    for p, (text, stopped) in zip(problems, outs):
        text = re.sub(r"<\|[^|]*\|>", " ", text)  # stray special-token text
        steps = steps_of(text, gen["split"], gen["max_steps"], thinking=template.thinking)
        drafts.append((p, steps, stopped, text))
    # force the answer: what the model says after its own reasoning and the suffix
    items = [ScoreItem(p.question, steps, p.options[0] if p.options else "0", p.options, p.id)
             for p, steps, _, _ in drafts]
    scores = score(ckpt, items, template, batch_size=batch_size)
    traces = []
    for (p, steps, stopped, text), sc in zip(drafts, scores):
        pred = sc.pred if not sc.nonfinite else ""
        meta = {**p.metadata, "generated_by": ckpt.spec, "generation_stopped": stopped,
                "generated_text": text[:4000], **({} if pred else {"no_answer": True})}
        truth = None
        meta.pop("step_truth_judge", None)  # the problem's own steps were judged, not these
        if steps and meta.get("source") == "reasoning_gym":
            truth = tuple(arithmetic_step_truth(s) for s in steps)  # exact KI for arithmetic
            meta["step_truth_judge"] = ARITHMETIC_JUDGE
        traces.append(Trace(
            id=p.id, question=p.question, steps=steps, answer=pred or NO_ANSWER,
            step_truth=truth,
            options=p.options if pred or not p.options else None,
            gold=None if p.gold is None else (p.gold if p.options else
                                              normalize_answer(p.gold) or p.gold),
            metadata=meta, unanswerable=p.unanswerable,
        ))
    return traces
