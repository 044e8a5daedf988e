"""Autobahn|Testsuite conformance runs for pulsewire's server and client.

* ``test_server``: ``pulsewire echo`` is fuzzed by ``wstest -m fuzzingclient``.
* ``test_client``: ``testee_client.py`` (pulsewire's client) is fuzzed by
  ``wstest -m fuzzingserver``.

wstest exits 0 even when cases fail, so each test reads the suite's JSON report, prints a summary
and fails on any FAILED (or otherwise non-passing) or UNIMPLEMENTED case, or on a selected case
that did not run. The reports are copied to ``<repo>/reports/autobahn/{server,client}/``
(open ``index.html``), together with the logs of every process (a stand-in's go to
``reports/autobahn/<stand-in>/{server,client}/``).

Environment:

* ``PULSEWIRE_AUTOBAHN_FULL=1``: run all 517 cases instead of the default selection.
* ``PULSEWIRE_AUTOBAHN_CASES=7.1.5,9.3.*``: run only these cases (suite patterns), for debugging.
* ``PULSEWIRE_AUTOBAHN_STANDIN=websockets``: test the ``websockets`` library instead of
  pulsewire (a stand-in echo server and client), to validate the harness or compare.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .harness import Process, Summary, free_port, publish, read_report
from .wstest_env import REPO_ROOT, ensure_wstest, resolve_cases

HERE = Path(__file__).resolve().parent

FULL = os.environ.get("PULSEWIRE_AUTOBAHN_FULL") == "1"
STANDIN = os.environ.get("PULSEWIRE_AUTOBAHN_STANDIN", "")
#: Agent name in the reports (and in the client's /runCase URLs).
AGENT = STANDIN or "pulsewire"
#: Where reports are published: reports/autobahn/{server,client}/ for pulsewire, and
#: reports/autobahn/<stand-in>/{server,client}/ for a stand-in, so both can be compared.
REPORTS = REPO_ROOT / "reports" / "autobahn" / (STANDIN or "")

#: Every non-compression category (the suite has no 8.* and no 11.* cases). 9.* (messages up to
#: 16 MiB, and 4 MiB in 64-byte fragments) takes only ~10-15 s per role, so it is run in full.
CORE_CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]
#: A sample of the permessage-deflate cases; each sends 1000 messages of one size and the 234 of
#: them take ~10 min per role. Sizes: .1 is 16 bytes, .11 is 8 KiB auto-fragmented into 256-byte
#: frames (a compressed message spread over continuation frames). 12.1-12.5 are the five data
#: sets (JSON and HTML text; bitmap, German text and PDF binary) with the default offer;
#: 13.1-13.7 are every negotiated parameter combination: context takeover kept or not
#: (no_context_takeover), max window bits default, 9 or 15, and a list of three offers.
COMPRESSION_CASES = [f"12.{data}.{size}" for data in range(1, 6) for size in (1, 11)] + [
    f"13.{params}.{size}" for params in range(1, 8) for size in (1, 11)
]
DEFAULT_CASES = CORE_CASES + COMPRESSION_CASES
#: PULSEWIRE_AUTOBAHN_CASES="7.1.5,9.3.*" runs just those (suite patterns, comma-separated).
CASES_OVERRIDE = [c.strip() for c in os.environ.get("PULSEWIRE_AUTOBAHN_CASES", "").split(",")]
CASES = ["*"] if FULL else [c for c in CASES_OVERRIDE if c] or DEFAULT_CASES
#: Total number of cases in autobahntestsuite 25.10.1.
ALL_CASES_COUNT = 517

#: Seconds allowed for one role's wstest run. Measured on 2 cores: the default selection takes
#: 43-50 s per role on a quiet machine; the full run 20-45 min per role, depending on the load.
RUN_TIMEOUT = 7200.0 if FULL else 600.0
TEST_TIMEOUT = RUN_TIMEOUT + 300.0
STARTUP_TIMEOUT = 60.0

pytestmark = [pytest.mark.conformance, pytest.mark.timeout(TEST_TIMEOUT)]


@dataclass(frozen=True)
class Suite:
    """The installed wstest and the cases selected for this run."""

    wstest: Path
    expected: dict[str, str]  # case id -> short description


@pytest.fixture(scope="module")
def suite() -> Suite:
    """Set up wstest (or skip) and resolve the selected cases with the suite itself."""
    if STANDIN not in ("", "websockets"):
        pytest.fail(f"PULSEWIRE_AUTOBAHN_STANDIN={STANDIN!r}: only 'websockets' is supported")
    wstest = ensure_wstest()
    expected = resolve_cases(CASES)
    if FULL:
        assert len(expected) == ALL_CASES_COUNT, f"the suite has {len(expected)} cases"
    else:
        assert len(expected) > 0
    return Suite(wstest, expected)


def server_command(port: int) -> list[str]:
    """The echo server under test, listening on 127.0.0.1:``port``."""
    if STANDIN:
        return [
            sys.executable,
            str(HERE / "standin_server.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    script = Path(sys.executable).parent / "pulsewire"
    if not script.exists():
        pytest.fail(f"{script} not found: install pulsewire in this environment (pip install -e .)")
    # Category 9 sends messages of up to 16 MiB (the default limit is 1 MiB).
    return [str(script), "echo", "--host", "127.0.0.1", "--port", str(port), "--max-size", "16MiB"]


#: What the conformance conftest prints at the end of the run, passed or not.
SUMMARIES: list[str] = []


def check(summary: Summary, outdir: Path, role: str, logs: list[Path], note: str = "") -> None:
    """Publish the reports, print the summary and fail on anything but a clean pass.

    ``note`` describes a problem found outside the report (e.g. the testee's exit status).
    """
    dest = REPORTS / role
    publish(outdir, dest, logs)
    text = summary.render() + (f"\n{note}" if note else "")
    SUMMARIES.append(f"{text}\n  reports: {dest / 'index.html'}")
    print()
    print(text)
    print(f"  slowest: {summary.slowest()}")
    print(f"  reports: {dest / 'index.html'}")
    problems = summary.failed or summary.having("UNIMPLEMENTED") or summary.missing
    if problems or summary.extra or note:
        pytest.fail(text, pytrace=False)


def test_server(suite: Suite, tmp_path: Path) -> None:
    """``wstest -m fuzzingclient`` against the echo server."""
    outdir = tmp_path / "report"
    logs = [tmp_path / "server.log", tmp_path / "wstest.log"]
    server = Process("echo server", server_command(free_port()), logs[0], tmp_path)
    try:
        match = server.wait_for_line(r"listening on ws://[\w.\[\]:]+:(\d+)/", STARTUP_TIMEOUT)
        port = int(match.group(1))
        spec = {
            "outdir": str(outdir),
            "servers": [{"agent": AGENT, "url": f"ws://127.0.0.1:{port}"}],
            "cases": CASES,
            "exclude-cases": [],
            "exclude-agent-cases": {},
        }
        spec_path = tmp_path / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        started = time.monotonic()
        wstest = Process(
            "wstest fuzzingclient",
            [suite.wstest, "-m", "fuzzingclient", "-s", spec_path],
            logs[1],
            tmp_path,
        )
        try:
            code = wstest.wait(RUN_TIMEOUT)
        finally:
            wstest.stop(sig=signal.SIGTERM)
        seconds = time.monotonic() - started
        assert code == 0, f"wstest exited with {code}:\n{wstest.tail()}"
        exited = server.proc.poll()
    finally:
        server.stop()
    summary = read_report(outdir, "server", AGENT, suite.expected)
    summary.seconds = seconds
    note = (
        f"the echo server exited early with {exited}:\n{server.tail()}"
        if exited is not None
        else ""
    )
    check(summary, outdir, "server", logs, note)


def test_client(suite: Suite, tmp_path: Path) -> None:
    """The testee client against ``wstest -m fuzzingserver``."""
    outdir = tmp_path / "report"
    logs = [tmp_path / "wstest.log", tmp_path / "client.log"]
    port = free_port()
    spec = {
        "url": f"ws://127.0.0.1:{port}",
        "outdir": str(outdir),
        "cases": CASES,
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    wstest = Process(
        "wstest fuzzingserver",
        # --webport 0: no embedded web server (it would take port 8080 on all interfaces).
        [suite.wstest, "-m", "fuzzingserver", "-s", spec_path, "--webport", "0"],
        logs[0],
        tmp_path,
    )
    try:
        wstest.wait_for_port(port, STARTUP_TIMEOUT)
        started = time.monotonic()
        client = Process(
            "testee client",
            [
                sys.executable,
                HERE / "testee_client.py",
                "--port",
                str(port),
                "--agent",
                AGENT,
                "--library",
                STANDIN or "pulsewire",
            ],
            logs[1],
            tmp_path,
        )
        try:
            code = client.wait(RUN_TIMEOUT)
        finally:
            client.stop()
        seconds = time.monotonic() - started
    finally:
        wstest.stop(sig=signal.SIGTERM)
    summary = read_report(outdir, "client", AGENT, suite.expected)
    summary.seconds = seconds
    note = f"the testee client exited with {code}:\n{client.tail()}" if code else ""
    check(summary, outdir, "client", logs, note)
