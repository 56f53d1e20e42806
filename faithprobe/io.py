"""Files written whole or not at all: one atomic-write helper for the package.

Everything faithprobe writes that a reader may open while it is written (a run's header and
summary, records written at once, a report, saved weights) goes to a temporary name in the same
folder and is renamed into place with ``os.replace``: a crash leaves the old file or the new
one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from faithprobe.errors import FaithprobeError

__all__ = ["atomic_path", "atomic_write", "read_json", "write_json"]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed onto ``path`` when the block ends without an
    exception, removed when it raises. For writers that want a file name (safetensors)."""
    target = Path(path)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` (``"w"`` text in UTF-8, or ``"wb"``); it replaces
    ``path`` when the block ends without an exception."""
    with atomic_path(path) as tmp:
        kw = {"encoding": "utf-8"} if "b" not in mode else {}
        with tmp.open(mode, **kw) as handle:
            yield handle


def write_json(path: str | os.PathLike[str], obj: Any, *, sort_keys: bool = False) -> None:
    """Write JSON atomically (no NaN: a non-finite number is a bug upstream)."""
    with atomic_write(path) as handle:
        handle.write(json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False,
                                sort_keys=sort_keys) + "\n")


def read_json(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """A JSON object from a file; a missing, damaged or non-object file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FaithprobeError(f"{what} is missing", source=str(path))
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FaithprobeError(f"{what} is damaged ({exc})", source=str(path)) from None
    if not isinstance(obj, dict):
        raise FaithprobeError(f"{what} is not a JSON object", source=str(path))
    return obj
