"""Runs: a study is a folder.

``results/<run>/`` (or ``--out``) holds, under constant names:

- ``header.json``: schema version; ``status`` (``started`` written first, then ``success``,
  ``error`` or ``cancelled``); the full config and the arguments passed; git commit and dirty
  flag; package versions; start and end times; labels -> checkpoint specs; the shard; the
  ``warnings`` about doubtful data (kind -> count and trace ids); ``preflight`` (per label, the
  longest prompt in tokens and the context); ``inputs``, the fingerprints of what the records
  are computed from (:mod:`faithprobe.run.fingerprint`); ``options`` that change no result
  (threads, quiet, engine) and each resume's in ``resumes``; summary metrics at the end;
- ``traces.jsonl`` (the traces probed; with generated traces, one file per label,
  ``traces-<label>.jsonl``);
- ``records.jsonl``: one line per trace x checkpoint x intervention x step x site, appended a
  trace at a time; ``progress.jsonl`` names each (checkpoint, trace) whose records are complete,
  with their count and digest (:mod:`faithprobe.run.progress`);
- ``summary.json``, ``plots/``, ``report.md``, ``report.html``.

Every file but the two append-only logs is written atomically (temporary file, then rename). A
killed run leaves a readable header and records; ``resume`` refuses inputs other than the run
began with (:mod:`faithprobe.run.resume`), drops any (checkpoint, trace) group the progress log
does not prove whole, and completes the run with the records an uninterrupted run writes.

Order of a run: every input is checked first (:mod:`faithprobe.run.preflight`: the traces, the
config, each checkpoint loaded once and kept, every trace rendered and tokenized with each
checkpoint's template and checked against its context); only then is the folder created, and locked
(``faithprobe.io.lock_folder``) for as long as the run writes it. ``status`` becomes ``success``
only after the report is written, so a run killed at any point resumes; SIGINT and SIGTERM
record ``cancelled``.
"""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from faithprobe.data.traces import Trace, read_traces, write_traces
from faithprobe.errors import Cancelled, FaithprobeError
from faithprobe.io import lock_folder, read_json, write_json
from faithprobe.run.config import RunConfig, placement_of
from faithprobe.run.fingerprint import file_sha256
from faithprobe.run.finish import finish_run
from faithprobe.run.layout import (
    HEADER,
    MAX_WARNING_IDS,
    RECORDS,
    REPORT_FILES,
    SCHEMA_VERSION,
    SUMMARY,
    TRACES,
    content,
    now,
)
from faithprobe.run.merge import merge_runs, score_runs
from faithprobe.run.preflight import Prepared, hardware, prepare_run
from faithprobe.run.progress import append_group, restore
from faithprobe.run.read import load_run
from faithprobe.run.resume import check_generated, check_resume
from faithprobe.run.tracefiles import generated_traces_file

Engine = Literal["local", "ray"]

# the run folder's API, wherever each piece lives (run.layout, run.preflight, run.merge, ...)
__all__ = ["HEADER", "RECORDS", "SUMMARY", "TRACES", "Prepared", "finish_run", "hardware",
           "load_run", "merge_runs", "open_run", "prepare_run", "run_study", "score_runs"]

_PACKAGES = ("faithprobe", "torch", "transformer-lens", "transformers", "numpy", "einops",
             "matplotlib", "safetensors")


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


