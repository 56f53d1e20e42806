"""Tokenizers and token alignment.

faithprobe talks to every tokenizer through one small interface, :class:`Tokenizer`: ids with
character offsets, decoding, and the ids a sequence starts with. Two implementations: the
character-level :class:`CharTokenizer` of faithprobe's tiny models, and :class:`HFTokenizer`,
which wraps any Hugging Face fast tokenizer (BPE or SentencePiece) loaded offline.

Text stays text: the text of a tokenizer's special tokens (``<|im_start|>``, ``<|im_end|>``, its
BOS, EOS or PAD, an added ``</think>``) is its special token only inside ``markup``, the
character ranges a prompt template wrote (:attr:`faithprobe.data.prompts.Rendered.markup`); in
a question, a step, an answer (anything else) it is encoded as the plain text it is, so no trace
can open a chat turn or close a thinking block. Every path that tokenizes (scoring, patching,
generation, the cue test, resampling) goes through ``encode``.

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
from functools import cached_property
from typing import Any, Protocol

from faithprobe.errors import FaithprobeError

__all__ = ["Aligned", "CharTokenizer", "HFTokenizer", "Span", "Tokenizer", "align"]

Span = tuple[int, int]  # [start, end) in characters


def _inside(span: Span, ranges: Sequence[Span]) -> bool:
    return any(a <= span[0] and span[1] <= b for a, b in ranges)


class Tokenizer(Protocol):
    name: str
    pad_token_id: int
    eos_token_id: int | None

    def encode(self, text: str, markup: Sequence[Span] = ()
               ) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of ``text`` (no special tokens added) and each token's character span in it.
        Special-token text is a special token only inside a ``markup`` range."""
        ...

    @property
    def special_strings(self) -> tuple[str, ...]:
        """The texts this tokenizer can read as special tokens, longest first."""
        ...

    def unencodable(self, text: str) -> tuple[int, str, str] | None:
        """The first piece of ``text`` that cannot be encoded as the text it is: (offset, the
        piece, what it becomes), or None."""
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

    special_strings: tuple[str, ...] = ()  # one token per character: no text is a special

    def encode(self, text: str, markup: Sequence[Span] = ()
               ) -> tuple[list[int], list[tuple[int, int]]]:
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

    def unencodable(self, text: str) -> tuple[int, str, str] | None:
        for i, c in enumerate(text):
            if c not in self._index:
                return i, c, "nothing: it is not in the tokenizer's alphabet"
        return None

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

    @cached_property
    def special_strings(self) -> tuple[str, ...]:
        added = {t.content for t in self.hf.added_tokens_decoder.values() if t.content}
        return tuple(sorted(added, key=lambda t: (-len(t), t)))

    @cached_property
    def _added_ids(self) -> frozenset[int]:
        return frozenset(int(i) for i in self.hf.added_tokens_decoder)

    @cached_property
    def _plain(self) -> Any:
        """The tokenizer's pipeline with every added token's text read as text: each added
        token made special (its id unchanged), special tokens encoded as text."""
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as Backend

        plain = Backend.from_str(self.hf.backend_tokenizer.to_str())
        plain.no_padding()
        plain.no_truncation()
        plain.add_special_tokens([AddedToken(s, special=True) for s in self.special_strings])
        plain.encode_special_tokens = True
        return plain

    @cached_property
    def _unknown_ids(self) -> frozenset[int]:
        """The unknown token (the tokenizer's, or its model's) and a special pad token."""
        ids = {self.hf.unk_token_id}
        unk = getattr(self.hf.backend_tokenizer.model, "unk_token", None)
        if isinstance(unk, str):
            ids.add(self.hf.backend_tokenizer.token_to_id(unk))
        if self.hf.pad_token_id in self._added_ids:
            ids.add(self.hf.pad_token_id)
        return frozenset(i for i in ids if i is not None)

    def _encode_plain(self, text: str, start: int, end: int, ids: list[int],
                      offsets: list[tuple[int, int]]) -> None:
        if end > start:
            enc = self._plain.encode(text[start:end], add_special_tokens=False)
            ids += enc.ids
            offsets += [(a + start, b + start) for a, b in enc.offsets]

    def encode(self, text: str, markup: Sequence[Span] = ()
               ) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.hf(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        added = [k for k, i in enumerate(ids) if i in self._added_ids]
        if all(_inside(offsets[k], markup) for k in added):
            return ids, offsets  # every special token where the template wrote it
        # special-token text outside the markup: the markup's special tokens kept, the text
        # between them encoded as plain text
        out_ids: list[int] = []
        out_offsets: list[tuple[int, int]] = []
        pos = 0
        for k in added:
            if _inside(offsets[k], markup):
                self._encode_plain(text, pos, offsets[k][0], out_ids, out_offsets)
                out_ids.append(ids[k])
                out_offsets.append(offsets[k])
                pos = offsets[k][1]
        self._encode_plain(text, pos, len(text), out_ids, out_offsets)
        return out_ids, out_offsets

    def unencodable(self, text: str) -> tuple[int, str, str] | None:
        """Text the tokenizer maps only to its unknown or pad token, or (a word-level
        vocabulary holding a special token's text) to a special token even as plain text."""
        ids, offsets = self.encode(text)
        for i, (a, b) in zip(ids, offsets, strict=True):
            if i in self._unknown_ids or i in self._added_ids:
                what = "unknown" if i in self._unknown_ids else "special"
                return a, text[a:b], f"only the {what} token {self.hf.convert_ids_to_tokens(i)!r}"
        return None

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
    markup: Sequence[Span] = (),
) -> Aligned:
    """Tokenize ``text`` and map each character segment to its token span.

    ``segments`` must tile ``text`` (contiguous, in order, from 0 to ``len(text)``). The
    tokenizer's prefix ids (a BOS token) come first and belong to no segment. ``markup``: the
    ranges the template wrote, where special-token text is a special token (a rendered
    prompt's :attr:`~faithprobe.data.prompts.Rendered.markup`).
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
    ids, offsets = tokenizer.encode(text, markup)
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
