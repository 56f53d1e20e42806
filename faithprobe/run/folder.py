"""Runs: a study is a folder.

``results/<run>/`` (or ``--out``) holds, under constant names:

- ``header.json``: schema version; ``status`` (``started`` written first, then ``success`` or
  ``error``); the full config and the arguments passed; git commit and dirty flag; package
  versions; start and end times; labels -> checkpoint specs; the shard; summary metrics at the end;
- ``traces.jsonl`` (the traces probed; with generated traces, one file per label,
  ``traces-<label>.jsonl``);
- ``records.jsonl``: one line per trace x checkpoint x intervention x step x site, appended a
  trace at a time; ``progress.jsonl`` names each (checkpoint, trace) whose records are complete;
- ``summary.json``, ``plots/``, ``report.md``, ``report.html``.

Every file but the two append-only logs is written atomically (temporary file, then rename). A
killed run leaves a readable header and records; ``resume`` drops any (checkpoint, trace) the
progress log does not name, and completes the run with the records an uninterrupted run writes.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from faithprobe.data.traces import Trace, read_traces, write_traces
from faithprobe.errors import FaithprobeError
from faithprobe.io import atomic_write, read_json, write_json
from faithprobe.records import Record, dumps_record, read_records, record_key, write_records
from faithprobe.run.config import RunConfig

__all__ = ["HEADER", "RECORDS", "SUMMARY", "TRACES", "open_run", "run_study", "score_runs"]

SCHEMA_VERSION = 1
HEADER = "header.json"
RECORDS = "records.jsonl"
PROGRESS = "progress.jsonl"
TRACES = "traces.jsonl"
SUMMARY = "summary.json"
_PACKAGES = ("faithprobe", "torch", "transformer-lens", "transformers", "numpy", "einops",
             "matplotlib", "safetensors")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _git() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], text=True,
                                capture_output=True, timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                                    text=True, capture_output=True, timeout=10,
                                    check=True).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise FaithprobeError("expected K/N, e.g. 2/8", field="--shard") from None
    if not 1 <= k <= n:
        raise FaithprobeError(f"shard {k} of {n} is out of range (1 <= K <= N)",
                              field="--shard")
    return k, n


def _shard(traces: list[Trace], shard: tuple[int, int] | None) -> list[Trace]:
    if shard is None:
        return traces
    k, n = shard
    return [t for i, t in enumerate(traces) if i % n == k - 1]


def open_run(out: Path, cfg: RunConfig, argv: Sequence[str], *, resume: bool,
             shard: tuple[int, int] | None) -> dict[str, Any]:
    """Create (or reopen, with ``resume``) a run folder; returns its header."""
    header_path = out / HEADER
    if resume:
        header = read_json(header_path, "run header")
        if header.get("config") != cfg or header.get("shard") != (list(shard) if shard else None):
            raise FaithprobeError("config or shard differs from the run being resumed",
                                  source=str(out))
        if header.get("status") == "success":
            raise FaithprobeError("run already finished; nothing to resume", source=str(out))
        header.update(status="started", resumed_at=_now(), error=None)
        write_json(header_path, header)
        return header
    if out.exists() and any(out.iterdir()):
        raise FaithprobeError("output folder exists and is not empty (use --resume to "
                              "complete a killed run, or another --out)", source=str(out))
    out.mkdir(parents=True, exist_ok=True)
    header = {
        "schema_version": SCHEMA_VERSION,
        "status": "started",
        "config": cfg,
        "argv": list(argv),
        "shard": list(shard) if shard else None,
        "git": _git(),
        "versions": _versions(),
        "platform": platform.platform(),
        "started": _now(),
        "ended": None,
        "labels": dict(cfg["checkpoints"]),
    }
    write_json(header_path, header)
    return header


def _done(out: Path) -> set[tuple[str, str]]:
    path = out / PROGRESS
    if not path.is_file():
        return set()
    done = set()
    for line in path.read_text(encoding="utf-8").split("\n"):
        try:
            obj = json.loads(line)
            done.add((obj["checkpoint"], obj["trace_id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a torn last line: that trace is redone
    return done


def _restore(out: Path) -> set[tuple[str, str]]:
    """Keep only complete (checkpoint, trace) groups; returns them."""
    done = _done(out)
    path = out / RECORDS
    if path.is_file():
        kept = [r for r in read_records(path, tolerate_torn_tail=True)
                if (r.checkpoint, r.trace_id) in done]
        write_records(path, kept)
        have = {(r.checkpoint, r.trace_id) for r in kept}
        done &= have
    lines = [json.dumps({"checkpoint": c, "trace_id": t}) for c, t in sorted(done)]
    with atomic_write(out / PROGRESS) as handle:
        handle.write("".join(line + "\n" for line in lines))
    return done


def _append(out: Path, label: str, trace_id: str, records: list[Record]) -> None:
    with (out / RECORDS).open("a", encoding="utf-8") as handle:
        handle.write("".join(dumps_record(r) + "\n" for r in records))
        handle.flush()
        os.fsync(handle.fileno())
    with (out / PROGRESS).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"checkpoint": label, "trace_id": trace_id}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def run_study(cfg: RunConfig, out: Path, *, argv: Sequence[str] = (), resume: bool = False,
              shard: tuple[int, int] | None = None, quiet: bool = False,
              config_source: str = "config") -> Path:
    """Run a validated config into ``out``; returns the run folder. ``config_source`` names
    the config in errors."""
    from tqdm.auto import tqdm

    from faithprobe.data.sources import load_traces
    from faithprobe.models.checkpoints import preflight

    out = Path(out)
    # bad input is refused before anything is written
    base_traces = _shard(load_traces(cfg["data"]), shard)
    if not base_traces:
        raise FaithprobeError("this shard holds no traces", field="--shard")
    specs = {f"checkpoints.{label}": spec for label, spec in cfg["checkpoints"].items()}
    if cfg["infogain"]["enabled"] and cfg["infogain"]["scorer"] != "self":
        specs["infogain.scorer"] = cfg["infogain"]["scorer"]
    for key, spec in specs.items():
        try:
            preflight(spec, allow_pickle=cfg["allow_pickle"])
        except FaithprobeError as exc:
            raise FaithprobeError(str(exc), source=config_source, field=key) from None
    header = open_run(out, cfg, argv, resume=resume, shard=shard)
    try:
        done = _restore(out) if resume else set()
        if cfg["data"]["traces"] == "file" and not (out / TRACES).exists():
            write_traces(out / TRACES, base_traces)
        _probe_all(cfg, out, header, base_traces, done, quiet, tqdm)
        finish_run(out, header, mark_success=True)
    except BaseException as exc:
        header.update(status="error", ended=_now(),
                      error=f"{type(exc).__name__}: {exc}"[:500])
        write_json(out / HEADER, header)
        raise
    return out


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    """Label -> the values of the catalogue's headline metrics the summary has."""
    from faithprobe.metrics import HEADLINE_METRICS

    return {label: {k: m[k]["value"] for k in HEADLINE_METRICS if k in m}
            for label, m in summary.get("checkpoints", {}).items()}


