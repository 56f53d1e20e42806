"""The faithprobe command line: run, demo, score, compare, report.

Every user error (a bad file, an unknown config key, a missing checkpoint) is a FaithprobeError;
``main`` prints it as one line on stderr and exits with code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from faithprobe.errors import FaithprobeError

EXIT_USAGE = 2


def _not_built(name: str):
    def run(args: argparse.Namespace) -> int:
        raise FaithprobeError(f"'faithprobe {name}' is not built yet")

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faithprobe",
        description="Does a model's chain of thought still carry its answer? Causal step "
        "interventions, base vs fine-tuned.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text in (
        ("run", "run a scripted ablation study from a TOML config"),
        ("demo", "run the embedded organism study (base vs sft) end to end"),
        ("score", "recompute metrics and summary from a run folder's records"),
        ("compare", "one comparison report across run folders"),
        ("report", "regenerate a run folder's report"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=_not_built(name))
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
