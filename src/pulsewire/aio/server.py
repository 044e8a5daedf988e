"""The asyncio WebSocket server: ``serve(handler, host, port)``.

Each accepted TCP connection is a :class:`ServerConnection` that parses the opening handshake
(with a time limit), routes it by path, answers 101 or a refusal, and then runs the handler
coroutine with the open connection. Closing the server stops listening, sends 1001 (going away)
to every client, and waits for them to leave.

Every connection charges what it makes the server hold to a memory account of
:attr:`Server.budgets`, under the peer's IP address, from ``connection_made`` to
``connection_lost`` (see :mod:`.budget`): over a high-water mark it stops reading, over a hard
limit it is failed with 1013. The default limits follow ``max_size``
(:meth:`BudgetLimits.for_message_size`), so that any legal message fits.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, cast

from ..protocol.close import CloseCode
from ..protocol.connection import Connection as CoreConnection
from ..protocol.connection import Side
from ..protocol.deflate import deflate_options
from ..protocol.errors import ConnectionClosed, Refused
from ..protocol.handshake import (
    HeadLimits,
    OriginPolicy,
    Request,
    ServerHandshake,
    http_response,
    resolve_head_limits,
)
from ..protocol.options import Compression
from .budget import BudgetLimits, Budgets
from .connection import Connection, Listener
from .signatures import forwards_to

__all__ = ["HTTPResponse", "Handler", "Server", "ServerConnection", "peer_address", "serve"]

logger = logging.getLogger("pulsewire.server")

Handler = Callable[["ServerConnection"], Awaitable[Any]]
Endpoint = Handler | type[Listener] | Listener
"""What a path routes to: a coroutine function, or :class:`Listener` callbacks."""
HTTPResponse = tuple[int, Sequence[tuple[str, str]], str | bytes]
"""(status, headers, body): what ``process_request`` returns to answer without upgrading."""
ProcessRequest = Callable[[Request], Awaitable[HTTPResponse | None] | HTTPResponse | None]


class ServerConnection(Connection):
    """A connection accepted by a :class:`Server`; handlers receive one of these."""

    _pause_while_writing = True

    __slots__ = ("_handshake", "_handshake_timer", "_on_closed", "_server")

    def __init__(self, server: Server) -> None:
        opts = server.options
        super().__init__(
            max_queue=opts["max_queue"],
            ping_interval=opts["ping_interval"],
            ping_timeout=opts["ping_timeout"],
            close_timeout=opts["close_timeout"],
            write_limit=opts["write_limit"],
        )
        self._server = server
        self._handshake: ServerHandshake | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._on_closed: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = tcp = cast(asyncio.Transport, transport)
        self.remote_address = peer = transport.get_extra_info("peername")
        server = self._server
        self._account = server.budgets.open(
            peer_address(peer), self._budget_pause, self._budget_resume
        )
        server._connections.add(self)
        if server._closing:
            tcp.abort()
            return
        self._handshake = handshake = server._new_handshake()
        # TLS here, or on the front door that handed the connection over: the same-host
        # Origin check then expects https pages. The peer address reaches process_request
        # hooks through the Request (e.g. to refuse an address, as the hub does with 429).
        handshake.secure = tcp.get_extra_info("ssl_object") is not None
        peer = self.remote_address
        handshake.remote_address = str(peer[0]) if isinstance(peer, tuple) else str(peer or "")
        self._handshake_timer = self.loop.call_later(
            server.options["open_timeout"], self._handshake_timed_out
        )

    def reserve_output(self, nbytes: int) -> None:
        """This connection's handler lets up to ``nbytes`` of output queue for the peer and
        bounds that itself (e.g. closing a slow consumer): raise the connection's hard memory
        limit by as much, so that the handler's own policy decides first. Its address's
        limits are unchanged."""
        if self._account is not None:
            self._account.reserve(nbytes)

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        self._refuse(Refused(408, "opening handshake timed out"))

    def _handshake_data(self, data: bytes) -> None:
        handshake = self._handshake
        if handshake is None:
            return  # refused already; ignore what follows
        try:
            request = handshake.receive_data(data)
        except Refused as exc:
            self._refuse(exc)
            return
        if request is None or self.request is not None:
            return
        self._request_received(request)

    def _request_received(self, request: Request) -> None:
        """The request head is complete: run the hook, then answer it."""
        self.request = request
        hook = self._server.process_request
        if hook is not None:
            try:
                answer = hook(request)
            except Exception:
                logger.exception("process_request failed")
                self._refuse(Refused(500, "internal server error during the opening handshake"))
                return
            if inspect.isawaitable(answer):
                self.loop.create_task(self._await_process_request(request, answer))
                return
            if answer is not None:
                self._answer(answer)
                return
        self._accept(request)

    def _take_request(self, request: Request, trailing: bytes) -> None:
        """A request parsed elsewhere (see :meth:`Server.attach`): check it and go on."""
        handshake = self._handshake
        if handshake is None:
            return  # refused already (the server is closing)
        try:
            handshake.receive_request(request, trailing)
        except Refused as exc:
            self._refuse(exc)
            return
        self._request_received(request)

    async def _await_process_request(
        self, request: Request, answer: Awaitable[HTTPResponse | None]
    ) -> None:
        try:
            result = await answer
        except Exception:
            logger.exception("process_request failed")
            self._refuse(Refused(500, "internal server error during the opening handshake"))
            return
        if result is not None:
            self._answer(result)
        else:
            self._accept(request)

    def _answer(self, answer: HTTPResponse) -> None:
        status, headers, body = answer
        self._write_and_close(http_response(status, body, headers))

    def _accept(self, request: Request) -> None:
        server = self._server
        handshake = self._handshake
        if handshake is None or self._transport is None or self._transport.is_closing():
            return
        try:
            handler = server._route(request.path)
            if handler is None:
                raise Refused(404, f"no WebSocket endpoint at {request.path}")
            response, subprotocol, codec = handshake.accept(
                request, extra_headers=server.options["extra_headers"]
            )
        except Refused as exc:
            self._refuse(exc)
            return
        except Exception:
            logger.exception("error while processing the opening handshake")
            self._refuse(Refused(500, "internal server error during the opening handshake"))
            return
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self.subprotocol = subprotocol
        if codec is not None:
            self.extensions = "permessage-deflate"
        self._transport.write(response)
        server.handshakes += 1
        core = CoreConnection(
            Side.SERVER,
            max_message_size=server.options["max_size"],
            max_frame_size=server.options["max_frame_size"],
            max_fragments=server.options["max_fragments"],
            deflate=codec,
            echo_close_reason=server.options["echo_close_reason"],
        )
        trailing = handshake.trailing
        self._handshake = None
        if isinstance(handler, Listener):
            self._listener = handler
        elif isinstance(handler, type) and issubclass(handler, Listener):
            self._listener = handler()
        self._opened(core, trailing)
        if self._listener is not None:
            return
        handler = cast(Handler, handler)
        task = self.loop.create_task(self._run_handler(handler))
        server._handler_tasks.add(task)
        task.add_done_callback(server._handler_tasks.discard)

    async def _run_handler(self, handler: Handler) -> None:
        try:
            await handler(self)
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            self.close_nowait(CloseCode.GOING_AWAY, "server shutting down")
            raise
        except Exception:
            logger.exception("connection handler failed")
            self.close_nowait(CloseCode.INTERNAL_ERROR, "internal server error")
        else:
            self.close_nowait()

    def _refuse(self, exc: Refused) -> None:
        self._handshake = None
        self._server._count_refusal(exc)
        body = exc.reason if exc.reason.endswith("\n") else exc.reason + "\n"
        self._write_and_close(http_response(exc.status, body, exc.headers))

    def _write_and_close(self, data: bytes) -> None:
        transport = self._transport
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        transport.close()
        self._start_close_timer()

    def connection_closed(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if self._on_closed is not None:
            self._on_closed()
            self._on_closed = None
        self._server._connections.discard(self)
        self._server._connection_gone()


class Server:
    """A WebSocket server: ``async with serve(...) as server`` or ``await serve(...)``."""

    def __init__(
        self,
        handler: Endpoint | Mapping[str, Endpoint],
        host: str | Sequence[str] | None = "127.0.0.1",
        port: int | None = 8765,
        *,
        sock: Any = None,
        ssl: ssl_module.SSLContext | None = None,
        origins: OriginPolicy | Iterable[str] | None = None,
        subprotocols: Sequence[str] = (),
        select_subprotocol: Callable[[list[str]], str | None] | None = None,
        require_subprotocol: bool = False,
        compression: Compression = "deflate",
        process_request: ProcessRequest | None = None,
        extra_headers: Sequence[tuple[str, str]] = (),
        max_size: int | None = 2**20,
        max_frame_size: int | None = None,
        max_fragments: int | None = 4096,
        max_queue: int = 16,
        write_limit: int = 65536,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        open_timeout: float = 10.0,
        close_timeout: float = 10.0,
        head_limits: HeadLimits | None = None,
        max_request_line: int | None = None,
        max_headers: int | None = None,
        max_header_bytes: int | None = None,
        reuse_port: bool | None = None,
        backlog: int = 1024,
        budgets: Budgets | None = None,
        echo_close_reason: bool = False,
    ) -> None:
        if budgets is None:
            budgets = Budgets(BudgetLimits.for_message_size(max_size))
        elif max_size is not None and budgets.limits.connection_hard < max_size:
            raise ValueError(
                f"connection_hard={budgets.limits.connection_hard} is below max_size={max_size}:"
                " no message of max_size could ever be held"
            )
        else:
            # Tighter than the defaults on purpose, maybe (small messages): say what it costs.
            misfit = budgets.limits.fits(max_size)
            if misfit is not None:
                logger.warning("memory budget: %s", misfit)
        if callable(handler) or isinstance(handler, Listener):
            self._routes: Mapping[str, Endpoint] | None = None
            self._default: Endpoint | None = handler
        else:
            self._routes = dict(handler)
            self._default = None
        self._host = host
        self._port = port
        self._sock = sock
        self._ssl = ssl
        self._reuse_port = reuse_port
        self._backlog = backlog
        self.process_request = process_request
        self._deflate = deflate_options(compression)
        self._origins = origins if isinstance(origins, OriginPolicy) else OriginPolicy(origins)
        self._subprotocols = list(subprotocols)
        self._select_subprotocol = select_subprotocol
        self._require_subprotocol = require_subprotocol
        self.head_limits = resolve_head_limits(
            head_limits, max_request_line, max_headers, max_header_bytes
        )
        """Limits on the request head of the opening handshake (``max_request_line``,
        ``max_headers`` and ``max_header_bytes`` override its fields when given)."""
        self.options: dict[str, Any] = {
            "max_size": max_size,
            "max_frame_size": max_frame_size,
            "max_fragments": max_fragments,
            "max_queue": max_queue,
            "write_limit": write_limit,
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "open_timeout": open_timeout,
            "close_timeout": close_timeout,
            "extra_headers": list(extra_headers),
            "echo_close_reason": echo_close_reason,
        }
        self.budgets = budgets
        """What each peer address may make this server hold (shared with the HTTP front door
        of a hub, so that one address's WebSocket, SSE and long-poll sessions count together).
        Its counters are this server's (and the front door's) memory metrics:
        ``budgets.exceeded`` (connections closed over a hard limit, by scope: "connection" or
        "address"), ``budgets.pauses`` (times a peer was told to stop reading),
        ``budgets.total`` and ``budgets.held(address)`` (bytes held now)."""
        self._connections: set[ServerConnection] = set()
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.base_events.Server | None = None
        self._closing = False
        self._closed_event: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self.handshakes = 0
        """How many opening handshakes were accepted."""
        self.refusals: dict[int, int] = {}
        """How many handshakes were refused, by HTTP status."""

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> Server:
        loop = asyncio.get_running_loop()
        self._closed_event = asyncio.Event()
        self._idle = asyncio.Event()
        if self._sock is not None:
            self._server = await loop.create_server(
                lambda: ServerConnection(self),
                sock=self._sock,
                ssl=self._ssl,
                backlog=self._backlog,
            )
        else:
            self._server = await loop.create_server(
                lambda: ServerConnection(self),
                self._host,
                self._port,  # type: ignore[arg-type]  # None means every interface
                ssl=self._ssl,
                reuse_port=self._reuse_port,
                backlog=self._backlog,
            )
        return self

    def attach(
        self,
        transport: asyncio.BaseTransport,
        data: bytes = b"",
        on_closed: Callable[[], None] | None = None,
        *,
        request: Request | None = None,
    ) -> ServerConnection:
        """Take over a connection accepted elsewhere (e.g. an HTTP server that saw an
        Upgrade request). With ``request``, the head that server parsed (within its own
        limits), ``data`` is what was read after it; without, ``data`` is everything read
        so far, request head included, and is parsed here. ``on_closed`` runs once when the
        connection is gone (e.g. to release a limit slot)."""
        if self._idle is None:
            self._closed_event = asyncio.Event()
            self._idle = asyncio.Event()
        conn = ServerConnection(self)
        conn._on_closed = on_closed
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if request is not None:
            conn._take_request(request, data)
        elif data:
            conn.data_received(data)
        return conn

    def __await__(self) -> Generator[Any, None, Server]:
        return self.start().__await__()

    async def __aenter__(self) -> Server:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    @property
    def sockets(self) -> list[Any]:
        return list(self._server.sockets) if self._server is not None else []

    @property
    def port(self) -> int:
        """The port of the first listening socket (useful with ``port=0``)."""
        return int(self.sockets[0].getsockname()[1])

    @property
    def origins(self) -> OriginPolicy:
        """The Origin policy of the opening handshakes (shared: a reload may update it in
        place, and the hub's SSE and long-polling endpoints may use the same object)."""
        return self._origins

    @property
    def connections(self) -> set[ServerConnection]:
        """Open connections (including ones still in the opening handshake)."""
        return set(self._connections)

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` is called (or the task is cancelled)."""
        assert self._closed_event is not None, "call start() first"
        try:
            await self._closed_event.wait()
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise

    def close(self, code: int = CloseCode.GOING_AWAY, reason: str = "server shutting down") -> None:
        """Stop accepting, then close every connection with ``code`` (1001 by default)."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            if conn._handshake is not None:  # still in the opening handshake
                conn._refuse(Refused(503, "server shutting down"))
            else:
                conn.close_nowait(code, reason)
        self._connection_gone()

    async def wait_closed(self) -> None:
        """Wait until the server is closed and every connection is gone."""
        if self._idle is None:
            return
        if not self._closing:
            assert self._closed_event is not None
            await self._closed_event.wait()
        await self._idle.wait()
        if self._handler_tasks:
            await asyncio.gather(*self._handler_tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._closed_event is not None:
            self._closed_event.set()

    def _connection_gone(self) -> None:
        if self._closing and not self._connections and self._idle is not None:
            self._idle.set()
            if self._closed_event is not None:
                self._closed_event.set()

    # -- per-connection helpers ------------------------------------------------------------

    def _new_handshake(self) -> ServerHandshake:
        return ServerHandshake(
            origins=self._origins,
            subprotocols=self._subprotocols,
            select_subprotocol=self._select_subprotocol,
            require_subprotocol=self._require_subprotocol,
            deflate=self._deflate,
            limits=self.head_limits,
        )

    def _route(self, path: str) -> Endpoint | None:
        if self._routes is None:
            return self._default
        return self._routes.get(path)

    def _count_refusal(self, exc: Refused) -> None:
        self.refusals[exc.status] = self.refusals.get(exc.status, 0) + 1


def peer_address(peer: Any) -> str:
    """The budget key of a peer: its IP address ("local" for a Unix socket)."""
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "local"


@forwards_to(Server)
def serve(*args: Any, **options: Any) -> Server:
    """Create a WebSocket server running ``handler(connection)`` for each client.

    ``handler`` is a coroutine function, a :class:`Listener` subclass or instance (callbacks,
    no task per connection), or a mapping from path to either (other paths get 404).
    ``await serve(...)`` starts it; ``async with serve(...) as server`` also closes it.
    See :class:`Server` for the options (origins, subprotocols, compression, limits,
    timeouts, TLS through ``ssl=``).
    """
    return Server(*args, **options)
