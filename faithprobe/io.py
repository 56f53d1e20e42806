"""Files written whole or not at all: one atomic-write helper for the package.

Everything faithprobe writes that a reader may open while it is written (a run's header and
summary, records written at once, a report, saved weights) goes to a temporary name in the same
folder and is renamed into place with ``os.replace``: a crash leaves the old file or the new
one, never half of one.

Reading is guarded too: :func:`check_regular_file` refuses anything but a regular file before
it is opened (a FIFO would block forever, a device never ends), and :func:`lock_folder` gives one
process at a time a run folder (a second writer is refused, never interleaved).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from faithprobe.errors import FaithprobeError

__all__ = ["atomic_folder", "atomic_path", "atomic_write", "check_regular_file", "lock_folder",
           "naming", "read_json", "safetensors_shapes", "wait_for_lock", "write_json"]

MAX_JSON_BYTES = 64 * 2**20  # a header, summary or config over 64 MiB is not one faithprobe wrote
MAX_SAFETENSORS_HEADER = 100 * 2**20  # safetensors' own limit
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed onto ``path`` when the block ends without an
    exception, removed when it raises. For writers that want a file name (safetensors)."""
    target = Path(path)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        with naming(target):
            yield tmp
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# errors of a write that say something about the disk, not about faithprobe
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


@contextmanager
def naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """A full disk (or quota, or an I/O error) met while writing ``path`` is a FaithprobeError
    naming ``path``: the OS's own error names no file when a write, not an open, fails."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS or isinstance(exc, FaithprobeError):
            raise
        raise FaithprobeError(f"cannot be written ({exc.strerror or exc})",
                              source=str(path)) from None


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


def check_regular_file(path: str | os.PathLike[str], what: str = "file", *,
                       max_bytes: int | None = None) -> int:
    """The size of ``path``, a regular file (symbolic links followed); anything else (missing,
    a folder, a FIFO, a device, a socket, over ``max_bytes``) is a FaithprobeError naming it,
    raised before the file is opened."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FaithprobeError(f"{what} does not exist", source=str(path)) from None
    except OSError as exc:
        raise FaithprobeError(f"{what} cannot be read ({exc.strerror})", source=str(path)) from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise FaithprobeError(f"{what} is {kind}, not a regular file", source=str(path))
    if max_bytes is not None and st.st_size > max_bytes:
        raise FaithprobeError(f"{what} is {st.st_size} bytes, over the limit of {max_bytes}",
                              source=str(path))
    return st.st_size


@contextmanager
def wait_for_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Create ``folder`` and hold an exclusive lock on it for the block, waiting while another
    process holds it (``flock`` on the folder itself: nothing left behind, gone with the
    process). For work done once and shared, such as converting a packaged model into the
    cache: a second process waits, then finds the work done."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            fcntl = None  # type: ignore[assignment]
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def lock_folder(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Create ``folder`` (with its parents) and hold an exclusive lock on it for the block.

    The lock is ``flock`` on the folder itself, so it leaves no file behind and dies with the
    process (a killed run never leaves a stale lock). A second process asking for the same
    folder is refused at once with a FaithprobeError. Where ``fcntl`` does not exist (Windows)
    the folder is created and not locked.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        raise FaithprobeError(f"cannot create the folder ({exc.strerror})", source=str(folder),
                              field="--out") from None
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            fcntl = None  # type: ignore[assignment]
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise FaithprobeError(
                    "another faithprobe process is writing this folder (it holds its lock); "
                    "wait for it to end, or choose another --out", source=str(folder)) from None
        yield folder
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def atomic_folder(out: str | os.PathLike[str], *, replace: bool = False,
                  keep_existing: bool = False) -> Iterator[Path]:
    """A folder written whole or not at all: the block writes into a temporary folder beside
    ``out`` (a fresh name, locked meanwhile), renamed onto ``out`` when the block ends without
    an exception and removed when it raises. ``out`` may exist only as an empty folder, or
    (``replace``) an earlier folder that the new one replaces. With ``keep_existing`` a
    non-empty ``out`` found at the end (another process wrote the same content meanwhile) is
    kept and the new folder dropped."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as exc:
        raise FaithprobeError(f"cannot be created ({exc.strerror})", source=str(out),
                              field="--out") from None
    try:
        with lock_folder(tmp):
            yield tmp
        os.chmod(tmp, 0o755)
        old = None
        if out.is_dir() and any(out.iterdir()):
            if keep_existing:
                return
            if not replace:
                raise FaithprobeError("output folder exists and is not empty (another process "
                                      "wrote it meanwhile)", source=str(out), field="--out")
            old = out.with_name(f".{out.name}.old.{os.getpid()}.tmp")
            os.replace(out, old)
        elif out.is_dir():
            out.rmdir()
        try:
            os.replace(tmp, out)
        except OSError as exc:  # another process renamed its folder onto out just now
            if not (keep_existing and exc.errno in (errno.ENOTEMPTY, errno.EEXIST)):
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_json(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """A JSON object from a file; a missing, damaged or non-object file is a clear error."""
    path = Path(path)
    if not path.exists():
        raise FaithprobeError(f"{what} is missing", source=str(path))
    check_regular_file(path, what, max_bytes=MAX_JSON_BYTES)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FaithprobeError(f"{what} is damaged ({exc})", source=str(path)) from None
    except RecursionError:
        raise FaithprobeError(f"{what} is damaged (nested too deeply)", source=str(path)) from None
    if not isinstance(obj, dict):
        raise FaithprobeError(f"{what} is not a JSON object", source=str(path))
    return obj


def safetensors_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape, read from a safetensors file's header alone (no tensor is read).

    The file must be a regular file whose header is a JSON object of tensors (``dtype``,
    ``shape``, ``data_offsets``), each tensor's byte range as long as its shape and dtype say,
    and the file exactly as long as the header describes; anything else is a FaithprobeError
    ("damaged", or "truncated or padded").
    """
    path = Path(path)
    size = check_regular_file(path, "weights file")

    def damaged(why: str) -> FaithprobeError:
        return FaithprobeError(f"weights file is damaged or truncated ({why})", source=str(path))

    with path.open("rb") as handle:
        head = handle.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n <= 0 or 8 + n > size or n > MAX_SAFETENSORS_HEADER:
            raise damaged("unreadable safetensors header length")
        raw = handle.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise damaged("unreadable safetensors header") from None
    if not isinstance(header, dict):
        raise damaged("the safetensors header is not an object of tensors")
    shapes: dict[str, tuple[int, ...]] = {}
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        ints = (isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
                and all(type(v) is int and v >= 0 for v in [*shape, *offsets]))
        if not (ints and isinstance(entry.get("dtype"), str) and offsets[0] <= offsets[1]):
            raise damaged(f"tensor {name[:60]!r} has no valid dtype, shape and data_offsets")
        itemsize = _DTYPE_BYTES.get(entry["dtype"])
        numel = 1
        for d in shape:
            numel *= d
        if itemsize is not None and offsets[1] - offsets[0] != numel * itemsize:
            raise damaged(f"tensor {name[:60]!r} has shape {shape} but "
                          f"{offsets[1] - offsets[0]} bytes")
        shapes[name] = tuple(shape)
        end = max(end, offsets[1])
    if 8 + n + end != size:
        raise FaithprobeError(f"weights file is truncated or padded ({size} bytes, its header "
                              f"describes {8 + n + end})", source=str(path))
    return shapes
