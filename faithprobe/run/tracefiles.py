"""The traces a run folder holds, per checkpoint: ``traces.jsonl`` (the same for every
checkpoint) or, where each checkpoint wrote its own reasoning (``traces = "generate"``),
``traces-<label>.jsonl``. Reports and notebooks read step texts through here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from faithprobe.data.traces import Trace, read_traces
from faithprobe.run.layout import TRACES

__all__ = ["TRACES", "generated_traces_file", "run_traces"]


def generated_traces_file(run_dir: Path, label: str) -> Path:
    """Where a run keeps the traces checkpoint ``label`` wrote itself."""
    return Path(run_dir) / f"traces-{label}.jsonl"


def run_traces(run_dir: Path, labels: Iterable[str]) -> dict[str, list[Trace]]:
    """Label -> the traces it was probed on (its own generated file, else the run's shared
    ``traces.jsonl``); labels with neither are left out."""
    run_dir = Path(run_dir)
    shared = read_traces(run_dir / TRACES) if (run_dir / TRACES).is_file() else None
    out: dict[str, list[Trace]] = {}
    for label in labels:
        own = generated_traces_file(run_dir, label)
        if own.is_file():
            out[label] = read_traces(own)
        elif shared is not None:
            out[label] = shared
    return out
