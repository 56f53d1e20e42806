"""Runs: a study is a folder.

``results/<run>/`` (or ``--out``) holds, under constant names:

- ``header.json``: schema version; ``status`` (``started`` written first, then ``success``,
  ``error`` or ``cancelled``); the full config and the arguments passed; git commit and dirty
  flag; package versions; start and end times; labels -> checkpoint specs; the shard; the
  ``warnings`` about doubtful data (kind -> count and trace ids); ``preflight`` (per label, the
  longest prompt in tokens and the context); summary metrics at the end;
- ``traces.jsonl`` (the traces probed; with generated traces, one file per label,
  ``traces-<label>.jsonl``);
- ``records.jsonl``: one line per trace x checkpoint x intervention x step x site, appended a
  trace at a time; ``progress.jsonl`` names each (checkpoint, trace) whose records are complete;
- ``summary.json``, ``plots/``, ``report.md``, ``report.html``.

Every file but the two append-only logs is written atomically (temporary file, then rename). A
killed run leaves a readable header and records; ``resume`` drops any (checkpoint, trace) the
progress log does not name, and completes the run with the records an uninterrupted run writes.

Order of a run: every input is checked first (``prepare_run``: the traces, the config, each
checkpoint loaded once and kept, every trace rendered and tokenized with each checkpoint's
template and checked against its context); only then is the folder created, and locked
(``faithprobe.io.lock_folder``) for as long as the run writes it. ``status`` becomes ``success``
only after the report is written, so a run killed at any point resumes; SIGINT and SIGTERM
record ``cancelled``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from faithprobe.data.traces import Trace, check_fit, read_traces, trace_warnings, write_traces
from faithprobe.errors import Cancelled, FaithprobeError
from faithprobe.io import atomic_write, check_regular_file, lock_folder, read_json, write_json
from faithprobe.models.placement import checkpoint_hardware
from faithprobe.records import Record, dumps_record, read_records, record_key, write_records
from faithprobe.run.config import (
    RunConfig,
    check_limit,
    check_run_pairs,
    placement_of,
    with_pairs,
    without_pairs,
)

Engine = Literal["local", "ray"]

__all__ = ["HEADER", "RECORDS", "SUMMARY", "TRACES", "Prepared",
           "open_run", "prepare_run", "run_study", "score_runs"]

SCHEMA_VERSION = 1
HEADER = "header.json"
RECORDS = "records.jsonl"
PROGRESS = "progress.jsonl"
TRACES = "traces.jsonl"
SUMMARY = "summary.json"
_PACKAGES = ("faithprobe", "torch", "transformer-lens", "transformers", "numpy", "einops",
             "matplotlib", "safetensors")
REPORT_FILES = ("report.md", "report.html")
MAX_WARNING_IDS = 20  # trace ids kept per warning kind (the count is always whole)


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


def _content(out: Path) -> list[Path]:
    """What a folder holds, less the temporary files a killed writer leaves (``.NAME.*.tmp``)."""
    return [p for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))]


def check_out(out: Path, *, resume: bool) -> None:
    """``--out`` can become this run's folder: a folder or nothing, empty unless resuming, and
    its nearest existing parent writable. Checked before anything is loaded."""
    if out.exists() and not out.is_dir():
        raise FaithprobeError("exists and is not a folder", source=str(out), field="--out")
    if out.is_dir() and _content(out) and not (resume and (out / HEADER).exists()):
        raise FaithprobeError(
            "output folder exists and is not empty (use --resume to complete a killed run, or "
            "another --out)" if not resume else "holds no run header to resume; choose another "
            "--out", source=str(out), field="--out")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise FaithprobeError(f"cannot be created: {parent} is not a folder", source=str(out),
                              field="--out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FaithprobeError(f"cannot be created: {parent} is not writable", source=str(out),
                              field="--out")


def open_run(out: Path, cfg: RunConfig, argv: Sequence[str], *, resume: bool,
             shard: tuple[int, int] | None) -> dict[str, Any]:
    """Create (or reopen, with ``resume``) a run folder; returns its header. The caller holds
    the folder's lock (``faithprobe.io.lock_folder``)."""
    header_path = out / HEADER
    out.mkdir(parents=True, exist_ok=True)  # lock_folder made it already
    for stale in out.glob(".*.tmp"):  # a killed writer's temporary files: ours to remove now
        stale.unlink(missing_ok=True)
    if resume and header_path.exists():
        header = read_json(header_path, "run header")
        if header.get("config") != cfg or header.get("shard") != (list(shard) if shard else None):
            raise FaithprobeError("config or shard differs from the run being resumed",
                                  source=str(out))
        if header.get("status") == "success" and all(
                (out / name).is_file() for name in (SUMMARY, *REPORT_FILES)):
            raise FaithprobeError("run already finished; nothing to resume", source=str(out))
        header.update(status="started", resumed_at=_now(), error=None, ended=None)
        write_json(header_path, header)
        return header
    if _content(out):
        raise FaithprobeError("output folder exists and is not empty (use --resume to "
                              "complete a killed run, or another --out)", source=str(out))
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


