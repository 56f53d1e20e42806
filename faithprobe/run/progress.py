"""The progress log: which (checkpoint, trace) groups of records are complete, and proof of it.

``records.jsonl`` is appended a group at a time (every record of one trace for one checkpoint),
then ``progress.jsonl`` gets one line for the group: ``checkpoint``, ``trace_id``, ``count`` (how
many records it wrote) and ``digest`` (the SHA-256 of its record lines, sorted). ``--resume``
(:func:`restore`) keeps a group only where the records file still holds exactly those lines:
a group whose records are missing, cut short (even at a line boundary), duplicated or altered is
dropped and computed again, and so is every group when ``records.jsonl`` is missing. Lines the
log cannot read (a torn last line, an old log without counts) name no complete group.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from faithprobe.errors import FaithprobeError
from faithprobe.io import atomic_write, naming
from faithprobe.records import Record, dumps_record
from faithprobe.run.layout import PROGRESS, RECORDS

__all__ = ["Group", "append_group", "group_digest", "read_progress", "restore"]

Group = tuple[str, str]  # (checkpoint label, trace id)


def group_digest(lines: Iterable[str]) -> str:
    """The digest of a group's record lines (as written, without their newline), in any order."""
    h = hashlib.sha256()
    for line in sorted(lines):
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _entry(label: str, trace_id: str, lines: list[str]) -> str:
    return json.dumps({"checkpoint": label, "trace_id": trace_id, "count": len(lines),
                       "digest": group_digest(lines)}, ensure_ascii=False)


def _append_durably(path: Path, text: str) -> None:
    with naming(path), path.open("a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def append_group(out: Path, label: str, trace_id: str, records: list[Record]) -> None:
    """Append one group's records, then its progress line (each on disk before the next)."""
    lines = [dumps_record(r) for r in records]
    _append_durably(out / RECORDS, "".join(line + "\n" for line in lines))
    _append_durably(out / PROGRESS, _entry(label, trace_id, lines) + "\n")


def read_progress(out: Path) -> dict[Group, tuple[int, str]]:
    """Group -> (count, digest) of every readable line of the progress log (the last line of a
    group wins)."""
    path = Path(out) / PROGRESS
    if not path.is_file():
        return {}
    claimed: dict[Group, tuple[int, str]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
        try:
            obj = json.loads(line)
            key = (obj["checkpoint"], obj["trace_id"])
            count, digest = obj["count"], obj["digest"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a torn line, or an entry without proof: that group is redone
        if all(isinstance(v, str) for v in (*key, digest)) and type(count) is int:
            claimed[key] = (count, digest)
    return claimed


def _record_lines(path: Path) -> list[tuple[Group, str]]:
    """Each readable record line of ``path`` with its group; damaged lines are left out (their
    group then fails its count or digest)."""
    if not path.is_file():
        return []
    out = []
    for n, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").split("\n"), 1):
        if not raw.strip():
            continue
        try:
            r = Record.from_json(json.loads(raw), source=str(path), line=n)
        except (json.JSONDecodeError, RecursionError, FaithprobeError, TypeError, ValueError):
            continue
        out.append(((r.checkpoint, r.trace_id), raw))
    return out


def restore(out: Path, *, redo_labels: Iterable[str] = ()) -> set[Group]:
    """Keep only the groups whose records are whole and unaltered (and not of ``redo_labels``);
    rewrite the records file and the progress log to hold just those; returns them (every other
    group is computed again)."""
    out = Path(out)
    claimed = read_progress(out)
    lines = _record_lines(out / RECORDS)
    by_group: dict[Group, list[str]] = {}
    for key, raw in lines:
        by_group.setdefault(key, []).append(raw)
    redo = set(redo_labels)
    done = {key for key, (count, digest) in claimed.items() if key[0] not in redo
            and len(by_group.get(key, ())) == count
            and group_digest(by_group.get(key, [])) == digest}
    with atomic_write(out / RECORDS) as handle:
        handle.write("".join(raw + "\n" for key, raw in lines if key in done))
    with atomic_write(out / PROGRESS) as handle:
        handle.write("".join(_entry(c, t, by_group.get((c, t), [])) + "\n"
                             for c, t in sorted(done)))
    return done
