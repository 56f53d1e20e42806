"""The faithprobe command line: run, demo, score, compare, report.

One exit path (``main``): every user error (a bad file, an unknown config key, a missing
checkpoint, an unwritable --out) is a FaithprobeError, printed as one line on stderr, exit code 2.
Anything else that escapes is a bug: one line naming it and a log file holding the traceback,
exit code 1. SIGINT and SIGTERM end a run as ``cancelled`` (exit codes 130 and 143). No traceback
reaches stderr unless ``--debug`` is given; library warnings (transformers, matplotlib, torch)
go to that log instead of stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import errno
import logging
import os
import signal
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from faithprobe.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    Cancelled,
    FaithprobeError,
)

EXIT_USAGE = EXIT_BAD_INPUT
# OS errors that say something about the user's files or machine, not about faithprobe
_INPUT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                 errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}

# The embedded default: the organism study, base vs sft, small enough for two CPU cores.
DEMO_CONFIG = {
    "name": "organism demo: faithful base vs shortcut-fine-tuned sft",
    "seed": 0,
    "checkpoints": {"base": "organism:base", "sft": "organism:sft"},
    "data": {"source": "organism", "split": "id", "count": 60, "seed": 1},
    # an organism step is 4 tokens: 24 new tokens regenerate every later step and the suffix
    "probe": {"corrupt": {"corrupter": "organism"}, "max_new_tokens": 24},
    # exact patching and its attribution estimate on the same traces (attribution_agreement)
    "patching": {"max_traces": 12, "method": "both"},
    # the organisms write each step with probability ~1 at temperature 1: at 3 about one digit
    # in ten is resampled differently; 24 tokens rewrite every later step and the suffix
    "resample": {"enabled": True, "samples": 6, "temperature": 3.0, "top_p": 1.0,
                 "max_new_tokens": 24, "different": "numbers", "max_traces": 8},
    # the organisms' own cue: the question's tD: tag set to a digit other than the answer given
    "cue": {"enabled": True, "kinds": ["tag"], "max_new_tokens": 24},
    # each question and its twin that reads a variable never defined; the organisms decline
    # with "?" and take no instruction (base learned to, sft never saw such a question)
    "abstain": {"enabled": True, "answer": "?", "instruction": "", "max_new_tokens": 24,
                "max_traces": 20},
    "metrics": {"n_boot": 1000},
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is the usage line and one error line, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("faithprobe")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown (not installed)"


def _warning_lines(warnings_: dict, where: str) -> list[str]:
    """One line per kind of doubtful data a run or comparison stored (``warnings``)."""
    return [f"warning: {entry['count']} x {kind} (see {where})"
            for kind, entry in sorted(warnings_.items())]


def _finish(run: Path, quiet: bool) -> None:
    """How ``run`` and ``demo`` end: the verdict and the warnings (unless quiet), then the
    report's path."""
    if not quiet:
        from faithprobe.io import read_json
        from faithprobe.records import read_records
        from faithprobe.report.document import verdict_lines

        summary = read_json(run / "summary.json", "summary")
        for line in verdict_lines(summary, read_records(run / "records.jsonl")):
            print(line)
        header = read_json(run / "header.json", "run header")
        for line in _warning_lines(header.get("warnings") or {}, f"{run / 'header.json'}"):
            print(line)
    print(f"report: {run / 'report.html'}")


def _hardware_overrides(cfg: Any, args: argparse.Namespace) -> Any:
    """``--device`` / ``--dtype`` for every checkpoint (over the config's placement) and
    ``--threads`` (over its ``threads``); torch's threads are set here, before any model."""
    from faithprobe.models.threads import set_threads
    from faithprobe.run.config import validate_config

    over = {k: getattr(args, k) for k in ("device", "dtype") if getattr(args, k, None)}
    if over:
        cfg = validate_config({**cfg, **over, "placement": {
            label: {k: v for k, v in where.items() if k not in over}
            for label, where in cfg.get("placement", {}).items()}}, source="command line")
    threads = args.threads if getattr(args, "threads", None) else cfg.get("threads")
    if threads is not None:
        cfg = {**cfg, "threads": threads}
    set_threads(threads)
    return cfg


