"""Progress bars of the libraries faithprobe calls: on a terminal only, never in a log file."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["terminal_bars_only"]


@contextlib.contextmanager
def terminal_bars_only() -> Iterator[None]:
    """Within this block transformers draws its progress bars (loading weights, writing
    shards, and the GGUF conversion's own tqdm bar, which ignores transformers' switch) on a
    terminal only, never into a log file or a pipe."""
    import functools
    import sys

    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    plain = getattr(gguf_utils, "tqdm", None)
    if plain is not None:
        gguf_utils.tqdm = functools.partial(plain, disable=None)
    was_on = hf_logging.is_progress_bar_enabled()
    if was_on and not sys.stderr.isatty():
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if plain is not None:
            gguf_utils.tqdm = plain
        if was_on and not hf_logging.is_progress_bar_enabled():
            hf_logging.enable_progress_bar()