def warnings_entry(found: dict[str, list[str]]) -> dict[str, Any]:
    """The header's ``warnings``: kind -> ``{"count", "traces"}`` (at most MAX_WARNING_IDS ids)."""
    return {kind: {"count": len(ids), "traces": ids[:MAX_WARNING_IDS]}
            for kind, ids in sorted(found.items())}


@dataclass
class Prepared:
    """What the preflight checked and loaded, kept for the run (nothing is loaded twice)."""

    traces: list[Trace]
    checkpoints: dict[str, Any]  # label -> Checkpoint (one object per distinct spec)
    templates: dict[str, Any]  # label -> PromptTemplate
    scorer: Any = None  # the fixed InfoGain scorer, if any
    warnings: dict[str, Any] = field(default_factory=dict)
    context: dict[str, dict[str, int]] = field(default_factory=dict)
    selection: Any = None  # units.Selection: decided over the whole trace list, not the shard


def prepare_run(cfg: RunConfig, out: Path, *, resume: bool = False,
                shard: tuple[int, int] | None = None, config_source: str = "config",
                on_cpu: bool = False) -> Prepared:
    """Every check a run makes before its folder exists: the output location, the traces, the
    interventions, each checkpoint (loaded once), each template with each tokenizer, every
    trace against each context. Raises FaithprobeError naming the input.

    ``on_cpu``: load the checkpoints on the CPU whatever their placement (the Ray engine's
    driver, which only checks them; its tasks load them where the config places them)."""
    from faithprobe.data.sources import load_traces
    from faithprobe.edits.interventions import make_intervention
    from faithprobe.models.checkpoints import check_same_tokenizer, preflight
    from faithprobe.run.units import (
        check_cue_inputs,
        probe_config,
        select_traces,
        shard_traces,
        template_of,
    )

    check_out(Path(out), resume=resume)
    try:
        every = load_traces(cfg["data"])
        traces = shard_traces(every, shard)
    except FaithprobeError as exc:
        if exc.line is not None or exc.field is not None:
            raise
        raise FaithprobeError(str(exc), source=config_source, field="data.path") from None
    if not traces:
        raise FaithprobeError("this shard holds no traces", field="--shard")
    probe_cfg = probe_config(cfg)
    for name in probe_cfg.interventions:
        try:
            make_intervention(name, **probe_cfg.options.get(name, {}))
        except FaithprobeError as exc:
            raise FaithprobeError(exc.message, source=config_source,
                                  field=f"probe.{name}") from None
    loaded: dict[tuple, Any] = {}

    def load(key: str, spec: str, label: str) -> Any:
        where = placement_of(cfg, label)
        if on_cpu:
            where = {"device": "cpu", "dtype": where["dtype"]}
        ident = (spec, *sorted(where.items()))
        if ident not in loaded:
            try:
                loaded[ident] = preflight(spec, allow_pickle=cfg["allow_pickle"], **where)
            except FaithprobeError as exc:
                raise FaithprobeError(str(exc), source=config_source, field=key) from None
        return loaded[ident]

    prep = Prepared(traces, {}, {}, selection=select_traces(
        cfg, [t.id for t in every], [t.question for t in every]))
    for label, spec in cfg["checkpoints"].items():
        ckpt = prep.checkpoints[label] = load(f"checkpoints.{label}", spec, label)
        prep.templates[label] = template_of(cfg, ckpt, config_source)
    if cfg["infogain"]["enabled"] and cfg["infogain"]["scorer"] != "self":
        prep.scorer = load("infogain.scorer", cfg["infogain"]["scorer"], "scorer")
    first, *others = prep.checkpoints
    for label in others if cfg["patching"]["enabled"] else ():
        try:
            check_same_tokenizer(prep.checkpoints[first], prep.checkpoints[label])
        except FaithprobeError as exc:
            raise FaithprobeError(exc.message, source=config_source,
                                  field=f"checkpoints.{label}") from None
    source = cfg["data"]["path"] if cfg["data"]["source"] == "jsonl" else config_source
    generate = cfg["data"]["traces"] == "generate"
    paraphrase = "paraphrase" in probe_cfg.interventions
    fits = [(label, ckpt, prep.templates[label], paraphrase)
            for label, ckpt in prep.checkpoints.items()]
    if prep.scorer is not None:
        fits.append(("infogain.scorer", prep.scorer, prep.scorer.template, False))
    for label, ckpt, template, para in fits:
        longest = check_fit(traces, ckpt.tokenizer, template, ckpt.n_ctx, source=source,
                            label=f"{label} ({ckpt.spec})", generate=generate, paraphrases=para)
        prep.context[label] = {"max_prompt_tokens": longest, "n_ctx": ckpt.n_ctx}
    if cfg["cue"]["enabled"]:
        check_cue_inputs(cfg, traces, prep.selection, [f[:3] for f in fits[:len(
            prep.checkpoints)]], source=source, config_source=config_source)
    prep.warnings = warnings_entry(trace_warnings(traces))
    return prep


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
                       on_cpu=engine == "ray")
    with lock_folder(out):
        header = open_run(out, cfg, argv, resume=resume, shard=shard)
        try:
            header.update(warnings=prep.warnings, preflight=prep.context,
                          hardware=hardware(prep) if engine == "local" else
                          {"engine": "ray", "placement": {
                              label: placement_of(cfg, label) for label in prep.checkpoints},
                           "checkpoints": {}})  # filled from the tasks, as they run
            write_json(out / HEADER, header)
            done = _restore(out) if resume else set()
            if cfg["data"]["traces"] == "file" and not (out / TRACES).exists():
                write_traces(out / TRACES, prep.traces)
            if engine == "ray":
                _probe_all_ray(cfg, out, header, prep, done, quiet, tqdm, ray_address)
            else:
                _probe_all(cfg, out, header, prep, done, quiet, tqdm)
            finish_run(out, header, mark_success=True)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, Cancelled)):
                how = exc.signal_name if isinstance(exc, Cancelled) else "SIGINT"
                header.update(status="cancelled", ended=_now(), error=f"cancelled by {how}")
            else:
                header.update(status="error", ended=_now(),
                              error=f"{type(exc).__name__}: {exc}"[:500])
            try:
                write_json(out / HEADER, header)
            except OSError:
                pass  # the error that brought us here is the one to report
            raise
    return out


