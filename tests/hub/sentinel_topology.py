"""Redis Sentinel topologies for tests: local ``redis-server`` processes, torn down by PID.

:class:`SentinelTopology` starts a master, one replica and three sentinels (ports 7100-7199
for the servers, 27100-27199 for the sentinels: this branch's range, free ones picked), waits
until the sentinels know the replica and each other (else a failover could not be voted),
can SIGKILL the master and wait for the replica's promotion, and stops every process it
started. :class:`RedisProcess` is one ``redis-server`` without persistence.

Sentinel settings (see :data:`DOWN_AFTER_MS`...): a dead master is subjectively down after
``down-after-milliseconds``, objectively down once a quorum (2) of sentinels agree, then one
sentinel is elected leader and promotes the replica (``parallel-syncs 1``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

__all__ = [
    "DOWN_AFTER_MS",
    "FAILOVER_TIMEOUT_MS",
    "MASTER_NAME",
    "SENTINEL_PORTS",
    "SERVER_PORTS",
    "RedisProcess",
    "SentinelTopology",
    "free_port",
    "redis_server_missing",
]

HOST = "127.0.0.1"
MASTER_NAME = "pwmaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
SERVER_PORTS = range(7100, 7200)
SENTINEL_PORTS = range(27100, 27200)
READY_TIMEOUT = 30.0  # sentinels discover each other through hello messages every 2 s


def redis_server_missing() -> None:
    """Skip when redis-server is not installed (fail under ``CI=true``)."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


_taken: set[int] = set()


def free_port(ports: range) -> int:
    """A port of ``ports`` nothing listens on (not handed out before by this process)."""
    for port in ports:
        if port in _taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
        _taken.add(port)
        return port
    raise RuntimeError(f"no free port in {ports}")


def _client(port: int) -> redis.Redis:
    return redis.Redis(
        host=HOST, port=port, socket_timeout=2, socket_connect_timeout=1, decode_responses=True
    )


def wait_until(check: Callable[[], Any], what: str, timeout: float = READY_TIMEOUT) -> None:
    """Poll ``check()`` (Redis errors count as false) every 50 ms until true; RuntimeError
    after ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class RedisProcess:
    """One ``redis-server`` (or sentinel) process of ours."""

    port: int
    directory: Path
    args: list[str] = field(default_factory=list)
    sentinel: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> RedisProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / f"{self.port}.log", "wb")  # noqa: SIM115 (the child's)
        if self.sentinel:
            command = ["redis-server", str(self.directory / f"{self.port}.conf"), "--sentinel"]
        else:
            command = [
                *("redis-server", "--port", str(self.port), "--bind", HOST),
                *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
                # A replica syncs at once (Redis 7 waits 5 s for more replicas by default).
                *("--repl-diskless-sync-delay", "0"),
                *self.args,
            ]
        with log:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        client = _client(self.port)
        try:
            wait_until(lambda: client.ping(), f"redis on {self.port}", 10)
        finally:
            client.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (no shutdown, no last write) and reap."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def log(self) -> str:
        try:
            return (self.directory / f"{self.port}.log").read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class SentinelTopology:
    """A master, one replica and three sentinels monitoring :data:`MASTER_NAME`."""

    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pw-sentinel-")))
    master: RedisProcess | None = None
    replica: RedisProcess | None = None
    sentinels: list[RedisProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The engine URL: every sentinel, the master name."""
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}"

    def start(self) -> SentinelTopology:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.master = RedisProcess(free_port(SERVER_PORTS), self.directory).start()
        self.replica = RedisProcess(
            free_port(SERVER_PORTS),
            self.directory,
            ["--replicaof", HOST, str(self.master.port)],
        ).start()
        replica = _client(self.replica.port)
        try:
            wait_until(
                lambda: replica.info("replication")["master_link_status"] == "up",
                "the replica to sync",
            )
        finally:
            replica.close()
        for _ in range(3):
            port = free_port(SENTINEL_PORTS)
            (self.directory / f"{port}.conf").write_text(
                f"port {port}\nbind {HOST}\ndir {self.directory}\n"
                f"sentinel monitor {MASTER_NAME} {HOST} {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self.sentinels.append(RedisProcess(port, self.directory, sentinel=True).start())
        for sentinel in self.sentinels:
            client = _client(sentinel.port)
            try:
                wait_until(
                    lambda client=client: self._knows_everyone(client),
                    f"sentinel {sentinel.port} to be ready",
                )
            finally:
                client.close()

    @staticmethod
    def _knows_everyone(client: redis.Redis) -> bool:
        state = client.sentinel_master(MASTER_NAME)
        return int(state["num-other-sentinels"]) == 2 and int(state["num-slaves"]) == 1

    def master_port(self) -> int:
        """The master's port as the sentinels say (the first that answers)."""
        for sentinel in self.sentinels:
            client = _client(sentinel.port)
            try:
                _host, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                return int(port)
            except (redis.RedisError, OSError, TypeError):  # the next sentinel
                continue
            finally:
                client.close()
        raise RuntimeError("no sentinel answers")

    def planned_failover(self) -> None:
        """``SENTINEL FAILOVER``: the replica is promoted, the old master stays up."""
        client = _client(self.sentinels[0].port)
        try:
            client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        finally:
            client.close()

    def kill_master(self) -> None:
        """SIGKILL the master."""
        assert self.master is not None
        self.master.kill()

    def replica_offset(self, meta_key: str) -> int:
        """A channel's offset on the replica once its link to the (dead) master is down:
        what the replica kept of the channel."""
        assert self.replica is not None
        client = _client(self.replica.port)
        try:
            wait_until(
                lambda: client.info("replication")["master_link_status"] == "down",
                "the replica to see its master gone",
                10,
            )
            return int(client.hget(meta_key, "offset") or 0)
        finally:
            client.close()

    def wait_promoted(self, timeout: float = 30.0) -> None:
        """Wait until every sentinel names the replica and the replica is a master."""
        assert self.replica is not None
        replica_port = self.replica.port
        client = _client(replica_port)

        def promoted() -> bool:
            if client.role()[0] != "master":
                return False
            return all(self._names(s.port) == replica_port for s in self.sentinels)

        try:
            wait_until(promoted, "the replica's promotion", timeout)
        finally:
            client.close()

    @staticmethod
    def _names(sentinel_port: int) -> int:
        client = _client(sentinel_port)
        try:
            return int(client.sentinel_get_master_addr_by_name(MASTER_NAME)[1])
        finally:
            client.close()

    def stop(self) -> None:
        """Kill every process started (by PID) and remove the directory."""
        for process in [*self.sentinels, self.replica, self.master]:
            if process is not None:
                process.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def logs(self) -> str:
        """Every process's log, for a failure message."""
        parts = []
        for process in [self.master, self.replica, *self.sentinels]:
            if process is not None:
                parts.append(f"--- {process.port}\n{process.log()[-3000:]}")
        return "\n".join(parts)
