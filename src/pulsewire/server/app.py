"""``pulsewire serve``: the hub on one port, with its HTTP front door.

Routes: ``/connection/websocket`` (the client endpoint), ``/api/*`` (the server API),
``/health``, ``/metrics`` (Prometheus), ``/`` and the static pages under ``/demo/`` plus
``/pulsewire.js`` (the browser client) and ``/pulsewire.d.ts``, all served from
``pulsewire/web`` (:mod:`pulsewire.server.files`).

One :class:`~pulsewire.aio.budget.Budgets` and one
:class:`~pulsewire.server.limits.ConnectionLimiter` per server are shared by the front door,
the WebSocket server and the SSE and long-poll transports, so that one address's connections
and sessions of every transport count together.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..aio.budget import BudgetLimits, Budgets
from ..aio.server import HTTPResponse
from ..aio.server import Server as WebSocketServer
from ..hub.errors import DisconnectCode
from ..hub.hub import Hub
from ..protocol.handshake import OriginPolicy, Request
from ..transports.http_session import Admit
from ..transports.longpoll import LongPollEndpoints
from ..transports.sse import SseEndpoints
from ..transports.websocket import SUBPROTOCOLS, serve_hub_session
from .admin import AdminPages
from .api import ApiHandler
from .files import StaticFiles
from .http import HttpLimits, HttpRequest, HttpResponse, HttpServer, json_response
from .limits import ConnectionLimiter, ConnectionLimits
from .stats import FrontDoorStats

__all__ = ["WEB_ROOT", "HubServer"]

logger = logging.getLogger("pulsewire.server")

WEB_ROOT = Path(str(resources.files("pulsewire") / "web"))


def add_hub_routes(
    http: HttpServer,
    hub: Hub,
    *,
    api_key: str | None,
    origins: OriginPolicy,
    max_buffered: int,
    max_message_size: int,
    started_at: float,
    budgets: Budgets | None = None,
    admit: Admit | None = None,
) -> tuple[ApiHandler, SseEndpoints, LongPollEndpoints]:
    """Register the hub's HTTP endpoints on ``http``: ``/health``, ``/metrics``, ``/api/*``,
    SSE (``/connection/sse``) and long-polling (``/connection/longpoll/*``). Shared by
    ``pulsewire serve`` and the ASGI adapter, so both answer the same way.

    ``budgets`` is charged with the sessions' queues; ``admit`` gives each long-poll
    session a connection slot of its address (see :mod:`pulsewire.transports.longpoll`)."""

    async def health(request: HttpRequest) -> HttpResponse:
        engine = hub.engine
        return json_response(
            {
                "status": "ok",
                "node": hub.node_id,
                "engine": engine.name,
                "engine_available": engine.available,
                "connections": len(hub.sessions),
                "uptime": round(time.time() - started_at, 3),
            }
        )

    async def metrics(request: HttpRequest) -> HttpResponse:
        body = generate_latest(hub.metrics.registry)
        return HttpResponse(200, body, [("Content-Type", CONTENT_TYPE_LATEST)])

    http.add("/health", health)
    http.add("/metrics", metrics)
    api = ApiHandler(hub, api_key)
    http.add("/api/", api, methods=("POST",), prefix=True)
    sse = SseEndpoints(
        hub, origins, max_buffered=max_buffered, max_message_size=max_message_size, budgets=budgets
    )
    sse.register(http)
    longpoll = LongPollEndpoints(
        hub,
        origins,
        max_buffered=max_buffered,
        max_message_size=max_message_size,
        budgets=budgets,
        admit=admit,
    )
    longpoll.register(http)
    return api, sse, longpoll


class HubServer:
    """Serves a :class:`Hub` over HTTP and WebSocket on one port.

    ``limits``: connection admission (caps and rate per address, counting long-poll
    sessions too); ``budget_limits``: the memory each connection and each address may make
    the node hold (default: :meth:`BudgetLimits.for_message_size` of ``max_message_size``);
    ``http_limits``: the front door's sizes and deadlines.
    """

    def __init__(
        self,
        hub: Hub,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        api_key: str | None = None,
        allowed_origins: Iterable[str] | None = None,
        check_origin: bool = True,
        ssl: ssl_module.SSLContext | None = None,
        web_root: Path | None = WEB_ROOT,
        max_message_size: int = 65536,
        max_buffered: int | None = None,
        reuse_port: bool = False,
        sock: Any = None,
        limits: ConnectionLimits | None = None,
        admin_password: str | None = None,
        budget_limits: BudgetLimits | None = None,
        http_limits: HttpLimits | None = None,
    ) -> None:
        self.hub = hub
        self.host = host
        self.port = port
        self.ssl = ssl
        self.sock = sock
        self.reuse_port = reuse_port
        self.web_root = web_root
        self.started_at = time.time()
        if max_buffered is None:
            # A hard cap above the hub's slow-consumer threshold: the channel policy (drop or
            # disconnect) decides first, the cap only guarantees bounded memory.
            max_buffered = 2 * hub.config.client_queue_max_bytes
        origins = (
            OriginPolicy(list(allowed_origins or ()), same_host=True)
            if check_origin
            else OriginPolicy(None)
        )
        self.origins = origins
        """The Origin policy shared by the WebSocket, SSE and long-poll endpoints (a reload
        updates it in place)."""
        if budget_limits is None:  # room for any legal message (see for_message_size)
            budget_limits = BudgetLimits.for_message_size(max_message_size)
        self.budgets = Budgets(budget_limits)
        """The memory accounts of every connection and session, by peer address."""
        self.websocket = WebSocketServer(
            lambda ws: serve_hub_session(hub, ws, max_buffered=max_buffered),
            None,
            None,
            process_request=self._refuse_blocked_address,
            origins=origins,
            subprotocols=SUBPROTOCOLS,
            compression="deflate",
            max_size=max_message_size,
            budgets=self.budgets,
        )
        self.limiter = ConnectionLimiter(limits)
        self.http = HttpServer(limiter=self.limiter, budgets=self.budgets, limits=http_limits)
        self.http.add_websocket("/connection/websocket", self.websocket)
        self.api, self.sse, self.longpoll = add_hub_routes(
            self.http,
            hub,
            api_key=api_key,
            origins=origins,
            max_buffered=max_buffered,
            max_message_size=max_message_size,
            started_at=self.started_at,
            budgets=self.budgets,
            admit=self.limiter.admit_session,
        )
        self.stats = FrontDoorStats(self.http, self.websocket, self.started_at)
        """The front door's counters (the admin page's and ``/metrics``' source)."""
        self.admin = AdminPages(hub, self.stats, admin_password)
        self.http.add("/admin", self.admin.page)
        self.http.add("/admin/stats", self.admin.stats)
        hub.metrics.registry.register(_FrontDoorCollector(self))
        self.files = None if web_root is None else StaticFiles(web_root, origins)
        """The web root's files (ETags, CORS for the allowed origins); None: not served."""
        if self.files is not None:
            self.http.add("/", self.static, prefix=True)
        self._server: asyncio.base_events.Server | None = None
        self.on_close: list[Callable[[], Awaitable[None]]] = []
        """Called (awaited, in order) by :meth:`close` once the hub is closed: what the
        node's parts must release (e.g. the backend proxy's HTTP connections)."""

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.hub.start()
        loop = asyncio.get_running_loop()
        if self.sock is not None:
            self._server = await loop.create_server(
                self.http.protocol_factory, sock=self.sock, ssl=self.ssl
            )
        else:
            self._server = await loop.create_server(
                self.http.protocol_factory,
                self.host,
                self.port,
                ssl=self.ssl,
                reuse_port=self.reuse_port or None,
                backlog=2048,
            )
        self.port = int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/"

    def stop_accepting(self) -> None:
        """Close the listening socket; open connections carry on."""
        if self._server is not None:
            self._server.close()

    async def close(
        self, code: int = DisconnectCode.SHUTDOWN, reason: str = "server shutting down"
    ) -> None:
        """Stop accepting, disconnect clients (they reconnect elsewhere), stop the hub.

        WebSocket clients get ``code`` (e.g. 1012 service restart) after what is already
        queued for them; SSE and long-poll sessions get the hub's disconnect push (4000)."""
        self.stop_accepting()
        self.http.close_idle()
        self.websocket.close(code, reason)
        await self.hub.close()
        for release in self.on_close:
            try:
                await release()
            except Exception:
                logger.exception("error while closing")
        await self.websocket.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()

    # -- routes ----------------------------------------------------------------------------------

    def _refuse_blocked_address(self, request: Request) -> HTTPResponse | None:
        """429 for a WebSocket handshake from an address with too many failed
        authentications (its connect would be refused anyway; this spares the session)."""
        guard = self.hub.auth_guard
        wait = guard.check(guard.client(request.remote_address, request.headers.items()), "token")
        if not wait:
            return None
        # aio.Server counts only the refusals of its own checks, not process_request answers.
        refusals = self.websocket.refusals
        refusals[429] = refusals.get(429, 0) + 1
        reason = f"too many failed authentications from your address: retry in {wait} s\n"
        return 429, [("Retry-After", str(wait))], reason

    async def static(self, request: HttpRequest) -> HttpResponse:
        """A file of the web root (see :mod:`pulsewire.server.files`)."""
        assert self.files is not None
        return await self.files(request)


class _FrontDoorCollector(Collector):
    """Handshakes, refusals and open connections, read from the servers at scrape time."""

    def __init__(self, server: HubServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        handshakes = CounterMetricFamily(
            "pulsewire_handshakes", "Accepted opening handshakes", labels=["transport"]
        )
        handshakes.add_metric(["websocket"], server.stats.handshakes())
        yield handshakes
        refusals = CounterMetricFamily(
            "pulsewire_refusals",
            "Connections, handshakes and requests refused, by HTTP status",
            labels=["status"],
        )
        for status, count in sorted(server.stats.refusals().items()):
            refusals.add_metric([str(status)], count)
        yield refusals
        limiter = server.limiter
        open_connections = GaugeMetricFamily(
            "pulsewire_tcp_connections", "Open TCP connections admitted by the front door"
        )
        open_connections.add_metric([], limiter.total - limiter.sessions)
        yield open_connections
        slots = GaugeMetricFamily(
            "pulsewire_session_slots",
            "Connection slots held by sessions without a TCP connection of their own "
            "(long-polling)",
        )
        slots.add_metric([], limiter.sessions)
        yield slots
        timeouts = CounterMetricFamily(
            "pulsewire_http_timeouts",
            "HTTP connections ended by a deadline, by what was awaited (head and body also "
            "count as 408 refusals; send: a response or stream the peer did not take)",
            labels=["phase"],
        )
        for phase, count in sorted(server.http.timeouts.items()):
            timeouts.add_metric([phase], count)
        yield timeouts
        budgets = server.budgets
        exceeded = CounterMetricFamily(
            "pulsewire_budget_exceeded",
            "Connections and sessions closed over a memory hard limit, by the limit's scope",
            labels=["scope"],
        )
        for scope, count in sorted(budgets.exceeded.items()):
            exceeded.add_metric([scope], count)
        yield exceeded
        pauses = CounterMetricFamily(
            "pulsewire_budget_pauses",
            "Times a peer was told to stop sending (over a memory high-water mark)",
        )
        pauses.add_metric([], budgets.pauses)
        yield pauses
        held = GaugeMetricFamily(
            "pulsewire_held_bytes",
            "Bytes held for peers (input, requests, queued output) as last reported",
        )
        held.add_metric([], budgets.total)
        yield held
        addresses = GaugeMetricFamily(
            "pulsewire_budget_addresses", "Peer addresses with at least one memory account"
        )
        addresses.add_metric([], budgets.addresses)
        yield addresses
