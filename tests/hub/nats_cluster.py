"""A three-server NATS cluster with JetStream, started from local ``nats-server`` processes.

Each server gets a client port, a cluster route port and a monitoring port on 127.0.0.1 (a
free triple from the ranges this test set owns: clients 4300-4399, routes 6300-6399,
monitoring 8300-8399) and a store directory of its own under ``directory``. ``start()``
waits until every server reports JetStream enabled with a meta leader known (``/jsz``);
``kill(i)`` SIGKILLs one by PID, ``restart(i)`` starts it again on the same ports and store;
``stop()`` kills whatever is left. Used by the ``nats-cluster`` engine kind
(tests/hub/engines/conftest.py) and tests/hub/test_cluster_nats_failover.py.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
CLIENT_BASE, ROUTE_BASE, MONITOR_BASE = 4300, 6300, 8300
RANGE = 100  # each base's range: ports base .. base + 99
SIZE = 3
READY_TIMEOUT = 30.0
#: The first nats-server whose compare-and-set (Nats-Expected-Last-Subject-Sequence) holds on
#: replicated streams under concurrent appends (nats-server issue #4320).
CAS_FIXED_IN = (2, 9, 21)  # a loaded 2-core machine: JetStream and the meta group take a while


def nats_server() -> str | None:
    """The ``nats-server`` binary, if installed."""
    return shutil.which("nats-server")


def server_version() -> tuple[int, int, int]:
    """``nats-server --version`` as numbers (``(0, 0, 0)`` when unknown)."""
    binary = nats_server()
    if binary is None:
        return (0, 0, 0)
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    text = out.stdout.strip().rsplit("v", 1)[-1]
    try:
        major, minor, patch = (int(part) for part in text.split(".")[:3])
    except ValueError:
        return (0, 0, 0)
    return (major, minor, patch)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_offset(taken: set[int]) -> int:
    """An offset whose client, route and monitor ports are free for all three servers."""
    for offset in range(0, RANGE - SIZE + 1, SIZE):
        if offset in taken:
            continue
        ports = [b + offset + i for b in (CLIENT_BASE, ROUTE_BASE, MONITOR_BASE) for i in range(3)]
        if all(_free(port) for port in ports):
            taken.add(offset)
            return offset
    raise RuntimeError("no free port triple in 4300-4399 / 6300-6399 / 8300-8399")


_TAKEN: set[int] = set()  # offsets handed out in this process (their servers may be down)


@dataclass
class Server:
    name: str
    port: int
    route: int
    monitor: int
    store: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def monitor_json(self, path: str) -> Any:
        """A monitoring endpoint's JSON (``/jsz``, ``/connz``...)."""
        with urllib.request.urlopen(f"http://{HOST}:{self.monitor}{path}", timeout=2) as reply:
            return json.loads(reply.read())


@dataclass
class NatsCluster:
    """Three ``nats-server`` processes routed into one cluster, JetStream on each."""

    directory: Path
    servers: list[Server] = field(default_factory=list)

    def __post_init__(self) -> None:
        offset = _free_offset(_TAKEN)
        for i in range(SIZE):
            name = f"n{i + 1}"
            self.servers.append(
                Server(
                    name,
                    CLIENT_BASE + offset + i,
                    ROUTE_BASE + offset + i,
                    MONITOR_BASE + offset + i,
                    self.directory / name,
                    self.directory / f"{name}.log",
                )
            )

    def url(self, replicas: int = SIZE, servers: list[Server] | None = None) -> str:
        """The engine URL: ``servers`` (default: all), and the replica count."""
        hosts = ",".join(f"{HOST}:{s.port}" for s in servers or self.servers)
        return f"nats://{hosts}?replicas={replicas}"

    def _spawn(self, server: Server) -> None:
        binary = nats_server()
        assert binary, "nats-server is not installed"
        routes = ",".join(f"nats://{HOST}:{s.route}" for s in self.servers if s is not server)
        server.store.mkdir(parents=True, exist_ok=True)
        with open(server.log, "ab") as log:
            server.proc = subprocess.Popen(
                [
                    binary,
                    "-js",
                    "-sd",
                    str(server.store),
                    "-a",
                    HOST,
                    "-p",
                    str(server.port),
                    "--cluster_name",
                    "pwtest",
                    "--cluster",
                    f"nats://{HOST}:{server.route}",
                    "--routes",
                    routes,
                    "--server_name",
                    server.name,
                    "-m",
                    str(server.monitor),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start(self) -> None:
        """Start the three servers; return once JetStream is ready on each."""
        try:
            for server in self.servers:
                self._spawn(server)
            self.wait_ready(self.servers)
        except BaseException:
            self.stop()
            raise

    def meta_leader(self, server: Server) -> str:
        """The meta leader's name as ``server`` sees it ("" while there is none)."""
        jsz = server.monitor_json("/jsz")
        return str((jsz.get("meta_cluster") or {}).get("leader") or "")

    def wait_ready(self, servers: list[Server], timeout: float = READY_TIMEOUT) -> None:
        """Until each of ``servers`` answers ``/healthz`` and knows the meta leader."""
        deadline = time.monotonic() + timeout
        for server in servers:
            while True:
                if not server.alive():
                    raise RuntimeError(f"nats-server {server.name} exited:\n{self.log(server)}")
                try:
                    healthy = server.monitor_json("/healthz?js-enabled-only=true")
                    if healthy.get("status") == "ok" and self.meta_leader(server):
                        break
                except OSError:
                    pass  # not listening yet, or answering 503 while JetStream starts
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nats-server {server.name} not ready:\n{self.log(server)}")
                time.sleep(0.05)

    def kill(self, index: int) -> None:
        """SIGKILL server ``index`` (by PID): no goodbye to clients or to the cluster."""
        server = self.servers[index]
        if server.proc is not None and server.alive():
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(10)

    def restart(self, index: int, timeout: float = READY_TIMEOUT) -> None:
        """Start server ``index`` again (same ports, same store); wait until it is ready."""
        server = self.servers[index]
        assert not server.alive(), f"{server.name} is still running"
        self._spawn(server)
        self.wait_ready([server], timeout)

    def index_of(self, name: str) -> int:
        return next(i for i, s in enumerate(self.servers) if s.name == name)

    def stop(self) -> None:
        """Kill every server still running (by PID) and reap it."""
        for server in self.servers:
            if server.proc is not None and server.alive():
                server.proc.kill()
        for server in self.servers:
            if server.proc is not None:
                try:
                    server.proc.wait(10)
                except subprocess.TimeoutExpired:  # pragma: no cover - a stuck process
                    pass

    def log(self, server: Server) -> str:
        try:
            return server.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""
