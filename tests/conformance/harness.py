"""Process handling and report reading for the Autobahn|Testsuite conformance tests."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

#: Case outcomes (``behavior``) that count as a pass. UNIMPLEMENTED is counted separately.
PASSING_BEHAVIORS = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})
#: Closing-handshake outcomes (``behaviorClose``) that count as a pass.
PASSING_CLOSE_BEHAVIORS = frozenset({"OK", "INFORMATIONAL"})


def free_port() -> int:
    """Return a TCP port that was free a moment ago, below Linux's ephemeral range.

    Ports handed out by ``bind(0)`` come from the ephemeral range, where any outgoing
    connection on the machine (a load test, a browser) may take them before wstest binds
    (wstest listens on every interface); a random port in 20000-32767 rarely collides.
    """
    for _ in range(200):
        port = random.randint(20000, 32767)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("0.0.0.0", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port found in 20000-32767")


def child_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: ours, unbuffered, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Process:
    """A child process whose output is copied to a log file by a reader thread.

    It runs in its own session (process group), so ``stop`` also reaches its children.
    """

    def __init__(
        self, name: str, cmd: Sequence[str | os.PathLike[str]], log_path: Path, cwd: Path
    ) -> None:
        self.name = name
        self.cmd = [os.fspath(c) for c in cmd]
        self.log_path = log_path
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._log: TextIO = open(log_path, "w", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._log.write("$ " + " ".join(self.cmd) + "\n")
        self._log.flush()
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=cwd,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait until an output line matches ``pattern``; raise if it exits or times out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self._lines)
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise RuntimeError(
                        f"{self.name} exited ({self.proc.returncode}) before printing "
                        f"{pattern!r}:\n{self.tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{self.name} did not print {pattern!r} within {timeout:g} s:\n"
                        f"{self.tail()}"
                    )
                self._cond.wait(min(remaining, 0.5))

    def wait_for_port(self, port: int, timeout: float) -> None:
        """Wait until 127.0.0.1:``port`` accepts TCP connections."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise RuntimeError(
                    f"{self.name} exited ({self.proc.returncode}) before listening on "
                    f"port {port}:\n{self.tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not listening on port {port} after {timeout:g} s")
            time.sleep(0.1)

    def wait(self, timeout: float) -> int:
        """Wait for exit and return the exit code; raise TimeoutError after ``timeout``."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"{self.name} still running after {timeout:g} s:\n{self.tail()}"
            ) from None
        self._reader.join(10)
        return code

    def stop(self, grace: float = 10.0, sig: signal.Signals = signal.SIGINT) -> None:
        """Send ``sig`` to the process group, then SIGKILL after ``grace`` seconds.

        Use SIGTERM for Twisted programs such as wstest: Twisted ignores SIGINT when it was
        inherited as ignored (e.g. pytest started in the background by a shell script).
        """
        try:
            if self.proc.poll() is None:
                self._signal(sig)
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self.proc.wait(grace)
            self._signal(signal.SIGKILL)  # leftovers in the group, if any
        finally:
            self._reader.join(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._log.close()

    def _signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def tail(self, lines: int = 30) -> str:
        """The last output lines, for error messages."""
        with self._cond:
            return "\n".join(self._lines[-lines:])


def case_key(case_id: str) -> tuple[int, ...]:
    """Sort key for case ids such as ``"6.4.10"``."""
    return tuple(int(part) for part in case_id.split("."))


@dataclass
class CaseResult:
    """One case's outcome, from ``index.json`` and the case's own report file."""

    case_id: str
    behavior: str
    behavior_close: str
    duration_ms: int
    remote_close_code: int | None
    result: str = ""
    result_close: str = ""

    @property
    def failed(self) -> bool:
        """Whether the case counts as a failure (UNIMPLEMENTED is counted apart)."""
        if self.behavior == "UNIMPLEMENTED":
            return False
        return (
            self.behavior not in PASSING_BEHAVIORS
            or self.behavior_close not in PASSING_CLOSE_BEHAVIORS
        )


@dataclass
class Summary:
    """What a role's run produced, compared with what was selected."""

    role: str
    agent: str
    expected: dict[str, str]  # case id -> short description, in suite order
    results: dict[str, CaseResult] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def missing(self) -> list[str]:
        """Selected cases without a result."""
        return [c for c in self.expected if c not in self.results]

    @property
    def extra(self) -> list[str]:
        """Results for cases that were not selected."""
        return sorted((c for c in self.results if c not in self.expected), key=case_key)

    def having(self, behavior: str) -> list[str]:
        """Ids of the cases whose ``behavior`` is ``behavior``."""
        return [c for c, r in self.results.items() if r.behavior == behavior]

    @property
    def failed(self) -> list[str]:
        """Ids of the failed cases."""
        return [c for c, r in self.results.items() if r.failed]

    def render(self) -> str:
        """A short human-readable report: counts, then every failing or missing case."""
        lines = [
            f"{self.role}: {len(self.results)} cases, {len(self.failed)} failed, "
            f"{len(self.having('UNIMPLEMENTED'))} unimplemented, "
            f"{len(self.having('NON-STRICT'))} non-strict, "
            f"{len(self.having('INFORMATIONAL'))} informational "
            f"(agent {self.agent}, {len(self.expected)} selected, "
            f"{len(self.missing)} missing, {self.seconds:.1f} s)"
        ]
        for case_id in self.failed + self.having("UNIMPLEMENTED"):
            r = self.results[case_id]
            lines.append(
                f"  {case_id}: behavior={r.behavior} behaviorClose={r.behavior_close} "
                f"remoteCloseCode={r.remote_close_code} - {self._describe(case_id)}"
            )
            details = []
            if r.behavior not in PASSING_BEHAVIORS:
                details.append(r.result)
            if r.behavior_close not in PASSING_CLOSE_BEHAVIORS and r.result_close != r.result:
                details.append(r.result_close)
            lines.extend(f"      {_shorten(d, 200)}" for d in details if d)
        if self.missing:
            lines.append(f"  missing (selected, no result): {_id_list(self.missing)}")
        if self.extra:
            lines.append(f"  not selected but reported: {_id_list(self.extra)}")
        return "\n".join(lines)

    def _describe(self, case_id: str) -> str:
        return _shorten(self.expected.get(case_id, "?"), 110)

    def slowest(self, n: int = 5) -> str:
        """The ``n`` slowest cases, for sizing the selection."""
        ranked = sorted(self.results.values(), key=lambda r: r.duration_ms, reverse=True)[:n]
        return ", ".join(f"{r.case_id} {r.duration_ms / 1000:.1f}s" for r in ranked)


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _id_list(ids: Sequence[str], limit: int = 40) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def read_report(outdir: Path, role: str, agent: str, expected: dict[str, str]) -> Summary:
    """Read ``outdir/index.json`` (and the failing cases' own files) for ``agent``."""
    summary = Summary(role=role, agent=agent, expected=expected)
    index_path = outdir / "index.json"
    if not index_path.exists():
        return summary
    index: dict[str, dict[str, dict[str, Any]]] = json.loads(index_path.read_text())
    for case_id, entry in sorted(index.get(agent, {}).items(), key=lambda kv: case_key(kv[0])):
        result = CaseResult(
            case_id=case_id,
            behavior=entry["behavior"],
            behavior_close=entry["behaviorClose"],
            duration_ms=int(entry.get("duration") or 0),
            remote_close_code=entry.get("remoteCloseCode"),
        )
        if result.failed or result.behavior == "UNIMPLEMENTED":
            case_file = outdir / entry.get("reportfile", "")
            if case_file.is_file():
                details = json.loads(case_file.read_text())
                result.result = str(details.get("result") or "")
                result.result_close = str(details.get("resultClose") or "")
        summary.results[case_id] = result
    return summary


def publish(outdir: Path, dest: Path, logs: Sequence[Path] = ()) -> None:
    """Replace ``dest`` with the suite's reports (index.json, index.html, case files) and logs."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if outdir.is_dir():
        shutil.copytree(outdir, dest)
    else:
        dest.mkdir()
    for log in logs:
        if log.is_file():
            shutil.copy2(log, dest / log.name)
