"""What ``--resume`` checks before it adds a record to a run folder, and the names a run keeps.

A resume completes the run its folder began only where every input is the same: the shard, the
config (apart from the options that change no result, :data:`FREE_OPTIONS`, which are recorded
in the header's ``resumes``, not compared), faithprobe's version, the traces and each checkpoint
(:mod:`faithprobe.run.fingerprint`), and the chains of thought the run generated. A refusal is
exit 2 naming the key, the file or the checkpoint that differs.

Checkpoint labels may not be a role a config section is keyed by (:data:`RESERVED_LABELS`:
``[placement.scorer]`` places the fixed InfoGain scorer), so a label's placement and hardware
entry is never a role's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from faithprobe.errors import FaithprobeError
from faithprobe.run.fingerprint import compare_inputs, file_sha256
from faithprobe.run.tracefiles import generated_traces_file

__all__ = ["FREE_OPTIONS", "RESERVED_LABELS", "check_generated", "check_labels",
           "check_resume", "config_difference"]

# top-level config keys that change how fast a run goes, never what it writes
FREE_OPTIONS = ("threads", "ray")
# roles a config section is keyed by beside the checkpoint labels ([placement.<role>])
RESERVED_LABELS = ("scorer",)


def check_labels(cfg: Mapping[str, Any], source: str) -> None:
    """Refuse a checkpoint label that is a role's name."""
    for label in cfg["checkpoints"]:
        if label.lower() in RESERVED_LABELS:
            raise FaithprobeError(f"{label!r} is reserved (it names the fixed InfoGain scorer's "
                                  "role, as in [placement.scorer]); choose another label",
                                  source=source, field=f"checkpoints.{label}")


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(obj, dict) or (prefix and not obj):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_difference(before: Any, after: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """The first config key (dotted) whose value differs, apart from :data:`FREE_OPTIONS`,
    with its two values; None when the configs agree."""
    if not isinstance(before, dict):
        return ("config", before, "a config")
    a = _flat({k: v for k, v in before.items() if k not in FREE_OPTIONS})
    b = _flat({k: v for k, v in after.items() if k not in FREE_OPTIONS})
    for key in sorted(a.keys() | b.keys()):
        missing = object()
        if a.get(key, missing) != b.get(key, missing):
            return key, a.get(key, "(absent)"), b.get(key, "(absent)")
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_resume(header: Mapping[str, Any], cfg: Mapping[str, Any],
                 shard: tuple[int, int] | None, inputs: Mapping[str, Any] | None, *,
                 source: str) -> None:
    """Refuse (exit 2, naming what differs) a resume of ``header``'s run with another shard,
    config or input."""
    if header.get("shard") != (list(shard) if shard else None):
        raise FaithprobeError(f"the shard differs from the run being resumed "
                              f"({header.get('shard')} -> {list(shard) if shard else None})",
                              source=source, field="--shard")
    diff = config_difference(header.get("config"), cfg)
    if diff is not None:
        key, old, new = diff
        raise FaithprobeError(f"differs from the run being resumed ({_short(old)} -> "
                              f"{_short(new)}); resume with the config it began with",
                              source=source, field=f"config.{key}")
    if inputs is not None:
        compare_inputs(header.get("inputs"), inputs, source=source)


def check_generated(out: Path, header: Mapping[str, Any], labels: list[str]) -> None:
    """The chains of thought a run generated and kept are those it recorded: a kept file
    whose SHA-256 differs from the header's is refused."""
    recorded = (header.get("inputs") or {}).get("generated") or {}
    for label in labels:
        path = generated_traces_file(out, label)
        if label in recorded and path.is_file() and file_sha256(path) != recorded[label]:
            raise FaithprobeError("changed since the run generated it; its records would come "
                                  "from two inputs: start again in another --out",
                                  source=str(path))