def _cmd_run(args: argparse.Namespace) -> int:
    from faithprobe.run.config import load_config
    from faithprobe.run.folder import run_study
    from faithprobe.run.units import parse_shard

    cfg = _hardware_overrides(load_config(args.config), args)
    shard = parse_shard(args.shard)
    address = None
    if args.ray_address is not None:
        if args.engine != "ray":
            raise FaithprobeError("needs --engine ray", field="--ray-address")
        from faithprobe.run.ray_engine import check_address

        address = check_address(args.ray_address)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if shard and not args.out:
        out = out.with_name(f"{out.name}-shard{shard[0]}of{shard[1]}")
    run = run_study(cfg, out, argv=sys.argv, resume=args.resume, shard=shard, quiet=args.quiet,
                    config_source=args.config, engine=args.engine, ray_address=address)
    _finish(run, args.quiet)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from faithprobe.run.config import validate_config
    from faithprobe.run.folder import run_study

    cfg = _hardware_overrides(validate_config(DEMO_CONFIG, source="demo"), args)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"demo-{stamp}"
    run = run_study(cfg, out, argv=sys.argv, resume=args.resume, quiet=args.quiet,
                    config_source="demo")
    _finish(run, args.quiet)
    return 0


def _pairs_text(pairs: Any) -> str:
    return "; ".join(f"{b} vs {a}" for a, b in pairs) if pairs else "the default pairs"


def _pairs(given: list[list[str]] | None) -> list[list[str]] | None:
    """``--pair A B`` or ``--pair=A,B`` (the form for a label starting with "-": argparse reads
    a separate ``-a`` as an option), as [a, b] lists."""
    if given is None:
        return None
    out = []
    for values in given:
        pair = values[0].split(",") if len(values) == 1 else values
        if len(pair) != 2:
            raise FaithprobeError(f"expected two labels, A B or A,B; got {' '.join(values)!r}",
                                  field="--pair")
        out.append(pair)
    return out


def _cmd_score(args: argparse.Namespace) -> int:
    from faithprobe.io import read_json
    from faithprobe.run.layout import HEADER
    from faithprobe.run.merge import score_runs

    args.pair = _pairs(args.pair)
    dirs = [Path(d) for d in args.run_dirs]
    in_place = args.out is None or (len(dirs) == 1 and Path(args.out).resolve()
                                    == dirs[0].resolve())
    before = None
    if in_place and args.pair and (dirs[0] / HEADER).is_file():
        config = read_json(dirs[0] / HEADER, "run header").get("config")
        metrics = config.get("metrics") if isinstance(config, dict) else None
        before = metrics.get("pairs") if isinstance(metrics, dict) else None
    run = score_runs(dirs, Path(args.out) if args.out else None, args.pair,
                     partial=args.partial)
    if in_place and args.pair:
        print(f"rescored {run} in place: comparisons {_pairs_text(args.pair)} replace "
              f"{_pairs_text(before)}")
    print(run / "summary.json")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from faithprobe.io import lock_folder
    from faithprobe.metrics import checkpoint_labels
    from faithprobe.report.document import write_report
    from faithprobe.run.read import load_run, read_summary
    from faithprobe.run.tracefiles import run_traces

    run = Path(args.run_dir)
    header, records = load_run(run)
    summary, disagree = read_summary(run, records, "summary (run 'faithprobe score' first)")
    traces = run_traces(run, checkpoint_labels(records)) or None
    with lock_folder(run):  # never while a run writes it
        report = write_report(run, records, summary, header, traces)
    for line in disagree:
        print(f"warning: {line}")
    print(report)
    return 0


def _compare_warnings(dirs: list[Path], runs: list) -> dict:
    """Doubtful comparisons, by kind: ``self_compare`` (a run compared with itself: the same
    folder, or the same records) and ``no_shared_trace`` (two runs without a trace in common,
    so no comparison between them is paired)."""
    found: dict[str, list[str]] = {}
    ids = [{r.trace_id for r in recs} for _, recs, _, _ in runs]
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            pair = f"{dirs[i]} vs {dirs[j]}"
            if dirs[i].resolve() == dirs[j].resolve() or runs[i][1] == runs[j][1]:
                found.setdefault("self_compare", []).append(pair)
            elif not ids[i] & ids[j]:
                found.setdefault("no_shared_trace", []).append(pair)
    return {kind: {"count": len(v), "pairs": v[:20]} for kind, v in sorted(found.items())}


COMPARISON = "comparison.json"  # a comparison folder's inputs and warnings


