"""Merging the shards of a study, and scoring a run folder again from its records alone.

``faithprobe score SHARD_DIR... --out DIR`` merges shards only where they make one study:
every shard finished (``status`` success), all of the same N, the same config apart from
``metrics.pairs``, the same traces (the header's fingerprint of the trace file) and checkpoints,
and each K from 1 to N given once. ``--partial`` merges an incomplete set on purpose; the header
and the report then say which shards it holds ("partial: shards 1, 3 of 4"). The merge is
written into a temporary folder beside ``--out`` and renamed into place at the end, so a failed
merge leaves nothing behind.

``faithprobe score RUN_DIR`` scores a folder in place: its summary and report are rewritten, and
its header keeps what the folder is (a shard stays a shard and can still be resumed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from faithprobe.data.traces import Trace, read_traces, write_traces
from faithprobe.errors import FaithprobeError
from faithprobe.io import atomic_folder, lock_folder, write_json
from faithprobe.records import Record, dumps_record, record_key, write_records
from faithprobe.run.config import with_pairs, without_pairs
from faithprobe.run.finish import finish_run, headline
from faithprobe.run.layout import HEADER, MAX_WARNING_IDS, RECORDS, content, now
from faithprobe.run.read import load_run

__all__ = ["check_shards", "merge_runs", "score_runs"]


def _shard_of(header: dict[str, Any]) -> tuple[int, int]:
    shard = header.get("shard")
    if shard is None:
        return 1, 1  # a whole run is the one shard of one
    if not (isinstance(shard, list) and len(shard) == 2 and all(type(v) is int for v in shard)
            and 1 <= shard[0] <= shard[1]):
        raise FaithprobeError("run header's shard is not [K, N]", field="shard")
    return shard[0], shard[1]


def check_shards(run_dirs: Sequence[Path], headers: Sequence[dict[str, Any]], *,
                 repair: bool = False, partial: bool = False) -> str | None:
    """Refuse (exit 2, naming the shard) shards that do not make one study; returns the
    header's ``partial`` entry ("partial: shards 1, 3 of 4") for an incomplete set merged on
    purpose, else None."""
    first, d0 = headers[0], run_dirs[0]
    seen: dict[int, Path] = {}
    n0 = None
    for d, h in zip(run_dirs, headers):
        if h.get("status") != "success":
            raise FaithprobeError(f"is not a finished run (status {h.get('status')!r}); "
                                  "complete it with --resume before merging", source=str(d))
        try:
            k, n = _shard_of(h)
        except FaithprobeError as exc:
            raise FaithprobeError(exc.message, source=str(d / HEADER), field="shard") from None
        n0 = n if n0 is None else n0
        if n != n0:
            raise FaithprobeError(f"is shard {k} of {n}, but {d0} is a shard of {n0}",
                                  source=str(d))
        if k in seen:
            raise FaithprobeError(f"is shard {k} of {n}, given twice (also {seen[k]})",
                                  source=str(d))
        seen[k] = d
        if without_pairs(h["config"]) != without_pairs(first["config"]):
            raise FaithprobeError(f"is not a shard of the same study as {d0} (config "
                                  "differs)", source=str(d))
        if h["config"] != first["config"] and not repair:
            raise FaithprobeError("compares other checkpoint pairs than the first shard "
                                  "(config.metrics.pairs); choose them with --pair",
                                  source=str(d))
        _same_inputs(d, h, d0, first)
    missing = [k for k in range(1, (n0 or 1) + 1) if k not in seen]
    if missing and not partial:
        names = ", ".join(map(str, missing))
        raise FaithprobeError(f"shard{'s' if len(missing) > 1 else ''} {names} of {n0} "
                              f"{'are' if len(missing) > 1 else 'is'} missing; merge every "
                              "shard, or pass --partial to merge these on purpose",
                              source=", ".join(map(str, run_dirs)))
    if not missing:
        return None
    return f"partial: shards {', '.join(map(str, sorted(seen)))} of {n0}"


def _same_inputs(d: Path, h: dict[str, Any], d0: Path, first: dict[str, Any]) -> None:
    """The shards read the same traces and checkpoints (where their headers say)."""
    a, b = first.get("inputs"), h.get("inputs")
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return  # a folder written before inputs were fingerprinted
    ta, tb = a.get("traces") or {}, b.get("traces") or {}
    for key in ("file_sha256", "sha256"):
        if ta.get(key) != tb.get(key):
            raise FaithprobeError(f"read other traces than {d0} (the trace file's hash "
                                  "differs)", source=str(d), field=f"inputs.traces.{key}")
    for label, fp in (b.get("checkpoints") or {}).items():
        other = (a.get("checkpoints") or {}).get(label)
        if other is not None and {k: v for k, v in fp.items() if k != "spec"} != \
                {k: v for k, v in other.items() if k != "spec"}:
            raise FaithprobeError(f"probed another checkpoint {label!r} than {d0} (its "
                                  "fingerprint differs)", source=str(d),
                                  field=f"inputs.checkpoints.{label}")


def merge_runs(run_dirs: Sequence[Path], *, repair: bool = False, partial: bool = False
               ) -> tuple[dict[str, Any], list[Record]]:
    """Shards of one study merged (:func:`check_shards`): same config, disjoint records. The
    comparisons chosen (``metrics.pairs``) may differ only when ``repair`` (new pairs replace
    them); ``partial`` merges an incomplete set of shards."""
    headers, records = [], []
    for d in run_dirs:
        h, r = load_run(Path(d))
        headers.append(h)
        records.extend(r)
    first = headers[0]
    marker = check_shards(run_dirs, headers, repair=repair, partial=partial)
    seen: dict[tuple, Record] = {}
    for r in records:
        k = record_key(r)
        if k in seen and seen[k] != r:
            raise FaithprobeError(f"shards disagree on a record of trace {r.trace_id!r}",
                                  source=", ".join(map(str, run_dirs)))
        seen[k] = r
    header = dict(first)
    header["merged_from"] = [str(d) for d in run_dirs]
    header["shard"] = None
    header.pop("partial", None)
    if marker is not None:
        header["partial"] = marker
    if len(headers) > 1:  # the shards' warnings add up
        ids: dict[str, list[str]] = {}
        for h in headers:
            for kind, entry in (h.get("warnings") or {}).items():
                ids.setdefault(kind, []).extend(entry.get("traces", []))
        header["warnings"] = {kind: {"count": sum((h.get("warnings") or {}).get(kind, {}).get(
            "count", 0) for h in headers), "traces": v[:MAX_WARNING_IDS]}
            for kind, v in sorted(ids.items())}
    return header, list(seen.values())


def score_runs(run_dirs: Sequence[Path], out: Path | None = None,
               pairs: Sequence[Sequence[str]] | None = None, *, partial: bool = False) -> Path:
    """Recompute summary and report from records alone: in place (one folder, no ``out``), or
    merging shards into ``out`` (written whole or not at all); ``pairs`` ([a, b] labels)
    replaces the config's ``metrics.pairs`` in the header; ``partial`` merges an incomplete
    set of shards on purpose."""
    run_dirs = [Path(d) for d in run_dirs]
    if len(run_dirs) > 1 and out is None:
        raise FaithprobeError("merging several run folders needs --out", field="--out")
    inputs = {d.resolve() for d in run_dirs}
    in_place = out is None or (len(run_dirs) == 1 and out.resolve() in inputs)
    if out is not None and not in_place:
        inside = [d for d in run_dirs if d.resolve() in out.resolve().parents
                  or out.resolve() == d.resolve()]
        if inside:  # several inputs: --out would overwrite one of them with a merge
            raise FaithprobeError(f"is one of the runs being scored, or inside one "
                                  f"({inside[0]}); choose another --out", source=str(out),
                                  field="--out")
        check_new_folder(out)
    if in_place:
        header, records = load_run(run_dirs[0])
        header = dict(header)
    else:
        header, records = merge_runs(run_dirs, repair=pairs is not None, partial=partial)
    if pairs is not None:
        from faithprobe.metrics import checkpoint_labels

        header["config"] = with_pairs(header["config"], pairs, checkpoint_labels(records),
                                      source=str(run_dirs[0]))
    if in_place:
        with lock_folder(run_dirs[0]):
            _score_into(run_dirs[0], header, records)
        return run_dirs[0]
    with atomic_folder(out) as tmp:
        write_records(tmp / RECORDS, sorted(records, key=dumps_record))
        for name, traces in _merged_traces(run_dirs).items():
            write_traces(tmp / name, traces)
        _score_into(tmp, header, records)
    return out


def _score_into(target: Path, header: dict[str, Any], records: list[Record]) -> None:
    summary = finish_run(target, header, records)
    header.update(summary=headline(summary), rescored=now())
    write_json(target / HEADER, header)


def check_new_folder(out: Path) -> None:
    """``--out`` of a merge or a comparison: nothing, or an empty folder, under a folder."""
    if out.exists() and not out.is_dir():
        raise FaithprobeError("exists and is not a folder", source=str(out), field="--out")
    if out.exists() and content(out):
        raise FaithprobeError("output folder exists and is not empty", source=str(out),
                              field="--out")


def _merged_traces(run_dirs: Sequence[Path]) -> dict[str, list[Trace]]:
    """The shards' trace files (``traces.jsonl`` and each ``traces-<label>.jsonl``), merged
    by trace id."""
    names = sorted({p.name for d in run_dirs for p in d.glob("traces*.jsonl") if p.is_file()})
    merged: dict[str, list[Trace]] = {}
    for name in names:
        seen: dict[str, Trace] = {}
        for d in run_dirs:
            if (d / name).is_file():
                for t in read_traces(d / name):
                    seen.setdefault(t.id, t)
        merged[name] = list(seen.values())
    return merged
