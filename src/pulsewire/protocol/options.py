"""The options of a WebSocket client, one definition for the asyncio and threaded clients.

:func:`pulsewire.connect` and :func:`pulsewire.sync.connect` take these as keyword arguments
(``tests/aio/test_seams.py`` checks that their signatures match the fields here) and build a
:class:`ClientOptions`, which turns them into the handshake, the TLS context and the core
connection. The one default that differs is ``ping_interval``: the threaded client sends no
keepalive pings unless asked (its reader thread is the only one that could).
"""

from __future__ import annotations

import socket
import ssl as ssl_module
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .connection import Connection, Side
from .deflate import DeflateOptions, PerMessageDeflate, deflate_options
from .handshake import USER_AGENT, ClientHandshake, WsURI

__all__ = ["SYNC_PING_INTERVAL", "ClientOptions", "Compression"]

Compression = str | DeflateOptions | None
"""``"deflate"`` (permessage-deflate with default settings), :class:`DeflateOptions`, or None."""

SYNC_PING_INTERVAL: float | None = None
"""The threaded client's default ``ping_interval`` (keepalive off)."""


@dataclass(frozen=True, kw_only=True)
class ClientOptions:
    """What a client may set, with the defaults of :func:`pulsewire.connect`."""

    origin: str | None = None
    """The Origin header to send (browsers always send one; other clients need not)."""
    subprotocols: Sequence[str] = ()
    """Subprotocols to offer, in order of preference."""
    additional_headers: Sequence[tuple[str, str]] | Mapping[str, str] = ()
    """More header fields for the upgrade request."""
    user_agent: str | None = USER_AGENT
    """The User-Agent header (None: none, unless in ``additional_headers``)."""
    compression: Compression = "deflate"
    """permessage-deflate: ``"deflate"``, :class:`DeflateOptions` or None (off)."""
    ssl: ssl_module.SSLContext | bool | None = None
    """TLS for wss:// URIs: a context, or True/None for the system's trust store."""
    server_hostname: str | None = None
    """The host name TLS checks the certificate against (default: the URI's host)."""
    sock: socket.socket | None = None
    """An already connected socket to use instead of connecting to the URI's host."""
    open_timeout: float | None = 10.0
    """Seconds for TCP, TLS and the opening handshake together."""
    max_size: int | None = 2**20
    """Largest message accepted, after inflation (1009 beyond)."""
    max_frame_size: int | None = None
    """Largest frame payload accepted (default: ``max_size``)."""
    max_fragments: int | None = 4096
    """Most frames in one message (1008 beyond)."""
    max_queue: int = 16
    """Messages that may wait unread before reading from the socket pauses."""
    write_limit: int = 65536
    """High-water mark of the write buffer (asyncio; the threaded client's sends block)."""
    ping_interval: float | None = 20.0
    """Seconds between keepalive pings (None: none)."""
    ping_timeout: float | None = 20.0
    """Seconds to wait for a keepalive pong before failing the connection (1011)."""
    close_timeout: float = 10.0
    """Seconds the closing handshake and the server's TCP close may take."""

    def handshake(self, uri: WsURI) -> ClientHandshake:
        """The opening handshake for ``uri`` with these options."""
        headers = self.additional_headers
        return ClientHandshake(
            uri,
            origin=self.origin,
            subprotocols=list(self.subprotocols),
            deflate=deflate_options(self.compression),
            extra_headers=list(headers.items() if isinstance(headers, Mapping) else headers),
            user_agent=self.user_agent,
        )

    def ssl_context(self, uri: WsURI) -> ssl_module.SSLContext | None:
        """The TLS context for ``uri`` (None for ws://); raises ValueError for ``ssl=`` on a
        ws:// URI."""
        ssl = self.ssl
        if ssl and not uri.secure:
            raise ValueError("ssl= is only for wss:// URIs")
        if ssl is True or (uri.secure and ssl is None):
            return ssl_module.create_default_context()
        return ssl or None

    def core(self, deflate: PerMessageDeflate | None) -> Connection:
        """The client side's protocol core, once the handshake chose ``deflate``."""
        return Connection(
            Side.CLIENT,
            max_message_size=self.max_size,
            max_frame_size=self.max_frame_size,
            max_fragments=self.max_fragments,
            deflate=deflate,
        )
