"""Prompt templates: how a trace becomes text, with every segment's character span.

A rendered prompt is ``preamble + question + reasoning + suffix + answer``: the preamble is what
a chat template puts before the user's words, the reasoning is the steps each preceded by its
separator, the suffix forces the answer ("Therefore, the answer is"), and the answer follows
after ``answer_sep``. Every separator belongs to the segment after it, so the segments tile the
text and ``faithprobe.tokens.align`` can map them to tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from faithprobe.errors import FaithprobeError

__all__ = ["THINK_CLOSE", "THINK_OPEN", "PromptTemplate", "Rendered", "step_segment"]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_EMPTY_THINK = re.compile(r"<think>\s*</think>\s*$")


def step_segment(i: int) -> str:
    """Canonical segment name of step ``i`` (0-based)."""
    return f"step.{i}"


@dataclass(frozen=True)
class Rendered:
    text: str
    segments: tuple[tuple[str, int, int], ...]  # (name, start, end), tiling ``text``
    # (field, start, end) of the trace's own words: the question, each step, the answer
    fields: tuple[tuple[str, int, int], ...] = ()

    @property
    def markup(self) -> tuple[tuple[int, int], ...]:
        """The character ranges the template wrote (everything but the trace's fields): the
        only places where a tokenizer's special-token text is a special token."""
        out, pos = [], 0
        for _name, start, end in sorted(self.fields, key=lambda f: f[1]):
            if start > pos:
                out.append((pos, start))
            pos = max(pos, end)
        if pos < len(self.text):
            out.append((pos, len(self.text)))
        return tuple(out)

    def char_span(self, name: str) -> tuple[int, int]:
        for seg, start, end in self.segments:
            if seg == name:
                return start, end
        raise FaithprobeError(f"no segment named {name!r}", field=name)


@dataclass(frozen=True)
class PromptTemplate:
    """How question, steps and answer are laid out.

    ``chat`` renders the question as the user's turn through the tokenizer's chat template (and
    the reasoning as the start of the assistant's turn); without one it is plain text.
    ``thinking`` puts the reasoning in a ``<think> ... </think>`` block (see
    :mod:`faithprobe.data.thinking`): the block opens after the question (unless the chat
    template already opened it) and closes at the start of the suffix.
    """

    question_prefix: str = ""
    reasoning_prefix: str = "\n"  # between the question and the first step
    step_prefix: str = ""  # before every step, after the separator
    step_sep: str = "\n"  # between consecutive steps
    suffix: str = "\nTherefore, the answer is"  # forces the answer
    answer_sep: str = " "  # between the suffix and the answer; part of the answer segment
    chat: bool = False
    system: str | None = None  # system message for chat templates
    thinking: bool = False  # reasoning inside <think> ... </think> (R1-Distill, Qwen3)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any], *, source: str | None = None) -> PromptTemplate:
        known = set(cls.__dataclass_fields__)
        for key, value in obj.items():
            if key not in known:
                raise FaithprobeError("unknown template key", source=source, field=key)
            expected = bool if key in ("chat", "thinking") else str
            if key == "system" and value is None:
                continue
            if not isinstance(value, expected):
                raise FaithprobeError(
                    f"expected {expected.__name__}, got {type(value).__name__}",
                    source=source,
                    field=key,
                )
        return cls(**obj)

    def written_steps(self, text: str) -> list[str]:
        """The steps a model wrote after a prefix of the reasoning: ``text`` split at
        ``step_sep`` (a newline when empty), each piece stripped of whitespace and of a leading
        ``step_prefix``; empty pieces dropped."""
        out = []
        prefix = self.step_prefix.strip()
        for piece in text.split(self.step_sep or "\n"):
            piece = piece.strip()
            if prefix and piece.startswith(prefix):
                piece = piece[len(prefix):].strip()
            if piece:
                out.append(piece)
        return out

    def render(
        self,
        question: str,
        steps: Sequence[str],
        answer: str | None = None,
        *,
        tokenizer: Any = None,
    ) -> Rendered:
        """Render; with ``answer=None`` the text ends after the suffix (ready to score)."""
        segments: list[tuple[str, int, int]] = []
        fields: list[tuple[str, int, int]] = []
        text = ""

        def add(name: str, piece: str, field: str | None = None, at: int = 0,
                words: str = "") -> None:
            """Append segment ``name``; the trace's ``words`` (field ``field``) lie in it
            from character ``at``."""
            nonlocal text
            if field is not None:
                fields.append((field, len(text) + at, len(text) + at + len(words)))
            segments.append((name, len(text), len(text) + len(piece)))
            text += piece

        preamble, question_text, after = self._frame(question, tokenizer)
        opening, closing = "", ""
        if self.thinking:
            after = _EMPTY_THINK.sub("", after)  # a template's "thinking off" block
            before = question_text + after
            opening = "" if after.rstrip().endswith(THINK_OPEN) else (
                ("" if before.endswith("\n") else "\n") + THINK_OPEN)
            closing = "\n" + THINK_CLOSE + "\n\n"
        add("preamble", preamble)
        add("question", question_text + after + opening, "question",
            len(question_text) - len(question), question)
        for i, step in enumerate(steps):
            lead = (self.reasoning_prefix if i == 0 else self.step_sep) + self.step_prefix
            add(step_segment(i), lead + step, f"steps[{i}]", len(lead), step)
        add("suffix", closing + self.suffix)
        if answer is not None:
            add("answer", self.answer_sep + answer, "answer", len(self.answer_sep), answer)
        return Rendered(text=text, segments=tuple(segments), fields=tuple(fields))

    def _frame(self, question: str, tokenizer: Any) -> tuple[str, str, str]:
        """(text before the question, the question, text after it up to the reasoning)."""
        if not self.chat:
            return "", self.question_prefix + question, ""
        apply = getattr(tokenizer, "apply_chat_template", None)
        if apply is None or not getattr(tokenizer, "chat_template", None):
            raise FaithprobeError(
                "template asks for chat, but the tokenizer has no chat template",
                source=getattr(tokenizer, "name", None),
                field="chat",
            )
        messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        marker = "\u2063QUESTION\u2063"
        full = apply([*messages, {"role": "user", "content": marker}])
        at = full.find(marker)
        if at < 0:
            raise FaithprobeError("chat template dropped the user's message", field="chat")
        return full[:at], self.question_prefix + question, full[at + len(marker):]
