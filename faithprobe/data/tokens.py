"""Tokenizers and token alignment.

faithprobe talks to every tokenizer through one small interface, :class:`Tokenizer`: ids with
character offsets, decoding, and the ids a sequence starts with. Two implementations: the
character-level :class:`CharTokenizer` of faithprobe's tiny models, and :class:`HFTokenizer`,
which wraps any Hugging Face fast tokenizer (BPE or SentencePiece) loaded offline.

Alignment rule (documented in README.md): a rendered prompt is tiled into contiguous segments
(preamble, question, each step, the answer suffix, the answer), each separator belonging to the
segment that follows it. A token belongs to the segment in which its first character lies. So a
token that straddles a boundary counts for the earlier segment, never silently for both; a
segment that ends up with no token of its own (it lies inside another segment's token) raises
``FaithprobeError`` naming it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from faithprobe.errors import FaithprobeError

__all__ = ["Aligned", "CharTokenizer", "HFTokenizer", "Tokenizer", "align"]


class Tokenizer(Protocol):
    name: str
    pad_token_id: int
    eos_token_id: int | None

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of ``text`` (no special tokens) and each token's character span in it."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    @property
    def prefix_ids(self) -> list[int]:
        """Special ids every sequence starts with (a BOS token), possibly none."""
        ...


class CharTokenizer:
    """One token per character, for the tiny models. Ids 0..2 are pad, bos and eos."""

    SPECIALS = ("<pad>", "<bos>", "<eos>")

    def __init__(self, alphabet: str, name: str = "char") -> None:
        if len(set(alphabet)) != len(alphabet):
            raise FaithprobeError("alphabet repeats a character", field="alphabet")
        self.alphabet = alphabet
        self.name = name
        self._index = {c: i + len(self.SPECIALS) for i, c in enumerate(alphabet)}
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2

    @property
    def vocab_size(self) -> int:
        return len(self.SPECIALS) + len(self.alphabet)

    @property
    def prefix_ids(self) -> list[int]:
        return [self.bos_token_id]

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        ids = []
        for i, c in enumerate(text):
            try:
                ids.append(self._index[c])
            except KeyError:
                raise FaithprobeError(
                    f"character {c!r} at offset {i} is not in the tokenizer's alphabet",
                    source=self.name,
                ) from None
        return ids, [(i, i + 1) for i in range(len(text))]

    def token_id(self, char: str) -> int:
        return self.encode(char)[0][0]

    def decode(self, ids: Sequence[int]) -> str:
        n = len(self.SPECIALS)
        return "".join(self.alphabet[i - n] for i in ids if i >= n)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "char", "alphabet": self.alphabet, "name": self.name}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CharTokenizer:
        return cls(obj["alphabet"], obj.get("name", "char"))

    def __repr__(self) -> str:
        return f"CharTokenizer({json.dumps(self.alphabet)})"


class HFTokenizer:
    """A Hugging Face fast tokenizer behind faithprobe's interface."""

    def __init__(self, hf: Any, name: str | None = None) -> None:
        if not getattr(hf, "is_fast", False):
            raise FaithprobeError(
                "needs a fast tokenizer (character offsets); this one is slow",
                source=name or type(hf).__name__,
            )
        self.hf = hf
        self.name = name or getattr(hf, "name_or_path", type(hf).__name__)
        pad = hf.pad_token_id
        self.eos_token_id = hf.eos_token_id
        self.pad_token_id = pad if pad is not None else (self.eos_token_id or 0)
        plain = hf("a", add_special_tokens=False)["input_ids"]
        full = hf("a", add_special_tokens=True)["input_ids"]
        # Only a leading BOS is kept: an EOS appended by the tokenizer would end the prompt.
        self._prefix = list(full[: len(full) - len(plain)]) if full[-len(plain):] == plain else []

    @property
    def prefix_ids(self) -> list[int]:
        return list(self._prefix)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.hf(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)

    @property
    def chat_template(self) -> str | None:
        return getattr(self.hf, "chat_template", None)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclass(frozen=True)
class Aligned:
    """Token ids of a rendered text and the token span ``[start, end)`` of each segment."""

    ids: tuple[int, ...]
    spans: dict[str, tuple[int, int]]

    def span(self, name: str) -> tuple[int, int]:
        try:
            return self.spans[name]
        except KeyError:
            raise FaithprobeError(f"no segment named {name!r}", field=name) from None


def align(
    text: str,
    segments: Sequence[tuple[str, int, int]],
    tokenizer: Tokenizer,
    *,
    source: str | None = None,
) -> Aligned:
    """Tokenize ``text`` and map each character segment to its token span.

    ``segments`` must tile ``text`` (contiguous, in order, from 0 to ``len(text)``). The
    tokenizer's prefix ids (a BOS token) come first and belong to no segment.
    """
    pos = 0
    for name, start, end in segments:
        if start != pos or end < start:
            raise FaithprobeError(
                f"segments do not tile the text at {name!r} ({start}..{end}, expected start "
                f"{pos})", source=source,
            )
        pos = end
    if pos != len(text):
        raise FaithprobeError(
            f"segments end at {pos} but the text has {len(text)} characters", source=source
        )
    ids, offsets = tokenizer.encode(text)
    prefix = tokenizer.prefix_ids
    bounds = [(name, start, end) for name, start, end in segments if end > start]
    spans: dict[str, tuple[int, int]] = {}
    owner = []
    seg = 0
    for tok_start, _tok_end in offsets:
        while seg < len(bounds) - 1 and tok_start >= bounds[seg][2]:
            seg += 1
        owner.append(seg)
    for k, (name, _s, _e) in enumerate(bounds):
        toks = [i for i, o in enumerate(owner) if o == k]
        if not toks:
            raise FaithprobeError(
                f"segment {name!r} has no token of its own: it lies inside a token that starts "
                f"in an earlier segment",
                source=source,
                field=name,
            )
        spans[name] = (toks[0] + len(prefix), toks[-1] + 1 + len(prefix))
    return Aligned(ids=tuple(prefix + ids), spans=spans)
