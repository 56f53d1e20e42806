"""The faithprobe command line: run, demo, score, compare, report.

Every user error (a bad file, an unknown config key, a missing checkpoint) is a FaithprobeError;
``main`` prints it as one line on stderr and exits with code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from collections.abc import Sequence
from pathlib import Path

from faithprobe.errors import FaithprobeError

EXIT_USAGE = 2

# The embedded default: the organism study, base vs sft, small enough for two CPU cores.
DEMO_CONFIG = {
    "name": "organism demo: faithful base vs shortcut-fine-tuned sft",
    "seed": 0,
    "checkpoints": {"base": "organism:base", "sft": "organism:sft"},
    "data": {"source": "organism", "split": "id", "count": 60, "seed": 1},
    # an organism step is 4 tokens: 24 new tokens regenerate every later step and the suffix
    "probe": {"corrupt": {"corrupter": "organism"}, "max_new_tokens": 24},
    "patching": {"max_traces": 12},
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


def _finish(run: Path, quiet: bool) -> None:
    """How ``run`` and ``demo`` end: the verdict (unless quiet), then the report's path."""
    if not quiet:
        from faithprobe.io import read_json
        from faithprobe.report.document import verdict_lines

        for line in verdict_lines(read_json(run / "summary.json", "summary")):
            print(line)
    print(f"report: {run / 'report.html'}")


def _cmd_run(args: argparse.Namespace) -> int:
    from faithprobe.run.config import load_config
    from faithprobe.run.folder import parse_shard, run_study

    cfg = load_config(args.config)
    shard = parse_shard(args.shard)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if shard and not args.out:
        out = out.with_name(f"{out.name}-shard{shard[0]}of{shard[1]}")
    run = run_study(cfg, out, argv=sys.argv, resume=args.resume, shard=shard, quiet=args.quiet,
                    config_source=args.config)
    _finish(run, args.quiet)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from faithprobe.run.config import validate_config
    from faithprobe.run.folder import run_study

    cfg = validate_config(DEMO_CONFIG, source="demo")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"demo-{stamp}"
    run = run_study(cfg, out, argv=sys.argv, resume=args.resume, quiet=args.quiet,
                    config_source="demo")
    _finish(run, args.quiet)
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from faithprobe.run.folder import score_runs

    run = score_runs([Path(d) for d in args.run_dirs], Path(args.out) if args.out else None)
    print(run / "summary.json")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from faithprobe.data.traces import read_traces
    from faithprobe.io import read_json
    from faithprobe.report.document import write_report
    from faithprobe.run.folder import SUMMARY, TRACES, load_run

    run = Path(args.run_dir)
    header, records = load_run(run)
    summary = read_json(run / SUMMARY, "summary (run 'faithprobe score' first)")
    traces = read_traces(run / TRACES) if (run / TRACES).is_file() else None
    print(write_report(run, records, summary, header, traces))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from faithprobe.io import read_json
    from faithprobe.report.document import write_comparison
    from faithprobe.run.folder import SUMMARY, load_run

    runs = []
    for d in args.run_dirs:
        header, records = load_run(Path(d))
        summary = read_json(Path(d) / SUMMARY, "summary (run 'faithprobe score' first)")
        runs.append((Path(d).name, records, summary, header))
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"comparison-{stamp}"
    if any(out.resolve() == Path(d).resolve() for d in args.run_dirs):
        raise FaithprobeError("is one of the runs being compared; choose another --out",
                              source=str(out), field="--out")
    if out.exists() and any(out.iterdir()):
        if not (out / "report.html").is_file() or (out / "header.json").is_file():
            raise FaithprobeError("output folder exists and is not a comparison",
                                  source=str(out), field="--out")
        if not args.overwrite:
            raise FaithprobeError("output folder holds a comparison already (pass --overwrite "
                                  "to replace it)", source=str(out), field="--out")
    out.mkdir(parents=True, exist_ok=True)
    print(write_comparison(out, runs))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="faithprobe",
        description="Does a model's chain of thought still carry its answer? Causal step "
        "interventions, base vs fine-tuned.",
    )
    parser.add_argument("--version", action="version", version=f"faithprobe {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("run", help="run a scripted ablation study from a TOML config",
                       description="Run a study described by a TOML config (see "
                       "experiments/*.toml) into a run folder.")
    p.add_argument("config", help="the TOML config")
    p.add_argument("--out", help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="complete a killed run in --out")
    p.add_argument("--shard", metavar="K/N", help="run the K-th of N disjoint trace slices")
    p.add_argument("--quiet", action="store_true", help="no verdict, no progress bars")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="run the embedded organism study (base vs sft)",
                       description="The embedded default: the organism study (faithful base "
                       "vs shortcut-fine-tuned sft) end to end on CPU; prints its verdict and "
                       "the path of its report.")
    p.add_argument("--out", help="run folder (default: runs/demo-<time>)")
    p.add_argument("--resume", action="store_true", help="complete a killed demo in --out")
    p.add_argument("--quiet", action="store_true", help="no verdict, no progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("score", help="recompute metrics and summary from records",
                       description="Recompute every metric, the summary and the report from "
                       "records alone (no model). Several folders (shards) merge into --out.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="merged run folder (needed with several RUN_DIRs)")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FaithprobeError as exc:
        print(f"faithprobe: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("faithprobe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