def hardware(prep: Prepared) -> dict[str, Any]:
    """Where each checkpoint ran: its device and dtype, the GPU's name and memory, torch's
    and CUDA's versions, the CPU threads."""
    import torch

    models = dict(prep.checkpoints)
    if prep.scorer is not None:
        models["scorer"] = prep.scorer
    out: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                           "threads": torch.get_num_threads(), "checkpoints": {}}
    for label, ckpt in models.items():
        out["checkpoints"][label] = checkpoint_hardware(ckpt)
    return out


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    """Label -> the values of the catalogue's headline metrics the summary has."""
    from faithprobe.metrics import HEADLINE_METRICS

    return {label: {k: m[k]["value"] for k in HEADLINE_METRICS if k in m}
            for label, m in summary.get("checkpoints", {}).items()}


def _probe_all(cfg: RunConfig, out: Path, header: dict[str, Any], prep: Prepared,
               done: set[tuple[str, str]], quiet: bool, tqdm: Any) -> None:
    from faithprobe.run.units import probe_traces

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
            traces = _generated(cfg, out, label, ckpt, template, base_traces, quiet)
            todo_all = [t for t in traces if (label, t.id) not in done]
        bar = tqdm(total=len(traces), initial=len(traces) - len(todo_all), desc=label,
                   disable=True if quiet else None, unit="trace")
        for trace, records in probe_traces(cfg, ckpt, label, template, todo_all,
                                           scorer=scorer, selection=prep.selection,
                                           fast_path=fast_path):
            _append(out, label, trace.id, records)
            bar.update(1)
        bar.close()