def _cmd_compare(args: argparse.Namespace) -> int:
    from faithprobe.io import atomic_folder, write_json
    from faithprobe.report.document import write_comparison
    from faithprobe.run.read import load_run, read_summary

    dirs = [Path(d) for d in args.run_dirs]
    runs, disagree = [], []
    for d in dirs:
        header, records = load_run(d)
        summary, found = read_summary(d, records, "summary (run 'faithprobe score' first)")
        disagree += found
        runs.append((d.name, records, summary, header))
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"comparison-{stamp}"
    for d in dirs:
        if out.resolve() == d.resolve() or d.resolve() in out.resolve().parents:
            raise FaithprobeError("is one of the runs being compared, or inside one; choose "
                                  "another --out", source=str(out), field="--out")
    if out.exists() and not out.is_dir():
        raise FaithprobeError("exists and is not a folder", source=str(out), field="--out")
    if out.exists() and any(out.iterdir()):
        if not ((out / COMPARISON).is_file() or (out / "report.html").is_file()) \
                or (out / "header.json").is_file():
            raise FaithprobeError("output folder exists and is not a comparison",
                                  source=str(out), field="--out")
        if not args.overwrite:
            raise FaithprobeError("output folder holds a comparison already (pass --overwrite "
                                  "to replace it)", source=str(out), field="--out")
    found = _compare_warnings(dirs, runs)
    # written whole into a temporary folder, renamed onto --out at the end: a failure leaves
    # nothing, and an earlier comparison (--overwrite) stays until the new one is complete
    with atomic_folder(out, replace=args.overwrite) as tmp:
        report = out / Path(write_comparison(tmp, runs, warnings=found)).relative_to(tmp)
        write_json(tmp / COMPARISON, {"schema_version": 1, "runs": [str(d) for d in dirs],
                                      "created": _dt.datetime.now(_dt.timezone.utc).isoformat(
                                          timespec="seconds"), "warnings": found})
    for line in [*(f"warning: {x}" for x in disagree),
                 *_warning_lines(found, str(out / COMPARISON))]:
        print(line)
    print(report)
    return 0


