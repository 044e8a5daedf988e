"""Print the Autobahn verdicts at the end of every run, so CI logs show them even when the
tests pass (pytest hides a passing test's output)."""

from __future__ import annotations

import os

import pytest

from .test_autobahn import SUMMARIES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SUMMARIES:
        return
    pure = (
        " (pure Python: PULSEWIRE_NO_EXTENSIONS=1)"
        if os.environ.get("PULSEWIRE_NO_EXTENSIONS")
        else ""
    )
    terminalreporter.section(f"Autobahn|Testsuite{pure}")
    for text in SUMMARIES:
        terminalreporter.write_line(text)
