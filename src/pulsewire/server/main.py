"""``pulsewire serve``: read settings (flags over config file over defaults) and run a node.

One node per process; ``--workers N`` runs N of them on one port under a supervisor (see
:mod:`pulsewire.server.workers`). A node drains on SIGTERM/SIGINT (:func:`drain`: WebSocket
clients get close code 1012 "service restart", SSE/long-poll sessions the hub's 4000
"shutdown" push, both mean "reconnect elsewhere") and re-reads ``--config`` on SIGHUP
(:mod:`pulsewire.server.reload`).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..aio.budget import BudgetLimits
from ..aio.loop import run
from ..extras import MissingExtra, needs_extra
from ..hub.config import HubConfig, load_config
from ..hub.hub import Hub
from ..protocol.close import CloseCode
from .app import HubServer
from .http import HttpLimits
from .limits import ConnectionLimits
from .logs import configure_logging

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "Settings",
    "build_server",
    "drain",
    "load_settings",
    "run_node",
    "serve_main",
]

logger = logging.getLogger("pulsewire.server")

DEFAULT_DRAIN_TIMEOUT = 10.0
RESTART_REASON = "server restarting: reconnect"
LIMIT_KEYS = frozenset(
    {
        "max_connections",
        "max_connections_per_ip",
        "connections_per_second_per_ip",
        "connections_burst_per_ip",
    }
)
BUDGET_KEYS = {
    "bytes_high_per_connection": "connection_high",
    "max_bytes_per_connection": "connection_hard",
    "bytes_high_per_ip": "address_high",
    "max_bytes_per_ip": "address_hard",
}
"""``[server]`` memory budget settings and the :class:`BudgetLimits` fields they set."""
TIMEOUT_KEYS = {
    "head_timeout": 10.0,
    "body_timeout": 30.0,
    "idle_timeout": 75.0,
    "send_timeout": 30.0,
    "longpoll_timeout": 25.0,
    "longpoll_idle_timeout": 60.0,
}
"""``[server]`` deadlines (seconds, positive) and their defaults."""
SERVER_KEYS = frozenset(
    {
        "host",
        "port",
        "allowed_origins",
        "demo",
        "tls_cert",
        "tls_key",
        "workers",
        "drain_timeout",
        "max_message_size",
        "body_min_rate",
        "admin_password",
        *LIMIT_KEYS,
        *BUDGET_KEYS,
        *TIMEOUT_KEYS,
    }
)
"""The settings of the ``[server]`` table."""
FRONT_DOOR_FIELDS = (
    "limits",
    "budget_limits",
    "max_message_size",
    "body_min_rate",
    *TIMEOUT_KEYS,
)
""":class:`Settings` fields of the front door's limits and deadlines: fixed at start (a
reload logs those that changed as "restart needed", see :func:`front_door_changes`)."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    """What a node runs with, resolved from flags, the config file and defaults."""

    config: HubConfig
    host: str = "127.0.0.1"
    port: int = 8000
    allowed_origins: tuple[str, ...] = ()
    demo: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    workers: int | None = None
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    max_message_size: int = 65536
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    body_min_rate: int = 1024
    idle_timeout: float = 75.0
    send_timeout: float = 30.0
    longpoll_timeout: float = 25.0
    longpoll_idle_timeout: float = 60.0
    budget_limits: BudgetLimits = field(default_factory=BudgetLimits)
    admin_password: str | None = None
    generated_secret: bool = field(default=False, compare=False)
    """The demo's token secret was made up here (pin it before starting more processes)."""


def load_settings(args: argparse.Namespace) -> Settings:
    """Flags (first), the config file, then defaults; raises ValueError or OSError if bad."""
    config, table = load_config(args.config) if args.config else (HubConfig(), {})
    unknown = set(table) - SERVER_KEYS
    if unknown:
        logger.warning("ignoring unknown [server] setting(s): %s", ", ".join(sorted(unknown)))
    changes: dict[str, Any] = {}
    if args.engine:
        changes["engine"] = args.engine
    if args.node_name:
        changes["node_name"] = args.node_name
    if args.api_key:
        changes["api_key"] = args.api_key
    if args.token_secret:
        changes["token_hmac_secret"] = args.token_secret
    if args.allow_anonymous:
        changes["allow_anonymous"] = True
    config = config.replace(**changes)
    host = args.host or str(table.get("host", "127.0.0.1"))
    port = args.port if args.port is not None else int(table.get("port", 8000))
    flag_origins = args.allowed_origin
    origins = flag_origins if flag_origins is not None else table.get("allowed_origins", [])
    if isinstance(origins, str) or not all(isinstance(o, str) for o in origins):
        raise ValueError("[server] allowed_origins must be a list of strings")
    demo = args.demo or bool(table.get("demo", False))
    generated = False
    if demo:
        if not _is_loopback(host) and not config.api_key:
            raise ValueError(
                "--demo hands out tokens to anyone: on a non-loopback host set --api-key too"
            )
        from ..demos import demo_config

        generated = config.token_hmac_secret is None
        config = demo_config(config)
        if not config.api_key:
            config = config.replace(api_key="demo")
    workers = getattr(args, "workers", None)
    if workers is None and table.get("workers") is not None:
        workers = int(table["workers"])
    if workers is not None and workers < 1:
        raise ValueError("workers must be at least 1")
    drain_timeout = getattr(args, "drain_timeout", None)
    if drain_timeout is None:
        drain_timeout = float(table.get("drain_timeout", DEFAULT_DRAIN_TIMEOUT))
    if drain_timeout < 0:
        raise ValueError("drain_timeout must not be negative")
    limits = ConnectionLimits(**{k: table[k] for k in LIMIT_KEYS if k in table})
    max_message_size = int(table.get("max_message_size", 65536))
    if max_message_size <= 0:
        raise ValueError("[server] max_message_size must be positive")
    timeouts = {key: float(table.get(key, default)) for key, default in TIMEOUT_KEYS.items()}
    for key, value in timeouts.items():
        if value <= 0:
            raise ValueError(f"[server] {key} must be positive")
    body_min_rate = int(table.get("body_min_rate", 1024))
    if body_min_rate < 0:
        raise ValueError("[server] body_min_rate must not be negative")
    admin_password = os.environ.get("PULSEWIRE_ADMIN_PASSWORD") or table.get("admin_password")
    return Settings(
        config=config,
        admin_password=admin_password,
        limits=limits,
        budget_limits=_budget_limits(table, max_message_size),
        max_message_size=max_message_size,
        body_min_rate=body_min_rate,
        **timeouts,
        host=host,
        port=port,
        allowed_origins=tuple(origins),
        demo=demo,
        tls_cert=args.tls_cert or table.get("tls_cert"),
        tls_key=args.tls_key or table.get("tls_key"),
        workers=workers,
        drain_timeout=drain_timeout,
        generated_secret=generated,
    )


