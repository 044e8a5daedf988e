"""The conventions every ``pulsewire`` subcommand shares.

- A usage error (a bad flag, a port out of range) prints one line on stderr,
  ``pulsewire CMD: MESSAGE (see pulsewire CMD --help)``, and exits 2.
- A runtime error (a busy port, a refused connection) prints one line,
  ``pulsewire CMD: MESSAGE``, and exits 1: a command raises :class:`CommandError`.
- ``--help`` shows each option's default.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
from typing import Any, NoReturn

__all__ = [
    "USAGE",
    "CommandError",
    "DefaultsFormatter",
    "Parser",
    "non_negative_seconds",
    "os_reason",
    "port",
    "positive_int",
    "say",
    "size",
]

USAGE = 2
"""The exit status of a usage error (argparse's, kept for every check of our own)."""


class CommandError(Exception):
    """A subcommand failed: ``message`` is printed as one line and ``status`` is the exit
    status (1, a runtime error, unless said otherwise)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def say(command: str, message: str) -> None:
    """One line on stderr: ``pulsewire COMMAND: MESSAGE``."""
    print(f"pulsewire {command}: {message}", file=sys.stderr, flush=True)


def os_reason(exc: OSError) -> str:
    """What went wrong, without the errno and the repeated address of ``str(exc)``:
    "connection refused", "address already in use", "name or service not known"."""
    if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
        text = str(exc.strerror or exc)
    else:
        text = os.strerror(exc.errno)
    return text[:1].lower() + text[1:]


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already says its default
    or there is none to show (None, False, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (exit 2) and whose help shows the
    defaults; its subparsers (``add_subparsers().add_parser``) are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def port(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_seconds(text: str) -> float:
    """A finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


_UNITS = (("kib", 1024), ("mib", 1024**2), ("gib", 1024**3), ("k", 1024), ("m", 1024**2))


def size(text: str) -> int | None:
    """A size in bytes: 1048576, 64KiB, 16MiB, or none (0, unlimited) for no limit."""
    value = text.strip().lower()
    if value in ("none", "0", "unlimited"):
        return None
    factor = 1
    for suffix, unit in _UNITS:
        if value.endswith(suffix):
            value, factor = value[: -len(suffix)], unit
            break
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(
            f"expected a size such as 1048576, 64KiB, 16MiB or none, got {text!r}"
        )
    return int(number * factor)
