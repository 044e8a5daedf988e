"""``pulsewire serve --workers N``: N full nodes on one port, under a supervising parent.

Each worker is a process of its own with its own Hub (node name ``<name>-<i>``), sharing the
configured engine, listening on the same port with ``SO_REUSEPORT``: the kernel spreads new
connections over the workers. Workers are started with multiprocessing's "spawn" context: a
fresh interpreter that inherits no event loop, thread, lock or engine connection from the
parent, on every platform, and the parent can start a replacement at any time the same way
(forking a parent that runs threads is not safe). Start-up takes a fraction of a second, once.
As with any "spawn" program, a script that calls ``serve_main`` must guard it with
``if __name__ == "__main__":`` (the ``pulsewire`` console script and ``python -m
pulsewire.cli`` do): the workers import the parent's main module.

The parent binds (without listening) a ``SO_REUSEPORT`` socket to the address first: that
fixes the port (``--port 0`` too) and keeps it while a worker restarts. Each worker reports
over a pipe when it listens (or why it cannot); the parent prints one ``listening on`` line
once all are up. SIGTERM/SIGINT are forwarded as SIGTERM (workers drain: see
:func:`pulsewire.server.node.drain`) and the parent waits for them; SIGHUP is forwarded
(workers reload their config). A worker that dies is restarted after a backoff; if a worker
fails while starting, at first start or ``RestartPolicy.max_failures`` times in a row later,
the parent stops everything and exits non-zero.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from ..extras import MissingExtra
from .app import HubServer
from .logs import configure_logging
from .node import check_extras, run_node
from .settings import ServeOptions, Settings, load_settings, pin_generated_secret
from .summary import log_startup

__all__ = ["RestartPolicy", "Supervisor", "supervise"]

logger = logging.getLogger("pulsewire.server")

STOP_GRACE = 5.0
"""Seconds the parent waits past the drain timeout before it kills a worker."""


@dataclass
class RestartPolicy:
    """When to restart a worker that died, and when to give up."""

    base_delay: float = 0.25
    max_delay: float = 5.0
    max_failures: int = 5
    """Consecutive failed runs (died before or soon after being ready) before giving up."""
    healthy_after: float = 10.0
    """A worker ready for this long had a good run: its failure count starts over."""

    def delay(self, failures: int) -> float:
        return min(self.max_delay, self.base_delay * float(2 ** max(0, failures - 1)))

    def failed_run(self, ready_for: float | None) -> bool:
        """Whether a run that was ready for ``ready_for`` seconds (None: never) counts as failed."""
        return ready_for is None or ready_for < self.healthy_after


@dataclass
class _Worker:
    index: int
    name: str
    process: BaseProcess | None = None
    channel: Connection | None = None
    ready_since: float | None = None
    failures: int = 0
    restart_at: float | None = None
    hangup_pending: bool = False


def _worker_main(args: ServeOptions, channel: Connection) -> None:
    """A worker process: one node on the shared port, reporting readiness over ``channel``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards Ctrl-C as SIGTERM
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the node handles it (reload)
    configure_logging(args.log_format, args.log_level, node=args.node_name or "")
    multiprocessing.current_process().name = args.node_name or "worker"

    def ready(server: HubServer, settings: Settings) -> None:
        channel.send(("ready", server.url))

    def fail(status: int, message: str) -> None:
        channel.send(("error", status, message))

    from ..aio.loop import run

    status = run(
        run_node(args, ready=ready, fail=fail, reuse_port=True, stop_signals=(signal.SIGTERM,))
    )
    channel.close()
    sys.exit(status)


