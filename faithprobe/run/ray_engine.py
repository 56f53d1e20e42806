"""The Ray engine: a run's units of work as Ray tasks, on this machine or a cluster.

``faithprobe run CONFIG --engine ray [--ray-address ADDR]``. The driver (the command) checks
every input as a local run does, then submits, per checkpoint label:

- with generated traces, one task that writes the label's chains of thought (one task, so the
  generation batches are those of a local run);
- one task per slice of ``ray.traces_per_task`` traces: the probe of each trace and, for the
  traces the run patches or resamples (:func:`faithprobe.run.units.select_traces`, decided
  over the whole trace list), those stages; the task returns every record of its traces.

Each task loads its checkpoint once per worker process (kept for the next task of the same
checkpoint) with the checkpoint's placement, and asks Ray for ``ray.cpus_per_task`` CPUs, plus
``ray.gpus_per_task`` GPUs when the checkpoint is placed on a GPU; torch runs in it with the
threads a local run uses (the config's ``threads``, else the driver's), and the task reports its
checkpoint's device, dtype, threads and patching path, which every worker must agree on (the
header lists the workers). The driver alone writes the
run folder, a trace's records at a time as tasks finish, with the same progress log as a local
run, so ``--resume`` after the driver is killed completes the run. A task whose worker dies is
retried by Ray (``max_retries``); a task's records are written only once it has finished, so a
retried task writes each record once. Records are those of a local run (in another order).

The driver joins the cluster in the preflight (:mod:`faithprobe.run.ray_connect`), before the
run folder exists: an address that leads nowhere is a one-line error, Ray's own log lines are
kept off stderr, and SIGTERM cancels a Ray run as a local one (``cancelled``, exit 143).

Without an address a local Ray cluster starts on this machine and stops with the run; ``auto``
or ``HOST:PORT`` joins a running cluster (``ray start --head`` on the first machine, ``ray start
--address HOST:PORT`` on the others). Every machine needs faithprobe installed (with its
``ray`` extra) and the checkpoints at the same paths; the run folder is only on the driver's.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from faithprobe.data.traces import Trace
from faithprobe.errors import FaithprobeError
from faithprobe.records import Record
from faithprobe.run.config import RunConfig, placement_of
from faithprobe.run.units import probed_generated, template_of

__all__ = ["check_address", "gpus_asked", "import_ray", "probe_on_ray", "ray_node",
           "worker_entry"]

MAX_RETRIES = 3  # a task whose worker process dies is run again this many times at most
TASKS_PER_CPU = 4  # default slicing: about this many tasks per CPU of the cluster


def import_ray() -> Any:
    """``ray``, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise FaithprobeError("the Ray engine needs ray: pip install 'faithprobe[ray]'",
                              field="--engine") from None
    # Ray logs to stderr through its own handler; like every library's, its records go to the
    # root logger instead (the command keeps them for its log file; --debug prints them)
    log = logging.getLogger("ray")
    for handler in list(log.handlers):
        if type(handler) is logging.StreamHandler:
            log.removeHandler(handler)
    log.propagate = True
    return ray


# --- worker side --------------------------------------------------------------------------------
_LOADED: dict[tuple, Any] = {}  # per worker process: the checkpoints it has loaded
_FAST_PATHS: dict[tuple, Any] = {}
MAX_LOADED = 2  # checkpoints a worker keeps (a label's model and the InfoGain scorer)


def _load(cfg: RunConfig, spec: str, label: str) -> Any:
    from faithprobe.models.checkpoints import load_checkpoint

    where = placement_of(cfg, label)
    if str(where.get("device", "")).startswith("cuda:"):
        where = {**where, "device": "cuda"}  # Ray makes the task's GPU the only one it sees
    key = (spec, *sorted(where.items()))
    if key not in _LOADED:
        while len(_LOADED) >= MAX_LOADED:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = load_checkpoint(spec, allow_pickle=cfg["allow_pickle"], **where)
    return _LOADED[key]


def _setup(cwd: str, threads: int) -> None:
    from faithprobe.models.threads import set_threads

    if os.path.isdir(cwd):  # relative paths in the config resolve as on the driver
        os.chdir(cwd)
    set_threads(threads)


def _generate_task(cfg: RunConfig, label: str, spec: str, problems: list[Trace], cwd: str,
                   threads: int) -> list[Trace]:
    from faithprobe.models.generate import generate_traces

    _setup(cwd, threads)
    ckpt = _load(cfg, spec, label)
    return generate_traces(ckpt, problems, template_of(cfg, ckpt), cfg["generation"],
                           seed=cfg["seed"], label=label, batch_size=cfg["probe"]["batch_size"],
                           quiet=True)


