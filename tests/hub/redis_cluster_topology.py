"""A local Redis Cluster for tests: six ``redis-server`` processes, three masters with one
replica each, built by ``redis-cli --cluster create`` in a temp dir, torn down by PID.

``ClusterTopology(base_port)`` uses ports ``base_port .. base_port+5`` (and the cluster bus
on port+10000). :meth:`ClusterTopology.kill_master` SIGKILLs the master owning a slot and
waits for its replica to be promoted. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
NODES = 6


def cluster_tools_missing() -> str | None:
    """Why a cluster cannot be started here (None when it can)."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


def cli(port: int, *args: str, timeout: float = 5.0) -> str:
    """``redis-cli -p port args...``; its stdout (raises when it fails)."""
    out = subprocess.run(
        ["redis-cli", "-h", HOST, "-p", str(port), *args],
        capture_output=True,
        timeout=timeout,
        check=True,
    )
    return out.stdout.decode()


def wait_until(predicate: object, timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll ``predicate()`` until true; returns the seconds it took (AssertionError after
    ``timeout``)."""
    start = time.monotonic()
    while True:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            if predicate():  # type: ignore[operator]
                return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class ClusterTopology:
    """Six local redis-server processes forming a cluster (3 masters + 3 replicas)."""

    base_port: int
    node_timeout_ms: int = 1000
    #: More ``redis-server`` arguments (e.g. ``("--cluster-require-full-coverage", "no")``).
    server_args: tuple[str, ...] = ()
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pw-rc-")))
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def ports(self) -> list[int]:
        return [self.base_port + i for i in range(NODES)]

    @property
    def alive_ports(self) -> list[int]:
        return [port for port, proc in self.procs.items() if proc.poll() is None]

    @property
    def url(self) -> str:
        """The engine URL (every node as a seed)."""
        return "redis+cluster://" + ",".join(f"{HOST}:{port}" for port in self.ports)

    def start(self) -> None:
        """Start the servers, create the cluster and wait until every node says ok."""
        try:
            for port in self.ports:
                options = {
                    "port": str(port),
                    "bind": HOST,
                    "cluster-enabled": "yes",
                    "cluster-config-file": f"nodes-{port}.conf",
                    "cluster-node-timeout": str(self.node_timeout_ms),
                    "save": "",
                    "appendonly": "no",
                    "dir": str(self.directory),
                    "logfile": f"redis-{port}.log",
                }
                args = [arg for name, value in options.items() for arg in (f"--{name}", value)]
                self.procs[port] = subprocess.Popen(
                    ["redis-server", *args, *self.server_args],
                    cwd=self.directory,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            for port in self.ports:
                wait_until(lambda port=port: "PONG" in cli(port, "PING"), 10, f"redis {port}")
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(f"{HOST}:{port}" for port in self.ports),
                    "--cluster-replicas",
                    "1",
                    "--cluster-yes",
                ],
                capture_output=True,
                timeout=30,
                check=True,
            )
            self.wait_ok()
            # Replicas attached and synced: a failover then has a replica to promote.
            wait_until(lambda: len(self.replicas()) == 3, 20, "three synced replicas")
        except BaseException:
            self.stop()
            raise

    def wait_ok(self, timeout: float = 20.0) -> float:
        """Wait until every live node reports ``cluster_state:ok`` and agrees on 3 masters."""

        def ok() -> bool:
            return all(
                "cluster_state:ok" in cli(port, "CLUSTER", "INFO") and len(self.masters(port)) == 3
                for port in self.alive_ports
            )

        return wait_until(ok, timeout, "cluster_state:ok on every node")

    def nodes(self, port: int) -> list[list[str]]:
        """``CLUSTER NODES`` as seen by ``port``, one list of fields per node."""
        return [line.split() for line in cli(port, "CLUSTER", "NODES").splitlines() if line]

    def masters(self, port: int | None = None) -> dict[int, list[str]]:
        """Live masters owning slots: port -> slot ranges (as in CLUSTER NODES)."""
        port = port or self.alive_ports[0]
        out: dict[int, list[str]] = {}
        for fields in self.nodes(port):
            flags = fields[2].split(",")
            if "master" in flags and "fail" not in flags and len(fields) > 8:
                out[int(fields[1].split("@")[0].rsplit(":", 1)[1])] = fields[8:]
        return out

    def replicas(self) -> list[int]:
        """Ports of replicas whose link to their master is up."""
        return [
            port
            for port in self.alive_ports
            if "master_link_status:up" in cli(port, "INFO", "replication")
        ]

    def owner(self, slot: int) -> int:
        """Port of the master serving ``slot``."""
        for port, ranges in self.masters().items():
            for spec in ranges:
                if spec.startswith("["):
                    continue  # a migrating/importing marker
                low, _, high = spec.partition("-")
                if int(low) <= slot <= int(high or low):
                    return port
        raise LookupError(f"no master serves slot {slot}")

    def node_id(self, port: int) -> str:
        return cli(port, "CLUSTER", "MYID").strip()

    def kill(self, port: int) -> None:
        """SIGKILL one server."""
        proc = self.procs[port]
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)

    def kill_master(self, slot: int, timeout: float = 20.0) -> tuple[int, float]:
        """SIGKILL the master of ``slot``; wait until another node serves it and the cluster
        is ok. Returns (killed port, seconds from the kill to a promoted, ok cluster)."""
        port = self.owner(slot)
        started = time.monotonic()
        self.kill(port)

        def promoted() -> bool:
            try:
                return self.owner(slot) != port
            except LookupError:  # the master is flagged failed, no replica promoted yet
                return False

        wait_until(promoted, timeout, f"a replica promoted for slot {slot}")
        self.wait_ok(timeout)
        return port, time.monotonic() - started

    def stop(self) -> None:
        """Kill every server this topology started (by PID) and remove the temp dir."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.procs.clear()
        shutil.rmtree(self.directory, ignore_errors=True)
