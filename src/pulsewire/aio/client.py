"""The asyncio WebSocket client: ``connect(uri)``."""

from __future__ import annotations

import asyncio
import socket
import ssl as ssl_module
from collections.abc import Generator, Mapping, Sequence
from typing import Any, cast

from ..protocol.deflate import deflate_options
from ..protocol.errors import InvalidHandshake
from ..protocol.handshake import USER_AGENT, ClientHandshake, WsURI, parse_uri
from ..protocol.options import ClientOptions, Compression
from .connection import Connection
from .signatures import forwards_to

__all__ = ["ClientConnection", "Connect", "connect"]


class ClientConnection(Connection):
    """The client side of a connection, as returned by :func:`connect`."""

    __slots__ = ("_handshake", "_opening", "options")

    def __init__(self, handshake: ClientHandshake, options: ClientOptions) -> None:
        super().__init__(
            max_queue=options.max_queue,
            ping_interval=options.ping_interval,
            ping_timeout=options.ping_timeout,
            close_timeout=options.close_timeout,
            write_limit=options.write_limit,
        )
        self._handshake: ClientHandshake | None = handshake
        self._opening: asyncio.Future[None] = self.loop.create_future()
        self.options = options
        """The options this connection was opened with."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = tcp = cast(asyncio.Transport, transport)
        self.remote_address = transport.get_extra_info("peername")
        assert self._handshake is not None
        self.request = self._handshake.request
        tcp.write(self._handshake.request_bytes())

    def _handshake_data(self, data: bytes) -> None:
        handshake = self._handshake
        if handshake is None:
            return
        try:
            response = handshake.receive_data(data)
        except InvalidHandshake as exc:
            self._handshake_failed(exc)
            return
        if response is None:
            return
        self._handshake = None
        self.response_headers = response.headers
        self.subprotocol = response.subprotocol
        if response.deflate is not None:
            self.extensions = "permessage-deflate"
        self._opened(self.options.core(response.deflate), handshake.trailing)
        if not self._opening.done():
            self._opening.set_result(None)

    def _handshake_failed(self, exc: BaseException) -> None:
        self._handshake = None
        if not self._opening.done():
            self._opening.set_exception(exc)
        if self._transport is not None:
            self._transport.close()

    def eof_received(self) -> bool | None:
        if self._handshake is not None:
            try:
                self._handshake.receive_eof()
            except InvalidHandshake as exc:
                self._handshake_failed(exc)
            return None
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._opening.done():
            self._opening.set_exception(
                InvalidHandshake("connection closed during the opening handshake")
                if exc is None
                else exc
            )
        super().connection_lost(exc)


class Connect:
    """What :func:`connect` returns: await it, or use it with ``async with``."""

    def __init__(
        self,
        uri: str,
        *,
        origin: str | None = None,
        subprotocols: Sequence[str] = (),
        additional_headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
        user_agent: str | None = USER_AGENT,
        compression: Compression = "deflate",
        ssl: ssl_module.SSLContext | bool | None = None,
        server_hostname: str | None = None,
        sock: socket.socket | None = None,
        open_timeout: float | None = 10.0,
        max_size: int | None = 2**20,
        max_frame_size: int | None = None,
        max_fragments: int | None = 4096,
        max_queue: int = 16,
        write_limit: int = 65536,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        close_timeout: float = 10.0,
    ) -> None:
        self.uri: WsURI = parse_uri(uri)
        self.options = ClientOptions(
            origin=origin,
            subprotocols=subprotocols,
            additional_headers=additional_headers,
            user_agent=user_agent,
            compression=compression,
            ssl=ssl,
            server_hostname=server_hostname,
            sock=sock,
            open_timeout=open_timeout,
            max_size=max_size,
            max_frame_size=max_frame_size,
            max_fragments=max_fragments,
            max_queue=max_queue,
            write_limit=write_limit,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
        )
        """The options, as :class:`~pulsewire.protocol.options.ClientOptions`."""
        deflate_options(compression)  # a bad setting fails here, not once connected
        self._ssl = self.options.ssl_context(self.uri)
        self.connection: ClientConnection | None = None

    async def _connect(self) -> ClientConnection:
        loop = asyncio.get_running_loop()
        options = self.options
        handshake = options.handshake(self.uri)

        def factory() -> ClientConnection:
            return ClientConnection(handshake, options)

        async def open_connection() -> ClientConnection:
            kwargs: dict[str, Any] = {"ssl": self._ssl}
            if self._ssl is not None:
                kwargs["server_hostname"] = options.server_hostname or self.uri.host
            if options.sock is not None:
                _, conn = await loop.create_connection(factory, sock=options.sock, **kwargs)
            else:
                _, conn = await loop.create_connection(
                    factory, self.uri.host, self.uri.port, **kwargs
                )
            try:
                await conn._opening
            except BaseException:
                conn.abort()
                raise
            return conn

        conn = await asyncio.wait_for(open_connection(), options.open_timeout)
        self.connection = conn
        return conn

    def __await__(self) -> Generator[Any, None, ClientConnection]:
        return self._connect().__await__()

    async def __aenter__(self) -> ClientConnection:
        return await self._connect()

    async def __aexit__(self, *exc_info: object) -> None:
        if self.connection is not None:
            await self.connection.close()


@forwards_to(Connect)
def connect(*args: Any, **options: Any) -> Connect:
    """Open a WebSocket connection to ``uri`` (ws:// or wss://).

    ``conn = await connect(uri)`` or ``async with connect(uri) as conn:``. The options are
    :class:`~pulsewire.protocol.options.ClientOptions`' fields (the threaded client's
    :func:`pulsewire.sync.connect` takes the same): origin, subprotocols,
    additional_headers, compression ("deflate" by default, or None, or DeflateOptions), ssl
    (an SSLContext; wss:// uses the system's trust store by default), open_timeout, limits
    (max_size, max_frame_size, max_fragments, max_queue, write_limit), keepalive
    (ping_interval, ping_timeout) and close_timeout.
    """
    return Connect(*args, **options)