def _probe_task(cfg: RunConfig, label: str, spec: str, scorer_spec: str | None,
                traces: list[Trace], selection: Any, cwd: str,
                threads: int) -> tuple[dict[str, Any], dict[str, Any] | None,
                                       list[tuple[str, list[Record]]]]:
    from faithprobe.models.placement import checkpoint_hardware
    from faithprobe.run.units import probe_traces

    _setup(cwd, threads)
    ckpt = _load(cfg, spec, label)
    scorer = _load(cfg, scorer_spec, "scorer") if scorer_spec else None
    fast_path = None
    if cfg["patching"]["enabled"]:
        from faithprobe.activation.patching import check_fast_path

        key = (spec, *sorted(placement_of(cfg, label).items()))
        if key not in _FAST_PATHS:
            _FAST_PATHS[key] = check_fast_path(ckpt.bridge)
        fast_path = _FAST_PATHS[key]
    out = [(t.id, records) for t, records in probe_traces(
        cfg, ckpt, label, template_of(cfg, ckpt), traces, scorer=scorer, selection=selection,
        fast_path=fast_path)]
    import torch

    where = {**checkpoint_hardware(ckpt), "threads": torch.get_num_threads(), "node": ray_node()}
    return where, (fast_path.to_json() if fast_path else None), out


