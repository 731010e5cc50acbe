"""The last line a process writes when it cannot do its job, in every log format.

``tether-<component>: error: <cause>; <what to do>`` on stderr, plain text, then the exit code the error
names. It is written directly (not through structlog), so it reads the same whether the logs are JSON or
console, and it is always the last line.
"""

from __future__ import annotations

import sys
from typing import NoReturn, TextIO

from tether.shared.errors import FatalError, SetupError


def failure_line(command: str, error: FatalError, *, help_command: str = "") -> str:
    """One line naming the cause and the fix; setup errors without a remedy point at ``--help``."""
    remedy = error.remedy
    if not remedy and isinstance(error, SetupError):
        remedy = f"run '{help_command or command} --help' for every option"
    text = f"{command}: error: {error.cause}"
    if remedy:
        text += f"; {remedy}"
    return " ".join(text.split())  # exactly one line, whatever the cause's text held


def report(command: str, error: FatalError, *, help_command: str = "", stream: TextIO | None = None) -> int:
    """Write the failure line and return the exit code to use."""
    out = stream if stream is not None else sys.stderr
    out.write(failure_line(command, error, help_command=help_command) + "\n")
    out.flush()
    return error.exit_code


def exit_with(command: str, error: FatalError, *, help_command: str = "") -> NoReturn:
    sys.exit(report(command, error, help_command=help_command))