def _probe_all(cfg: RunConfig, out: Path, header: dict[str, Any], base_traces: list[Trace],
               done: set[tuple[str, str]], quiet: bool, tqdm: Any) -> None:
    from faithprobe.data.prompts import PromptTemplate
    from faithprobe.models.checkpoints import check_same_tokenizer, load_checkpoint
    from faithprobe.stages.probe import iter_probe

    probe_cfg = _probe_config(cfg)
    scorer_spec = cfg["infogain"]["scorer"]
    scorer = None
    if cfg["infogain"]["enabled"] and scorer_spec != "self":
        scorer = load_checkpoint(scorer_spec, allow_pickle=cfg["allow_pickle"])
    first = None
    for label, spec in cfg["checkpoints"].items():
        todo_all = [t for t in base_traces if (label, t.id) not in done]
        ckpt = load_checkpoint(spec, allow_pickle=cfg["allow_pickle"])
        if first is None:
            first = ckpt
        elif cfg["patching"]["enabled"]:
            check_same_tokenizer(first, ckpt)
        fast_path = None
        if cfg["patching"]["enabled"]:
            from faithprobe.activation.patching import check_fast_path

            fast_path = check_fast_path(ckpt.bridge)
            header.setdefault("patching", {})[label] = fast_path.to_json()
            write_json(out / HEADER, header)
        template = ckpt.template
        if cfg["template"]:
            template = PromptTemplate.from_json({**ckpt.template.to_json(), **cfg["template"]},
                                                source="template")
        traces = base_traces
        if cfg["data"]["traces"] == "generate":
            traces = _generated(cfg, out, label, ckpt, template, base_traces, quiet)
            todo_all = [t for t in traces if (label, t.id) not in done]
        bar = tqdm(total=len(traces), initial=len(traces) - len(todo_all), desc=label,
                   disable=True if quiet else None, unit="trace")
        patch_ids = {t.id for t in traces[: cfg["patching"]["max_traces"]]}
        for trace, records in zip(todo_all, iter_probe(
                ckpt, label, todo_all, probe_cfg, template=template, scorer=scorer)):
            if cfg["patching"]["enabled"] and trace.id in patch_ids:
                records = records + _patch_records(cfg, ckpt, label, trace, template,
                                                   fast_path)
            _append(out, label, trace.id, records)
            bar.update(1)
        bar.close()


def _probe_config(cfg: RunConfig):
    from faithprobe.stages.probe import ProbeConfig

    p = cfg["probe"]
    options = {name: dict(p[name]) for name in ("corrupt", "paraphrase", "filler")
               if name in p and name in p["interventions"]}
    return ProbeConfig(
        interventions=tuple(p["interventions"]),
        options=options,
        infogain=cfg["infogain"]["enabled"],
        infogain_ppl=cfg["infogain"]["enabled"] and cfg["infogain"]["ppl"],
        ki=cfg["ki"]["enabled"],
        max_new_tokens=p["max_new_tokens"],
        batch_size=p["batch_size"],
        padding_side=p["padding_side"],
        seed=cfg["seed"],
    )