def _probe_all_ray(cfg: RunConfig, out: Path, header: dict[str, Any], prep: Prepared,
                   done: set[tuple[str, str]], quiet: bool, tqdm: Any,
                   address: str | None) -> None:
    from faithprobe.run.ray_engine import probe_on_ray

    def generated(label: str) -> list[Trace] | None:
        path = out / f"traces-{label}.jsonl"
        return read_traces(path) if path.is_file() else None

    def on_worker(label: str, where: dict[str, Any], fast_path: dict[str, Any] | None) -> None:
        """A task's checkpoint placement and patching path, in the header once per label."""
        before = json.dumps(header)
        header["hardware"]["checkpoints"].setdefault(label, where)
        if fast_path is not None:
            header.setdefault("patching", {}).setdefault(label, fast_path)
        if json.dumps(header) != before:
            write_json(out / HEADER, header)

    def on_cluster(resources: dict[str, Any]) -> None:
        header["hardware"]["cluster"] = resources
        write_json(out / HEADER, header)

    probe_on_ray(
        cfg, prep, done, address=address, generated=generated,
        save_generated=lambda label, traces: write_traces(out / f"traces-{label}.jsonl", traces),
        on_worker=on_worker, on_cluster=on_cluster,
        on_records=lambda label, trace_id, records: _append(out, label, trace_id, records),
        progress=lambda label, total, initial: tqdm(total=total, initial=initial, desc=label,
                                                    disable=True if quiet else None,
                                                    unit="trace"))


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