def open_run(out: Path, cfg: RunConfig, argv: Sequence[str], *, resume: bool,
             shard: tuple[int, int] | None, inputs: dict[str, Any] | None = None,
             options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create (or reopen, with ``resume``) a run folder; returns its header. ``inputs`` are
    the fingerprints of what the records are computed from (a resume refuses other ones),
    ``options`` the settings that change no result (recorded, not compared). The caller holds
    the folder's lock (``faithprobe.io.lock_folder``)."""
    header_path = out / HEADER
    out.mkdir(parents=True, exist_ok=True)  # lock_folder made it already
    for stale in out.glob(".*.tmp"):  # a killed writer's temporary files: ours to remove now
        stale.unlink(missing_ok=True)
    options = dict(options or {}, threads=cfg.get("threads"))
    if resume and header_path.exists():
        header = read_json(header_path, "run header")
        check_resume(header, cfg, shard, inputs, source=str(out))
        if cfg["data"]["traces"] == "generate":
            check_generated(out, header, list(cfg["checkpoints"]))
        if header.get("status") == "success" and all(
                (out / name).is_file() for name in (SUMMARY, *REPORT_FILES)):
            raise FaithprobeError("run already finished; nothing to resume", source=str(out))
        resumes = header.get("resumes") if isinstance(header.get("resumes"), list) else []
        header.update(status="started", resumed_at=now(), error=None, ended=None, config=cfg,
                      resumes=[*resumes, {"at": now(), "argv": list(argv), "options": options}])
        write_json(header_path, header)
        return header
    if content(out):
        raise FaithprobeError("output folder exists and is not empty (use --resume to "
                              "complete a killed run, or another --out)", source=str(out))
    header = {
        "schema_version": SCHEMA_VERSION,
        "status": "started",
        "config": cfg,
        "argv": list(argv),
        "options": options,
        "shard": list(shard) if shard else None,
        "git": _git(),
        "versions": _versions(),
        "platform": platform.platform(),
        "started": now(),
        "ended": None,
        "labels": dict(cfg["checkpoints"]),
        "inputs": inputs,
    }
    write_json(header_path, header)
    return header


def run_study(cfg: RunConfig, out: Path, *, argv: Sequence[str] = (), resume: bool = False,
              shard: tuple[int, int] | None = None, quiet: bool = False,
              config_source: str = "config", engine: Engine = "local",
              ray_address: str | None = None) -> Path:
    """Run a validated config into ``out``; returns the run folder. ``config_source`` names
    the config in errors. Every input is checked (``prepare_run``) before the folder exists.
    ``engine="ray"`` runs the work as Ray tasks (:mod:`faithprobe.run.ray_engine`; a local
    cluster, or the one at ``ray_address``); the folder and its records are a local run's."""
    from tqdm.auto import tqdm

    out = Path(out)
    if engine == "ray":
        from faithprobe.run.ray_engine import import_ray

        import_ray()  # before anything is loaded: a missing extra is a one-line error
    prep = prepare_run(cfg, out, resume=resume, shard=shard, config_source=config_source,
                       on_cpu=engine == "ray", engine=engine, ray_address=ray_address)
    with _leaving_ray(prep.ray_started), lock_folder(out):
        header = open_run(out, cfg, argv, resume=resume, shard=shard, inputs=prep.inputs,
                          options={"quiet": quiet, "engine": engine})
        try:
            header.update(warnings=prep.warnings, preflight=prep.context,
                          hardware=hardware(prep) if engine == "local" else
                          {"engine": "ray", "placement": {
                              label: placement_of(cfg, label) for label in prep.checkpoints},
                           "checkpoints": {}})  # filled from the tasks, as they run
            write_json(out / HEADER, header)
            done = _restore(out, header) if resume else set()
            if cfg["data"]["traces"] == "file":
                write_traces(out / TRACES, prep.traces)
            if engine == "ray":
                _probe_all_ray(cfg, out, header, prep, done, quiet, tqdm, ray_address)
            else:
                _probe_all(cfg, out, header, prep, done, quiet, tqdm)
            finish_run(out, header, mark_success=True)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, Cancelled)):
                how = exc.signal_name if isinstance(exc, Cancelled) else "SIGINT"
                header.update(status="cancelled", ended=now(), error=f"cancelled by {how}")
            else:
                header.update(status="error", ended=now(),
                              error=f"{type(exc).__name__}: {exc}"[:500])
            try:
                write_json(out / HEADER, header)
            except OSError:
                pass  # the error that brought us here is the one to report
            raise
    return out


@contextlib.contextmanager
def _leaving_ray(joined: bool) -> Iterator[None]:
    """The Ray cluster the preflight joined is left when the run ends, however it ends."""
    try:
        yield
    finally:
        if joined:
            from faithprobe.run.ray_connect import disconnect

            disconnect()


def _restore(out: Path, header: dict[str, Any]) -> set[tuple[str, str]]:
    """The groups a resume keeps (:func:`faithprobe.run.progress.restore`); a label whose
    generated chains of thought are gone has every group computed again, from new ones."""
    generated = header.setdefault("inputs", {}).setdefault("generated", {})
    gone = {label for label in list(generated) if not generated_traces_file(out, label).is_file()}
    for label in gone:
        del generated[label]
    write_json(out / HEADER, header)
    return restore(out, redo_labels=gone)