class Supervisor:
    """Starts, watches, restarts and stops the workers (see the module docstring)."""

    def __init__(
        self,
        args: ServeOptions,
        settings: Settings,
        count: int,
        *,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.args = args
        self.settings = settings
        self.policy = policy or RestartPolicy()
        self.context = multiprocessing.get_context("spawn")
        base = settings.config.node_name or secrets.token_hex(4)
        self.workers = [_Worker(i, f"{base}-{i}") for i in range(1, count + 1)]
        self.port = settings.port
        self.url = ""
        self.listening = False
        self._signals: list[int] = []
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_w, False)

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        try:
            reservation = self._reserve()
        except OSError as exc:
            print(f"pulsewire serve: cannot start: {exc}", file=sys.stderr, flush=True)
            return 1
        previous = self._install_signals()
        try:
            for worker in self.workers:
                self._start(worker)
            return self._supervise()
        finally:
            self._stop_all()
            self._restore_signals(previous)
            reservation.close()
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)

    def _supervise(self) -> int:
        while True:
            now = time.monotonic()
            pending = [w.restart_at for w in self.workers if w.restart_at is not None]
            timeout = max(0.0, min(pending) - now) if pending else None
            waitables: list[Any] = [self._wakeup_r]
            for worker in self.workers:
                if worker.process is not None:
                    waitables.append(worker.process.sentinel)
                if worker.channel is not None:
                    waitables.append(worker.channel)
            ready = wait(waitables, timeout)
            if self._wakeup_r in ready:
                os.read(self._wakeup_r, 512)
            while self._signals:
                sig = self._signals.pop(0)
                if sig == signal.SIGHUP:
                    self._forward_hangup()
                else:
                    logger.info(
                        "%s: stopping %d worker(s)", signal.Signals(sig).name, self._alive()
                    )
                    return self._stop_all()
            for worker in self.workers:
                status = self._poll(worker, ready)
                if status is not None:
                    return status
            now = time.monotonic()
            for worker in self.workers:
                if worker.restart_at is not None and worker.restart_at <= now:
                    worker.restart_at = None
                    self._start(worker)
            if not self.listening and all(w.ready_since is not None for w in self.workers):
                self.listening = True
                log_startup(self.settings)
                if self.settings.demo:
                    print(
                        "demo mode: API key from --api-key or 'demo'; tokens from /demo/token",
                        flush=True,
                    )
                print(f"listening on {self.url}", flush=True)

    def _poll(self, worker: _Worker, ready: list[Any]) -> int | None:
        """Handle what ``worker`` reported; returns an exit status to stop with, or None."""
        channel = worker.channel
        if channel is not None and channel in ready:
            try:
                message = channel.recv()
            except (EOFError, OSError):
                channel.close()
                worker.channel = None
            else:
                if message[0] == "ready":
                    worker.ready_since = time.monotonic()
                    self.url = message[1]
                    logger.info("worker %s ready", worker.name)
                    if worker.hangup_pending:
                        self._hangup(worker)
                elif message[0] == "error":
                    print(
                        f"pulsewire serve: {worker.name}: {message[2]}", file=sys.stderr, flush=True
                    )
        process = worker.process
        if process is None or process.sentinel not in ready:
            return None
        process.join()
        code = process.exitcode
        ready_for = None if worker.ready_since is None else time.monotonic() - worker.ready_since
        worker.process = None
        worker.ready_since = None
        if worker.channel is not None:
            worker.channel.close()
            worker.channel = None
        if not self.listening:
            logger.error("worker %s failed to start (exit status %s)", worker.name, code)
            return code if code and code > 0 else 1
        worker.failures = worker.failures + 1 if self.policy.failed_run(ready_for) else 0
        if worker.failures >= self.policy.max_failures:
            logger.error(
                "worker %s failed %d times in a row: giving up", worker.name, worker.failures
            )
            return 1
        delay = self.policy.delay(max(worker.failures, 1))
        logger.warning(
            "worker %s died (exit status %s); restarting in %.2f s", worker.name, code, delay
        )
        worker.restart_at = time.monotonic() + delay
        return None

    # -- workers -----------------------------------------------------------------------------

    def _start(self, worker: _Worker) -> None:
        receiver, sender = self.context.Pipe(duplex=False)
        worker.hangup_pending = False  # it reads the config file from now on
        args = self.args.replace(node_name=worker.name, port=self.port, workers=None)
        process = self.context.Process(
            target=_worker_main, args=(args, sender), name=worker.name, daemon=False
        )
        process.start()
        sender.close()  # the worker holds the only writer: EOF means it is gone
        worker.process = process
        worker.channel = receiver
        logger.info("worker %s started (pid %s)", worker.name, process.pid)

    def _alive(self) -> int:
        return sum(1 for w in self.workers if w.process is not None and w.process.is_alive())

    def _forward_hangup(self) -> None:
        logger.info("SIGHUP: workers reload %s", self.args.config or "(no --config)")
        try:
            settings = load_settings(self.args)
        except (ValueError, OSError):
            settings = self.settings  # the workers log the error
        if settings.workers not in (None, len(self.workers)):
            logger.warning("reload: restart needed for workers (running %d)", len(self.workers))
        self.settings = dataclasses.replace(self.settings, drain_timeout=settings.drain_timeout)
        for worker in self.workers:
            if worker.ready_since is None:
                worker.hangup_pending = True  # sent once it is ready (and handles SIGHUP)
            else:
                self._hangup(worker)

    def _hangup(self, worker: _Worker) -> None:
        worker.hangup_pending = False
        process = worker.process
        if process is not None and process.pid is not None:
            os.kill(process.pid, signal.SIGHUP)

    def _stop_all(self) -> int:
        """SIGTERM every worker, wait for the drains, kill stragglers; 0 if all stopped well."""
        for worker in self.workers:
            worker.restart_at = None
            if worker.process is not None and worker.process.is_alive():
                worker.process.terminate()
        deadline = time.monotonic() + self.settings.drain_timeout + STOP_GRACE
        status = 0
        for worker in self.workers:
            process = worker.process
            if process is None:
                continue
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                logger.error("worker %s did not stop in time: killing it", worker.name)
                process.kill()
                process.join()
                status = 1
            elif process.exitcode not in (0, -signal.SIGTERM):  # -SIGTERM: stopped while starting
                status = 1
            worker.process = None
            if worker.channel is not None:
                worker.channel.close()
                worker.channel = None
        return status

    # -- port and signals --------------------------------------------------------------------

    def _reserve(self) -> socket.socket:
        """Bind (not listen) a SO_REUSEPORT socket: it fixes the port the workers share."""
        infos = socket.getaddrinfo(
            self.settings.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        return sock

    def _install_signals(self) -> dict[int, Any]:
        def handler(signum: int, frame: FrameType | None) -> None:
            self._signals.append(signum)

        previous: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            previous[sig] = signal.signal(sig, handler)
        previous[-1] = signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        return previous

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        signal.set_wakeup_fd(previous.pop(-1))
        for sig, action in previous.items():
            signal.signal(sig, action)


def supervise(args: ServeOptions, count: int) -> int:
    """Run ``count`` workers; refuses (status 2) several workers on the in-memory engine."""
    try:
        settings = load_settings(args)
        check_extras(settings)
    except (ValueError, OSError, MissingExtra) as exc:
        print(f"pulsewire serve: {exc}", file=sys.stderr, flush=True)
        return 2
    if count > 1 and settings.config.engine in ("", "memory"):
        print(
            f"pulsewire serve: --workers {count} needs a shared engine (--engine redis://... or "
            "nats://...): with the in-memory engine every worker would be a separate hub, and "
            "clients on different workers could not see each other's publications",
            file=sys.stderr,
            flush=True,
        )
        return 2
    if not hasattr(socket, "SO_REUSEPORT"):
        print("pulsewire serve: --workers needs SO_REUSEPORT (Linux, BSD, macOS)", file=sys.stderr)
        return 2
    if count > 1:
        logger.warning(
            "--workers %d: SSE and long-polling sessions need every request to reach the worker "
            "that holds them, which one shared port cannot guarantee; for those transports run "
            "one node per port behind a sticky proxy (docs/deployment.md)",
            count,
        )
    args = pin_generated_secret(args, settings)
    return Supervisor(args, settings, count).run()
