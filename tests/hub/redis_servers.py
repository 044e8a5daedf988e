"""Independent ``redis-server`` processes for tests: start N, SIGKILL or restart one, tear down.

Ports come from :data:`PORTS` (this test set's own range: the machine is shared), each server
runs in a temporary directory with no persistence (``--save ""``, no AOF: a restarted server
is empty, like a real one without persistence), and every process is killed by its PID.
Without ``redis-server`` the caller skips (fails under ``CI=true``), see :func:`require`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pytest

__all__ = ["HOST", "PORTS", "RedisServers", "require"]

HOST = "127.0.0.1"
PORTS = range(7200, 7300)
START_TIMEOUT = 10.0

_taken: set[int] = set()  # ports handed out by this process and not released yet


def require() -> None:
    """Skip (fail under ``CI=true``) when ``redis-server`` is not installed."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), 0.5) as sock:
            sock.settimeout(0.5)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServers:
    """``count`` redis-server processes on free ports of :data:`PORTS`; a context manager
    (or call :meth:`start` / :meth:`stop`)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.ports: list[int] = []
        self._procs: list[subprocess.Popen[bytes] | None] = []
        self._dir: Path | None = None

    def url(self, index: int, db: int = 0) -> str:
        return f"redis://{HOST}:{self.ports[index]}/{db}"

    @property
    def urls(self) -> list[str]:
        return [self.url(i) for i in range(self.count)]

    def shards_url(self, db: int = 0) -> str:
        """The ``redis+shards://`` URL of all the servers, in order."""
        return "redis+shards://" + ",".join(f"{HOST}:{p}" for p in self.ports) + f"/{db}"

    def start(self) -> RedisServers:
        require()
        self._dir = Path(tempfile.mkdtemp(prefix="pw-redis-shards-"))
        try:
            for _ in range(self.count):
                port = next((p for p in PORTS if p not in _taken and _port_free(p)), None)
                if port is None:
                    raise RuntimeError(f"no free port left in {PORTS}")
                _taken.add(port)
                self.ports.append(port)
                self._procs.append(None)
            for index in range(self.count):
                self.restart(index)
        except BaseException:
            self.stop()
            raise
        return self

    def pid(self, index: int) -> int | None:
        proc = self._procs[index]
        return None if proc is None or proc.poll() is not None else proc.pid

    def restart(self, index: int) -> None:
        """Start server ``index`` (again, on its port, empty); returns once it answers."""
        assert self._dir is not None and self.pid(index) is None
        port = self.ports[index]
        workdir = self._dir / str(port)
        workdir.mkdir(exist_ok=True)
        self._procs[index] = subprocess.Popen(
            [
                *("redis-server", "--port", str(port), "--bind", HOST, "--save", ""),
                *("--appendonly", "no", "--protected-mode", "no", "--dir", str(workdir)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(port):
            if self.pid(index) is None:
                raise RuntimeError(f"redis-server on port {port} exited at start")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not answer in time")
            time.sleep(0.02)

    def kill(self, index: int) -> None:
        """SIGKILL server ``index`` (by PID) and reap it: no shutdown, sockets reset."""
        proc = self._procs[index]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        self._procs[index] = None

    def stop(self) -> None:
        """Kill every server, release the ports, remove the directories."""
        for index in range(len(self._procs)):
            self.kill(index)
        _taken.difference_update(self.ports)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServers:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