def _budget_limits(table: dict[str, Any], max_message_size: int) -> BudgetLimits:
    """The memory budget settings of ``[server]`` (ValueError, with their names, if bad).

    Those not set follow ``max_message_size`` (:meth:`BudgetLimits.for_message_size`: 1 MiB,
    4 MiB, 16 MiB, 32 MiB up to 384 KiB messages), so that raising the message limit alone
    never makes legal messages stall or be refused."""
    derived = BudgetLimits.for_message_size(max_message_size)
    values = {
        field: int(table[key]) if key in table else getattr(derived, field)
        for key, field in BUDGET_KEYS.items()
    }
    try:
        return BudgetLimits(**values)
    except ValueError:
        raise ValueError(
            "[server] need 0 < bytes_high_per_connection <= max_bytes_per_connection and "
            "0 < bytes_high_per_ip <= max_bytes_per_ip (defaults 1 MiB, 4 MiB, 16 MiB, 32 MiB)"
        ) from None


def front_door_changes(old: Settings, new: Settings) -> list[str]:
    """The ``[server]`` limits and deadlines whose value differs, by their TOML names."""
    changed = [k for k in LIMIT_KEYS if getattr(old.limits, k) != getattr(new.limits, k)]
    changed += [
        key
        for key, name in BUDGET_KEYS.items()
        if getattr(old.budget_limits, name) != getattr(new.budget_limits, name)
    ]
    changed += [
        key
        for key in ("max_message_size", "body_min_rate", *TIMEOUT_KEYS)
        if getattr(old, key) != getattr(new, key)
    ]
    return sorted(changed)


def pin_generated_secret(args: argparse.Namespace, settings: Settings) -> argparse.Namespace:
    """A copy of ``args`` that keeps a made-up demo token secret across reloads and workers."""
    if not settings.generated_secret:
        return args
    return replace_args(args, token_secret=settings.config.token_hmac_secret)


def server_from_settings(settings: Settings, *, reuse_port: bool = False) -> HubServer:
    """A HubServer for ``settings``; raises ValueError or OSError (e.g. unreadable cert), or
    :class:`~pulsewire.extras.MissingExtra` (e.g. a redis engine without the redis extra)."""
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
    return server


def build_server(args: argparse.Namespace, *, reuse_port: bool = False) -> HubServer:
    """Settings from flags (first), the config file, then defaults; raises ValueError if bad."""
    return server_from_settings(load_settings(args), reuse_port=reuse_port)


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


def _fail_to_stderr(status: int, message: str) -> None:
    print(f"pulsewire serve: {message}", file=sys.stderr, flush=True)


def _print_ready(server: HubServer, settings: Settings) -> None:
    if settings.demo:
        print("demo mode: API key from --api-key or 'demo'; tokens from /demo/token", flush=True)
    print(f"listening on {server.url}", flush=True)


async def run_node(
    args: argparse.Namespace,
    *,
    ready: Ready = _print_ready,
    fail: Fail = _fail_to_stderr,
    reuse_port: bool = False,
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> int:
    """Run one node until a stop signal, then drain; SIGHUP reloads ``--config``.

    Returns the exit status: 0 after a drain, 2 for bad settings, 1 if it cannot start.
    """
    from .reload import reload_settings

    try:
        settings = load_settings(args)
        args = pin_generated_secret(args, settings)
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
        settings = reload_settings(server, args, settings)

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


def serve_main(args: argparse.Namespace) -> int:
    """``pulsewire serve``: one node in this process, or ``--workers N`` under a supervisor."""
    try:
        configure_logging(
            getattr(args, "log_format", None),
            getattr(args, "log_level", None),
            node=getattr(args, "node_name", None) or "",
        )
    except ValueError as exc:
        _fail_to_stderr(2, str(exc))
        return 2
    workers = getattr(args, "workers", None)
    if workers is None and args.config:
        try:
            workers = load_settings(args).workers
        except (ValueError, OSError) as exc:
            _fail_to_stderr(2, str(exc))
            return 2
    if workers is not None:
        from .workers import supervise

        return supervise(args, workers)
    return run(run_node(args))


def replace_args(args: argparse.Namespace, **changes: Any) -> argparse.Namespace:
    """A copy of ``args`` with ``changes``."""
    return argparse.Namespace(**{**vars(args), **changes})