def load_run(run_dir: Path) -> tuple[dict[str, Any], list[Record]]:
    """A run folder's header and records (a damaged folder is a clear error)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FaithprobeError("run folder does not exist", source=str(run_dir))
    header = read_json(run_dir / HEADER, "run header")
    source = str(run_dir / HEADER)
    if header.get("schema_version") != SCHEMA_VERSION or not isinstance(header.get("config"),
                                                                         dict):
        raise FaithprobeError("run header has no schema_version 1 / config", source=source)
    config = header["config"]
    metrics_cfg = config.get("metrics")
    for key, value in (("seed", config.get("seed")),
                       ("metrics.n_boot", metrics_cfg.get("n_boot")
                        if isinstance(metrics_cfg, dict) else None)):
        try:
            if value is None:
                raise FaithprobeError("run header's config has no value here")
            check_limit(key, value)
        except FaithprobeError as exc:
            raise FaithprobeError(exc.message, source=source, field=f"config.{key}") from None
    check_run_pairs(config, source)
    if (run_dir / RECORDS).exists():
        check_regular_file(run_dir / RECORDS, "records file")
    try:
        records = read_records(run_dir / RECORDS)
    except RecursionError:
        raise FaithprobeError("records are damaged (nested too deeply)",
                              source=str(run_dir / RECORDS)) from None
    if not records:
        raise FaithprobeError("run has no records", source=str(run_dir / RECORDS))
    return header, records


def merge_runs(run_dirs: Sequence[Path], *, repair: bool = False
               ) -> tuple[dict[str, Any], list[Record]]:
    """Shards of one study merged: same config, disjoint records. The comparisons chosen
    (``metrics.pairs``) may differ only when ``repair`` (new pairs replace them)."""
    headers, records = [], []
    for d in run_dirs:
        h, r = load_run(Path(d))
        headers.append(h)
        records.extend(r)
    first = headers[0]
    for d, h in zip(run_dirs[1:], headers[1:]):
        if without_pairs(h["config"]) != without_pairs(first["config"]):
            raise FaithprobeError("is not a shard of the same study (config differs)",
                                  source=str(d))
        if h["config"] != first["config"] and not repair:
            raise FaithprobeError("compares other checkpoint pairs than the first shard "
                                  "(config.metrics.pairs); choose them with --pair",
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
    if len(headers) > 1:  # the shards' warnings add up
        ids: dict[str, list[str]] = {}
        for h in headers:
            for kind, entry in (h.get("warnings") or {}).items():
                ids.setdefault(kind, []).extend(entry.get("traces", []))
        header["warnings"] = {kind: {"count": sum((h.get("warnings") or {}).get(kind, {}).get(
            "count", 0) for h in headers), "traces": v[:MAX_WARNING_IDS]}
            for kind, v in sorted(ids.items())}
    return header, list(seen.values())


def finish_run(out: Path, header: dict[str, Any], records: list[Record] | None = None, *,
               mark_success: bool = False) -> dict[str, Any]:
    """Summary and report of a run folder from its records; with ``mark_success`` the report is
    written from a header that says ``success`` (with the headline numbers), and the header file
    says so only once the report is written."""
    from faithprobe.metrics import checkpoint_labels, summarize
    from faithprobe.report.document import write_report
    from faithprobe.run.config import summary_plan
    from faithprobe.run.tracefiles import run_traces

    if records is None:
        records = read_records(out / RECORDS)
    summary = summarize(records, n_boot=header["config"]["metrics"]["n_boot"],
                        seed=header["config"]["seed"],
                        **summary_plan(header["config"], checkpoint_labels(records)))
    write_json(out / SUMMARY, summary)
    final = dict(header, status="success", ended=_now(), summary=_headline(summary)) \
        if mark_success else header
    write_report(out, records, summary, final,
                 run_traces(out, checkpoint_labels(records)) or None)
    if mark_success:  # last: a run killed before this line is resumed, report and all
        header.update(final)
        write_json(out / HEADER, header)
    return summary


def score_runs(run_dirs: Sequence[Path], out: Path | None = None,
               pairs: Sequence[Sequence[str]] | None = None) -> Path:
    """Recompute summary and report from records alone (merging shards into ``out``);
    ``pairs`` ([a, b] labels) replaces the config's ``metrics.pairs`` in the header."""
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
        if out.exists() and _content(out):
            raise FaithprobeError("output folder exists and is not empty", source=str(out),
                                  field="--out")
    header, records = merge_runs(run_dirs, repair=pairs is not None)
    if pairs is not None:
        from faithprobe.metrics import checkpoint_labels

        header["config"] = with_pairs(header["config"], pairs, checkpoint_labels(records),
                                      source=str(run_dirs[0]))
    target = run_dirs[0] if in_place else out
    with lock_folder(target):
        if not in_place:
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