def _keep_generated(out: Path, header: dict[str, Any], label: str, traces: list[Trace]) -> None:
    """Save a label's generated chains of thought and record their fingerprint."""
    from faithprobe.run.units import truncated_ids

    path = generated_traces_file(out, label)
    write_traces(path, traces)
    header.setdefault("inputs", {}).setdefault("generated", {})[label] = file_sha256(path)
    cut = truncated_ids(traces)
    if cut:  # said in the header's warnings, as doubtful data is
        header.setdefault("warnings", {})[f"truncated_generation.{label}"] = {
            "count": len(cut), "traces": cut[:MAX_WARNING_IDS]}
    write_json(out / HEADER, header)


def _probe_all(cfg: RunConfig, out: Path, header: dict[str, Any], prep: Prepared,
               done: set[tuple[str, str]], quiet: bool, tqdm: Any) -> None:
    from faithprobe.run.units import probe_traces, probed_generated

    scorer, base_traces = prep.scorer, prep.traces
    for label, ckpt in prep.checkpoints.items():
        todo_all = [t for t in base_traces if (label, t.id) not in done]
        fast_path = None
        if cfg["patching"]["enabled"]:
            from faithprobe.activation.patching import check_fast_path

            fast_path = check_fast_path(ckpt.bridge)
            header.setdefault("patching", {})[label] = fast_path.to_json()
            write_json(out / HEADER, header)
        template = prep.templates[label]
        traces = base_traces
        if cfg["data"]["traces"] == "generate":
            traces = probed_generated(cfg, _generated(cfg, out, header, label, ckpt, template,
                                                      base_traces, quiet))
            todo_all = [t for t in traces if (label, t.id) not in done]
        bar = tqdm(total=len(traces), initial=len(traces) - len(todo_all), desc=label,
                   disable=True if quiet else None, unit="trace")
        for trace, records in probe_traces(cfg, ckpt, label, template, todo_all,
                                           scorer=scorer, selection=prep.selection,
                                           fast_path=fast_path):
            append_group(out, label, trace.id, records)
            bar.update(1)
        bar.close()


def _probe_all_ray(cfg: RunConfig, out: Path, header: dict[str, Any], prep: Prepared,
                   done: set[tuple[str, str]], quiet: bool, tqdm: Any,
                   address: str | None) -> None:
    from faithprobe.run.ray_engine import probe_on_ray, worker_entry

    def generated(label: str) -> list[Trace] | None:
        path = generated_traces_file(out, label)
        return read_traces(path) if path.is_file() else None

    def on_worker(label: str, where: dict[str, Any], fast_path: dict[str, Any] | None) -> None:
        """A task's checkpoint placement, threads and patching path, in the header once per
        label with every worker that found them (workers that disagree: an error)."""
        before = json.dumps(header)
        patching = header.setdefault("patching", {})
        entry, fast = worker_entry(label, header["hardware"]["checkpoints"].get(label), where,
                                   patching.get(label), fast_path)
        header["hardware"]["checkpoints"][label] = entry
        if fast is not None:
            patching[label] = fast
        if json.dumps(header) != before:
            write_json(out / HEADER, header)

    def on_cluster(resources: dict[str, Any]) -> None:
        header["hardware"]["cluster"] = resources
        write_json(out / HEADER, header)

    probe_on_ray(
        cfg, prep, done, address=address, generated=generated,
        save_generated=lambda label, traces: _keep_generated(out, header, label, traces),
        on_worker=on_worker, on_cluster=on_cluster,
        on_records=lambda label, trace_id, records: append_group(out, label, trace_id, records),
        progress=lambda label, total, initial: tqdm(total=total, initial=initial, desc=label,
                                                    disable=True if quiet else None,
                                                    unit="trace"))


def _generated(cfg: RunConfig, out: Path, header: dict[str, Any], label: str, ckpt: Any,
               template: Any, problems: list[Trace], quiet: bool) -> list[Trace]:
    """Each checkpoint's own chains of thought, generated once and saved in the run folder."""
    path = generated_traces_file(out, label)
    if path.is_file():
        return read_traces(path)
    from faithprobe.models.generate import generate_traces

    traces = generate_traces(ckpt, problems, template, cfg["generation"], seed=cfg["seed"],
                             label=label,
                             batch_size=cfg["probe"]["batch_size"], quiet=quiet)
    _keep_generated(out, header, label, traces)
    return traces