def worker_entry(label: str, seen: dict[str, Any] | None, where: dict[str, Any],
                 fast_seen: dict[str, Any] | None, fast_path: dict[str, Any] | None
                 ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A label's header entries (hardware, patching path) after one more task reported
    ``where`` (its device, dtype, threads and ``node``) and ``fast_path``: the first report,
    or the same with the node added to ``workers``. Workers that found the checkpoint on
    other hardware, with other threads, or patching another way are an error: their records
    would not be a local run's."""
    found = {k: v for k, v in where.items() if k != "node"}
    nodes = [where["node"]] if "node" in where else []
    if seen is not None:
        before = {k: v for k, v in seen.items() if k != "workers"}
        if before != found:
            raise FaithprobeError(f"Ray workers disagree on checkpoint {label!r}: {before} on "
                                  f"{', '.join(seen.get('workers', []))}, {found} on "
                                  f"{', '.join(nodes)}", field="--engine")
        nodes = sorted({*seen.get("workers", []), *nodes})
    if fast_seen is not None and fast_path is not None and fast_seen != fast_path:
        raise FaithprobeError(f"Ray workers disagree on how checkpoint {label!r} is patched: "
                              f"{fast_seen} and {fast_path}", field="--engine")
    return {**found, "workers": nodes}, fast_seen if fast_seen is not None else fast_path


def ray_node() -> str:
    """The Ray node a task runs on (its IP address)."""
    import ray

    return ray.util.get_node_ip_address()


# --- driver side --------------------------------------------------------------------------------
def gpus_asked(cfg: RunConfig, label: str, cluster_gpus: float, per_task: float) -> float:
    """GPUs a task of ``label`` asks Ray for. A checkpoint placed on ``cuda`` needs the
    cluster to have one (else a one-line error: its tasks would wait for ever); one spread by
    ``device_map = "auto"`` asks for GPUs only where the cluster has some (on a CPU-only cluster
    the map is ignored, as a local run ignores it)."""
    where = placement_of(cfg, label)
    if str(where.get("device", "")).startswith("cuda"):
        if cluster_gpus <= 0:
            raise FaithprobeError(f"checkpoint {label!r} is placed on {where['device']} but the "
                                  "Ray cluster has no GPU", field=f"placement.{label}.device")
        return per_task
    return per_task if where.get("device_map") and cluster_gpus > 0 else 0.0


def _slices(traces: Sequence[Trace], size: int) -> list[list[Trace]]:
    return [list(traces[i:i + size]) for i in range(0, len(traces), size)]


def _raise_cause(exc: BaseException) -> None:
    """A task's FaithprobeError reaches the user as itself (one line, exit 2)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, FaithprobeError):
        raise FaithprobeError(cause.message, source=cause.source, field=cause.field,
                              line=cause.line) from None


def probe_on_ray(cfg: RunConfig, prep: Any, done: set[tuple[str, str]], *,
                 address: str | None,
                 generated: Callable[[str], list[Trace] | None],
                 save_generated: Callable[[str, list[Trace]], None],
                 on_worker: Callable[[str, dict[str, Any], dict[str, Any] | None], None],
                 on_cluster: Callable[[dict[str, Any]], None],
                 on_records: Callable[[str, str, list[Record]], None],
                 progress: Callable[[str, int, int], Any]) -> None:
    """Every (label, trace) not in ``done`` probed as Ray tasks (see the module docstring).

    ``generated(label)`` gives a label's saved generated traces (resume), ``save_generated``
    saves them; ``on_cluster`` gets the cluster's resources, ``on_worker(label, where,
    fast_path)`` where a task's checkpoint sat and how it patched; ``on_records(label, trace_id,
    records)`` writes a trace's records;
    ``progress(label, total, initial)`` returns a bar with ``update``/``close``.
    """
    from faithprobe.run.ray_connect import connect, disconnect, ray_call, wait_one

    ray = import_ray()
    started = connect(address)  # False where the preflight (or the caller) joined already
    pending: list[Any] = []
    try:
        ray_cfg = cfg.get("ray", {})
        cpus = int(ray_cfg.get("cpus_per_task", 1))
        import torch

        # the threads a local run uses (the config's, else the driver's): reductions over
        # another thread count may round otherwise, and records would not be a local run's
        threads = int(cfg.get("threads") or torch.get_num_threads())
        gpus = float(ray_cfg.get("gpus_per_task", 1.0))
        cwd = os.getcwd()
        specs = {label: ckpt.spec for label, ckpt in prep.checkpoints.items()}
        scorer_spec = prep.scorer.spec if prep.scorer is not None else None
        resources = ray_call(ray.cluster_resources)
        on_cluster({"ray": ray.__version__, "nodes": len(ray_call(ray.nodes)),
                    **{k: resources[k] for k in ("CPU", "GPU", "memory") if k in resources}})
        total_cpus = max(1, int(resources.get("CPU", 1)))
        asked = {label: gpus_asked(cfg, label, float(resources.get("GPU", 0)), gpus)
                 for label in prep.checkpoints}

        def options(fn: Any, label: str) -> Any:
            return ray.remote(fn).options(
                num_cpus=cpus, num_gpus=asked[label],
                max_retries=MAX_RETRIES, name=f"faithprobe:{label}")

        traces: dict[str, list[Trace]] = {}
        to_generate = {}
        for label in prep.checkpoints:
            if cfg["data"]["traces"] != "generate":
                traces[label] = prep.traces
            elif (saved := generated(label)) is not None:
                traces[label] = saved
            else:
                to_generate[label] = ray_call(options(_generate_task, label).remote,
                                              cfg, label, specs[label], prep.traces, cwd, threads)
        pending = list(to_generate.values())
        for label, ref in to_generate.items():
            wait_one(ray, [ref])
            traces[label] = ray_call(ray.get, ref)
            save_generated(label, traces[label])
        pending = []
        owner: dict[Any, str] = {}
        bars = {}
        for label in prep.checkpoints:
            if cfg["data"]["traces"] == "generate":
                traces[label] = probed_generated(cfg, traces[label])
            todo = [t for t in traces[label] if (label, t.id) not in done]
            bars[label] = progress(label, len(traces[label]), len(traces[label]) - len(todo))
            size = ray_cfg.get("traces_per_task") or max(
                1, math.ceil(len(todo) / (TASKS_PER_CPU * total_cpus)))
            for part in _slices(todo, int(size)):
                ref = ray_call(options(_probe_task, label).remote, cfg, label, specs[label],
                               scorer_spec, part, prep.selection, cwd, threads)
                owner[ref] = label
                pending.append(ref)
        while pending:
            ready, pending = wait_one(ray, pending)
            label = owner.pop(ready)
            where, fast_path, results = ray_call(ray.get, ready)
            on_worker(label, where, fast_path)
            for trace_id, records in results:
                on_records(label, trace_id, records)
                bars[label].update(1)
        for bar in bars.values():
            bar.close()
    except ray.exceptions.RayTaskError as exc:
        _raise_cause(exc)
        raise
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            disconnect()


def check_address(text: str | None) -> str | None:
    """``--ray-address``: None starts a local cluster, ``auto`` or ``HOST:PORT`` joins one."""
    if text is None:
        return None
    if text != "auto" and not (":" in text and text.rsplit(":", 1)[1].isdigit()) \
            and not text.startswith("ray://"):
        raise FaithprobeError("expected auto, HOST:PORT or ray://HOST:PORT",
                              source=text, field="--ray-address")
    return text

