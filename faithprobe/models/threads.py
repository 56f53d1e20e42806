"""How many CPU threads torch uses.

torch's default pool takes every core. When another process holds one of them, its threads
spin-wait for the descheduled one and a run slows down several-fold (measured: the demo took 8x
its time alone beside one busy process on 2 cores). faithprobe's default leaves one core free
(``cores - 1``, at least 1), which costs little alone and does not collapse under contention;
``--threads N`` (``threads = N`` in a config) sets it explicitly.
"""

from __future__ import annotations

import os

__all__ = ["default_threads", "set_threads", "usable_cores"]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity
        return os.cpu_count() or 1


def default_threads() -> int:
    return max(1, usable_cores() - 1)


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads (default :func:`default_threads`); returns the number."""
    import torch

    n = default_threads() if n is None else int(n)
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()
