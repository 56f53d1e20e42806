"""Thinking models: reasoning inside a ``<think> ... </think>`` block (R1-Distill, Qwen3).

A thinking trace's steps are the block's paragraphs (blank-line separated), or its sentences
when the block is one paragraph; the answer is forced after ``</think>``. Rendering: a
:class:`~faithprobe.data.prompts.PromptTemplate` with ``thinking=True`` opens the block after the
question, unless the chat template's generation prompt already opened it (R1-Distill's does),
drops an empty block a chat template inserts to switch thinking off (Qwen3's
``<think>\\n\\n</think>``), and closes the block at the start of the forced-answer suffix.
"""

from __future__ import annotations

import re
from dataclasses import replace

from faithprobe.data.prompts import THINK_CLOSE, THINK_OPEN, PromptTemplate
from faithprobe.data.traces import split_steps

__all__ = ["THINK_CLOSE", "THINK_OPEN", "split_thinking", "thinking_template"]
_PARAGRAPH = re.compile(r"\n[ \t]*\n")


def split_thinking(text: str) -> tuple[list[str], str, bool]:
    """Steps of the thinking block in ``text``, the text after the block, and whether the
    block was closed.

    ``text`` may start inside the block (a generation whose prompt opened it) or before its
    opening tag; without any tag the whole text is the block. Steps are paragraphs, or
    sentences when there is one paragraph.
    """
    start = text.find(THINK_OPEN)
    body = text[start + len(THINK_OPEN):] if start >= 0 else text
    end = body.find(THINK_CLOSE)
    closed = end >= 0
    after = body[end + len(THINK_CLOSE):] if closed else ""
    body = body[:end] if closed else body
    paragraphs = [p.strip() for p in _PARAGRAPH.split(body) if p.strip()]
    if len(paragraphs) == 1:
        paragraphs = [s.text for s in split_steps(paragraphs[0], "sentences") if s.text]
    return paragraphs, after.strip(), closed


def thinking_template(base: PromptTemplate | None = None,
                      suffix: str = "Therefore, the answer is") -> PromptTemplate:
    """``base`` (default: a plain template; use ``chat=True`` for a chat model) laid out for
    a thinking model: steps one paragraph each inside the block, the answer forced after it."""
    base = base or PromptTemplate()
    return replace(base, thinking=True, reasoning_prefix="\n", step_prefix="",
                   step_sep="\n\n", suffix=suffix)