def _generated(cfg: RunConfig, out: Path, label: str, ckpt: Any, template: Any,
               problems: list[Trace], quiet: bool) -> list[Trace]:
    """Each checkpoint's own chains of thought, generated once and saved in the run folder."""
    path = out / f"traces-{label}.jsonl"
    if path.is_file():
        return read_traces(path)
    from faithprobe.models.generate import generate_traces

    traces = generate_traces(ckpt, problems, template, cfg["generation"], seed=cfg["seed"],
                             batch_size=cfg["probe"]["batch_size"], quiet=quiet)
    write_traces(path, traces)
    return traces


def _patch_records(cfg: RunConfig, ckpt: Any, label: str, trace: Trace, template: Any,
                   fast_path: Any) -> list[Record]:
    from faithprobe.stages.patching import patch_trace

    corrupter = cfg["probe"].get("corrupt", {}).get("corrupter", "auto")
    return patch_trace(ckpt, label, trace, template, components=cfg["patching"]["components"],
                       directions=cfg["patching"]["directions"],
                       knockout=cfg["patching"]["knockout"], corrupter=corrupter,
                       seed=cfg["seed"], fast_path=fast_path)


def load_run(run_dir: Path) -> tuple[dict[str, Any], list[Record]]:
    """A run folder's header and records (a damaged folder is a clear error)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FaithprobeError("run folder does not exist", source=str(run_dir))
    header = read_json(run_dir / HEADER, "run header")
    if header.get("schema_version") != SCHEMA_VERSION or "config" not in header:
        raise FaithprobeError("run header has no schema_version 1 / config", source=str(
            run_dir / HEADER))
    records = read_records(run_dir / RECORDS)
    if not records:
        raise FaithprobeError("run has no records", source=str(run_dir / RECORDS))
    return header, records


def merge_runs(run_dirs: Sequence[Path]) -> tuple[dict[str, Any], list[Record]]:
    """Shards of one study merged: same config, disjoint records."""
    headers, records = [], []
    for d in run_dirs:
        h, r = load_run(Path(d))
        headers.append(h)
        records.extend(r)
    first = headers[0]
    for d, h in zip(run_dirs[1:], headers[1:]):
        if h["config"] != first["config"]:
            raise FaithprobeError("is not a shard of the same study (config differs)",
                                  source=str(d))
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
    return header, list(seen.values())


def finish_run(out: Path, header: dict[str, Any], records: list[Record] | None = None, *,
               mark_success: bool = False) -> dict[str, Any]:
    """Summary and report of a run folder from its records; with ``mark_success`` the header
    says ``success`` (with the headline numbers) before the report is written from it."""
    from faithprobe.metrics import summarize
    from faithprobe.report.document import write_report

    if records is None:
        records = read_records(out / RECORDS)
    summary = summarize(records, n_boot=header["config"]["metrics"]["n_boot"],
                        seed=header["config"]["seed"])
    write_json(out / SUMMARY, summary)
    if mark_success:
        header.update(status="success", ended=_now(), summary=_headline(summary))
        write_json(out / HEADER, header)
    traces = read_traces(out / TRACES) if (out / TRACES).is_file() else None
    write_report(out, records, summary, header, traces)
    return summary


def score_runs(run_dirs: Sequence[Path], out: Path | None = None) -> Path:
    """Recompute summary and report from records alone (merging shards into ``out``)."""
    run_dirs = [Path(d) for d in run_dirs]
    if len(run_dirs) > 1 and out is None:
        raise FaithprobeError("merging several run folders needs --out", field="--out")
    header, records = merge_runs(run_dirs)
    target = out or run_dirs[0]
    if out is not None:
        if out.exists() and any(out.iterdir()) and out.resolve() not in {
                d.resolve() for d in run_dirs}:
            raise FaithprobeError("output folder exists and is not empty", source=str(out))
        out.mkdir(parents=True, exist_ok=True)
        if out.resolve() not in {d.resolve() for d in run_dirs}:
            write_records(out / RECORDS, sorted(records, key=dumps_record))
            traces = _merged_traces(run_dirs)
            if traces:
                write_traces(out / TRACES, traces)
    summary = finish_run(target, header, records)
    header.update(summary=_headline(summary), rescored=_now())
    write_json(target / HEADER, header)
    return target


def _merged_traces(run_dirs: Sequence[Path]) -> list[Trace]:
    seen: dict[str, Trace] = {}
    for d in run_dirs:
        if (d / TRACES).is_file():
            for t in read_traces(d / TRACES):
                seen.setdefault(t.id, t)
    return list(seen.values())
