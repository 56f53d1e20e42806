"""The one error type of faithprobe.

Every failure a user can cause (a bad trace file, a checkpoint that does not load, a config key
that does not exist, step spans of different lengths) raises :class:`FaithprobeError` with a
message naming the input and what is wrong with it. The command line prints that message as one
line on stderr and exits with code 2 (``EXIT_BAD_INPUT``); anything else that escapes is a bug:
one line, a log file with the traceback, exit code 1 (``EXIT_INTERNAL``).
"""

from __future__ import annotations


class FaithprobeError(Exception):
    """A problem with the user's input, named in one line.

    Args:
        message: what is wrong.
        source: the input it concerns (a file, a checkpoint spec, a config key, a trace id).
        line: the 1-based line of ``source``, where it has lines.
        field: the field, key or step inside that line.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.source is not None:
            where = str(self.source)
            if self.line is not None:
                where += f":{self.line}"
        if self.field is not None:
            where = f"{where} [{self.field}]" if where else f"[{self.field}]"
        text = f"{where}: {self.message}" if where else self.message
        # One line, always: a message that quotes user input must not break the line.
        return " ".join(text.split())


# Exit codes of the command line (README: "The command line").
EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: one line on stderr and a log file holding the traceback
EXIT_BAD_INPUT = 2  # a FaithprobeError: one line on stderr naming the input
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class Cancelled(BaseException):
    """The process was asked to stop (SIGTERM; SIGINT arrives as ``KeyboardInterrupt``).

    A ``BaseException``, like ``KeyboardInterrupt``, so that no ``except Exception`` swallows it
    on its way to the run, which records ``status: cancelled``.
    """

    def __init__(self, signal_name: str = "SIGTERM") -> None:
        self.signal_name = signal_name
        super().__init__(f"cancelled by {signal_name}")