def _hardware_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="every checkpoint on this device: auto, cpu, cuda, cuda:N, "
                   "mps (default: the config's, else cpu)")
    p.add_argument("--dtype", help="every checkpoint in this precision: float32, bfloat16, "
                   "float16, auto (default: the config's, else float32)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: the config's, else all cores but one)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="faithprobe",
        description="Does a model's chain of thought still carry its answer? Causal step "
        "interventions, base vs fine-tuned.",
    )
    parser.add_argument("--version", action="version", version=f"faithprobe {_version()}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("run", help="run a scripted ablation study from a TOML config",
                       description="Run a study described by a TOML config (see "
                       "experiments/*.toml) into a run folder.")
    p.add_argument("config", help="the TOML config")
    p.add_argument("--out", help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="complete a killed run in --out")
    p.add_argument("--shard", metavar="K/N", help="run the K-th of N disjoint trace slices")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: Ray tasks on a local cluster or "
                   "the one at --ray-address (pip install 'faithprobe[ray]')")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="join a running Ray cluster: auto or HOST:PORT (default: start one here)")
    p.add_argument("--quiet", action="store_true", help="no verdict, no progress bars")
    _hardware_flags(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="run the embedded organism study (base vs sft)",
                       description="The embedded default: the organism study (faithful base "
                       "vs shortcut-fine-tuned sft) end to end on CPU; prints its verdict and "
                       "the path of its report.")
    p.add_argument("--out", help="run folder (default: runs/demo-<time>)")
    p.add_argument("--resume", action="store_true", help="complete a killed demo in --out")
    p.add_argument("--quiet", action="store_true", help="no verdict, no progress bars")
    _hardware_flags(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("score", help="recompute metrics and summary from records",
                       description="Recompute every metric, the summary and the report from "
                       "records alone (no model). Several folders (shards) merge into --out.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="merged run folder (needed with several RUN_DIRs)")
    p.add_argument("--pair", nargs="+", action="append", metavar="A B",
                   help="compare checkpoint B with A (repeat for more pairs); replaces the "
                   "config's metrics.pairs (default: the first checkpoint against each other); "
                   "--pair=A,B names a label starting with '-' (--pair=-a,b)")
    p.add_argument("--partial", action="store_true",
                   help="merge an incomplete set of shards on purpose (the header and the "
                   "report say which shards it holds)")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("compare", help="one comparison report across run folders",
                       description="One comparison report across scored run folders.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="comparison folder (default: runs/comparison-<time>); "
                   "never one of the runs compared")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the comparison already in --out")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("report", help="regenerate a run folder's report",
                       description="Regenerate report.md, report.html and plots of a scored "
                       "run folder.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(func=_cmd_report)
    for sub_parser in sub.choices.values():  # --debug after the command as well
        sub_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                help=_DEBUG_HELP)
    return parser


_DEBUG_HELP = "show tracebacks and library warnings on stderr"


def _visible(text: str) -> str:
    """``text`` on one line with every control character escaped (``\\x1b``, ``\\x00``): an
    error line that quotes an input never moves the cursor or rings a terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in " ".join(str(text).split()))


def _say(text: str) -> None:
    """One line on stderr, whatever the message holds."""
    print(_visible(text), file=sys.stderr)


class _Memory(logging.Handler):
    """Keeps the last warnings and log records (for the log file of an internal error)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines = [*self.lines[-199:], f"{record.name}: {record.getMessage()}"]
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is dropped
            pass


@contextlib.contextmanager
def _quiet_libraries(debug: bool) -> Iterator[_Memory]:
    """Library warnings and log records (transformers, matplotlib, torch, Python warnings) are
    kept in memory, not printed; ``--debug`` leaves them on stderr."""
    memory = _Memory()
    if debug:
        yield memory
        return
    # read when transformers is imported (within this call); restored after it
    quiet_env = {"TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
                 "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    saved_env = {key: os.environ.get(key) for key in quiet_env}
    for key, value in quiet_env.items():
        os.environ.setdefault(key, value)
    verbosity = bars = None
    if "transformers" in sys.modules:  # imported already (a test, an embedding program)
        from transformers.utils import logging as hf_logging

        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    root = logging.getLogger()
    root.addHandler(memory)
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            yield memory
    finally:
        logging.captureWarnings(False)
        root.removeHandler(memory)
        if verbosity is not None:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """SIGTERM raises Cancelled (SIGINT raises KeyboardInterrupt already), so a run records
    ``cancelled`` on its way out."""
    def on_term(signum: int, frame: object) -> None:
        raise Cancelled("SIGTERM")

    try:
        old = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _log_file(exc: BaseException, argv: Sequence[str] | None, memory: _Memory) -> str:
    """Write the traceback of an internal error to a log file; returns its path."""
    text = "\n".join([
        f"faithprobe {_version()} internal error at {_dt.datetime.now().isoformat()}",
        f"argv: {list(sys.argv if argv is None else argv)}", "",
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "warnings and log records:", *memory.lines, ""])
    root = os.environ.get("FAITHPROBE_CACHE") or Path.home() / ".cache" / "faithprobe"
    for folder in (Path(root) / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="faithprobe-error-", suffix=".log", dir=folder)
            with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as handle:
                handle.write(text)
            return name
        except OSError:
            continue
    return "(no log: nowhere to write one; rerun with --debug)"


def _stdout_failed(exc: OSError) -> int:
    """stdout is closed (a pipe whose reader left) or full, after the work: the work is kept.
    A closed pipe is exit 0 (as ``head`` expects); a full or failing one is exit 2 naming it.
    stdout then points at /dev/null, so the interpreter's own flush at exit says nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    if exc.errno == errno.EPIPE:
        return 0
    _say(f"faithprobe: error: <stdout>: {exc.strerror or exc} (the work is done and kept)")
    return EXIT_BAD_INPUT


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code (0, 1 internal error, 2 bad input, 130 SIGINT,
    143 SIGTERM) and prints one line on stderr for every failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    resumable = args.func in (_cmd_run, _cmd_demo)
    with _quiet_libraries(debug) as memory, _signals():
        try:
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed or full stdout is said here, not at exit
            return code
        except FaithprobeError as exc:
            if debug:
                traceback.print_exc()
            _say(f"faithprobe: error: {exc}")
            return EXIT_BAD_INPUT
        except (KeyboardInterrupt, Cancelled) as exc:
            name = exc.signal_name if isinstance(exc, Cancelled) else "SIGINT"
            _say(f"faithprobe: cancelled by {name}"
                 + ("; complete the run with --resume" if resumable else ""))
            return EXIT_SIGTERM if isinstance(exc, Cancelled) else EXIT_SIGINT
        except Exception as exc:  # noqa: BLE001 - the one exit path of everything else
            if debug:
                raise
            if isinstance(exc, OSError) and exc.filename is None and exc.errno in (
                    errno.EPIPE, errno.ENOSPC, errno.EDQUOT, errno.EIO):
                return _stdout_failed(exc)
            if isinstance(exc, OSError) and exc.errno in _INPUT_ERRNOS:
                where = f"{exc.filename}: " if exc.filename else ""
                _say(f"faithprobe: error: {where}{exc.strerror or exc}")
                return EXIT_BAD_INPUT
            log = _log_file(exc, argv, memory)
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            _say(f"faithprobe: internal error: {type(exc).__name__}"
                 f"{': ' + first if first else ''} (details in {log}; please report it)")
            return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
