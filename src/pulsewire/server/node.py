"""The node runner: one node (a :class:`HubServer`) from :class:`Settings`, run until a stop
signal, then drained.

A node drains on SIGTERM/SIGINT (:func:`drain`: WebSocket clients get close code 1012
"service restart", SSE/long-poll sessions the hub's 4000 "shutdown" push, both mean
"reconnect elsewhere") and re-reads its config file on SIGHUP (:mod:`pulsewire.server.reload`).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..extras import MissingExtra, needs_extra
from ..hub.hub import Hub
from ..protocol.close import CloseCode
from .app import HubServer
from .http import HttpLimits
from .reload import reload_settings
from .settings import ServeOptions, Settings, load_settings, pin_generated_secret
from .summary import log_startup

__all__ = [
    "RESTART_REASON",
    "Fail",
    "Ready",
    "abort_connections",
    "build_server",
    "check_extras",
    "drain",
    "fail_to_stderr",
    "print_ready",
    "run_node",
    "server_from_settings",
]

logger = logging.getLogger("pulsewire.server")

RESTART_REASON = "server restarting: reconnect"


def check_extras(settings: Settings) -> None:
    """Raise :class:`~pulsewire.extras.MissingExtra` if ``settings`` need an extra that is not
    installed (the engine's, the demo's): before starting anything, workers included."""
    engine = settings.config.engine
    if engine.startswith(
        (
            "redis://",
            "rediss://",
            "unix://",
            "redis+shards://",
            "redis+sentinel://",
            "redis+cluster://",
        )
    ):
        with needs_extra("redis", "the redis engine"):
            importlib.import_module("redis")
    elif engine.startswith(("nats://", "tls://")):
        with needs_extra("nats", "the nats engine"):
            importlib.import_module("nats")
    if settings.demo:
        with needs_extra("demo", "--demo"):
            importlib.import_module("pycrdt")
    if settings.proxy is not None:
        with needs_extra("proxy", "the backend proxy ([proxy] in the config)"):
            importlib.import_module("httpx")


def server_from_settings(settings: Settings, *, reuse_port: bool = False) -> HubServer:
    """A HubServer for ``settings``; raises ValueError or OSError (e.g. unreadable cert), or
    :class:`~pulsewire.extras.MissingExtra` (e.g. a redis engine without the redis extra)."""
    check_extras(settings)
    if settings.demo:
        with needs_extra("demo", "--demo"):
            from ..demos.notes import NotesService
    context = None
    if settings.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
        except (OSError, ssl.SSLError) as exc:
            files = " and ".join(filter(None, (settings.tls_cert, settings.tls_key)))
            raise ValueError(f"cannot load the TLS certificate from {files}: {exc}") from exc
    elif settings.tls_key:
        raise ValueError("--tls-key needs --tls-cert")
    config = settings.config
    server = HubServer(
        Hub(config),
        settings.host,
        settings.port,
        api_key=config.api_key,
        allowed_origins=settings.allowed_origins,
        ssl=context,
        reuse_port=reuse_port,
        limits=settings.limits,
        budget_limits=settings.budget_limits,
        http_limits=HttpLimits(
            head_timeout=settings.head_timeout,
            body_timeout=settings.body_timeout,
            body_min_rate=settings.body_min_rate,
            idle_timeout=settings.idle_timeout,
            send_timeout=settings.send_timeout,
        ),
        max_message_size=settings.max_message_size,
        admin_password=settings.admin_password,
    )
    server.longpoll.poll_timeout = settings.longpoll_timeout
    server.longpoll.idle_timeout = settings.longpoll_idle_timeout
    if settings.demo:
        from ..demos import DemoTokens

        assert config.token_hmac_secret is not None
        server.http.add("/demo/token", DemoTokens(config.token_hmac_secret))
        server.demo = True  # type: ignore[attr-defined]
        NotesService(server.hub).install()  # the notes demo's CRDT documents (hub hooks)
    if settings.proxy is not None:
        from .proxy.hooks import install_proxy

        install_proxy(server, settings.proxy)  # the hooks, answered by the backend
    return server


def build_server(
    options: ServeOptions | Mapping[str, Any], *, reuse_port: bool = False
) -> HubServer:
    """A HubServer for ``options`` (first), the config file, then defaults; raises
    ValueError if bad."""
    return server_from_settings(load_settings(options), reuse_port=reuse_port)


# --------------------------------------------------------------------------------- drain


async def drain(server: HubServer, timeout: float, reason: str = RESTART_REASON) -> bool:
    """Stop accepting, tell every client to reconnect elsewhere, flush, stop within ``timeout``.

    WebSocket clients get close code 1012 (after what is already queued for them); SSE and
    long-poll sessions get the hub's ``disconnect`` push with code 4000. Connections still
    open at the deadline (clients that never answer the close) are aborted. Returns whether
    everything finished in time.
    """
    closing = asyncio.ensure_future(server.close(CloseCode.SERVICE_RESTART, reason))
    done, _ = await asyncio.wait({closing}, timeout=timeout)
    if closing in done:
        if closing.exception() is not None:
            logger.error("error while closing", exc_info=closing.exception())
        return True
    left = abort_connections(server)
    logger.warning("drain deadline (%.1f s) passed: aborted %d connection(s)", timeout, left)
    done, _ = await asyncio.wait({closing}, timeout=1.0)
    if closing not in done:
        closing.cancel()
    return False


def abort_connections(server: HubServer) -> int:
    """Abort every connection of ``server`` (WebSocket and HTTP); returns how many."""
    count = 0
    for conn in server.websocket.connections:
        conn.abort()
        count += 1
    for proto in list(server.http.connections):
        if proto.transport is not None:
            proto.transport.abort()
            count += 1
    return count


def _start_watchdog(seconds: float) -> None:
    """Last resort: end the process if shutting down hangs past the drain deadline."""

    def expire() -> None:
        print(
            f"pulsewire serve: not stopped {seconds:.1f} s after the signal: exiting",
            file=sys.stderr,
        )
        sys.stderr.flush()
        os._exit(70)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


# ---------------------------------------------------------------------------------- node


Ready = Callable[[HubServer, Settings], None]
Fail = Callable[[int, str], None]


def fail_to_stderr(status: int, message: str) -> None:
    print(f"pulsewire serve: {message}", file=sys.stderr, flush=True)


def print_ready(server: HubServer, settings: Settings) -> None:
    log_startup(settings)  # on stderr, before the ready line that callers wait for
    if settings.demo:
        print("demo mode: API key from --api-key or 'demo'; tokens from /demo/token", flush=True)
    print(f"listening on {server.url}", flush=True)


async def run_node(
    options: ServeOptions | Mapping[str, Any],
    *,
    ready: Ready = print_ready,
    fail: Fail = fail_to_stderr,
    reuse_port: bool = False,
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> int:
    """Run one node until a stop signal, then drain; SIGHUP reloads ``--config``.

    Returns the exit status: 0 after a drain, 2 for bad settings, 1 if it cannot start.
    """
    if not isinstance(options, ServeOptions):
        options = ServeOptions.from_mapping(options)
    try:
        settings = load_settings(options)
        options = pin_generated_secret(options, settings)
        server = server_from_settings(settings, reuse_port=reuse_port)
    except (ValueError, OSError, MissingExtra) as exc:
        fail(2, str(exc))
        return 2
    try:
        await server.start()
    except Exception as exc:
        fail(1, f"cannot start: {exc}")
        try:
            await asyncio.wait_for(server.hub.close(), 5)
        except Exception:
            pass
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def hangup() -> None:
        nonlocal settings
        settings = reload_settings(server, options, settings)

    for sig in stop_signals:
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hangup)
    producers: list[asyncio.Task[None]] = []
    if settings.demo:
        from ..demos.producers import start_demo_producers

        producers = start_demo_producers(server.hub)  # the dashboard demo's live metrics
    ready(server, settings)
    await stop.wait()  # handlers stay installed: a repeated signal must not kill the drain
    if producers:
        from ..demos.producers import stop_demo_producers

        await stop_demo_producers(producers)
    started = time.monotonic()
    timeout = settings.drain_timeout
    _start_watchdog(timeout + 5.0)
    logger.info("draining %d session(s), deadline %.1f s", len(server.hub.sessions), timeout)
    in_time = await drain(server, timeout)
    logger.info("stopped in %.2f s%s", time.monotonic() - started, "" if in_time else " (aborted)")
    return 0
