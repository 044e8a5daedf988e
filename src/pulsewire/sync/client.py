"""The threaded client's opening: :func:`connect` over a blocking socket (TCP, TLS, then the
opening handshake, within ``open_timeout``); the open connection is
:class:`~pulsewire.sync.connection.ClientConnection`.
"""

from __future__ import annotations

import socket
import ssl as ssl_module
import time
from collections.abc import Mapping, Sequence

from ..protocol.handshake import (
    USER_AGENT,
    ClientHandshake,
    Response,
    parse_uri,
)
from ..protocol.options import SYNC_PING_INTERVAL, ClientOptions, Compression
from .connection import READ_SIZE, ClientConnection

__all__ = ["ClientConnection", "connect"]


def connect(
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
    ping_interval: float | None = SYNC_PING_INTERVAL,
    ping_timeout: float | None = 20.0,
    close_timeout: float = 10.0,
) -> ClientConnection:
    """Open a WebSocket connection to ``uri`` (ws:// or wss://) and return it once open.

    Use it as ``with connect(uri) as ws:`` to close it on exit. The options are those of
    :func:`pulsewire.connect` (:class:`~pulsewire.protocol.options.ClientOptions`), with one
    default changed: ``ping_interval`` is off, and when set, the reader thread sends keepalive
    pings and fails the connection with 1011 when no pong comes within ``ping_timeout``.
    ``sock`` is an already connected socket. ``write_limit`` has no effect here: sends block
    until written, nothing queues. Raises :class:`~pulsewire.InvalidHandshake`
    (:class:`~pulsewire.InvalidStatus` for a refusal), ``OSError`` for network errors and
    ``TimeoutError`` after ``open_timeout``.
    """
    if max_queue < 1:
        raise ValueError("max_queue must be at least 1")
    options = ClientOptions(
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
    wsuri = parse_uri(uri)
    handshake = options.handshake(wsuri)
    context = options.ssl_context(wsuri)
    deadline = None if open_timeout is None else time.monotonic() + open_timeout
    if sock is None:
        try:
            sock = socket.create_connection((wsuri.host, wsuri.port), timeout=open_timeout)
        except TimeoutError:
            raise TimeoutError(f"timed out connecting to {wsuri.host}:{wsuri.port}") from None
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            sock.settimeout(_remaining(deadline))
            sock = context.wrap_socket(sock, server_hostname=server_hostname or wsuri.host)
        response = _open(sock, handshake, deadline)
        sock.settimeout(None)
    except BaseException as exc:
        sock.close()
        if isinstance(exc, TimeoutError):
            raise TimeoutError("timed out during the opening handshake") from None
        raise
    return ClientConnection(
        sock,
        options.core(response.deflate),
        response,
        handshake.trailing,
        max_queue=max_queue,
        close_timeout=close_timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        request=handshake.request,
    )


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out during the opening handshake")
    return left


def _open(sock: socket.socket, handshake: ClientHandshake, deadline: float | None) -> Response:
    """Send the upgrade request and read the response (raises InvalidHandshake if refused)."""
    sock.settimeout(_remaining(deadline))
    sock.sendall(handshake.request_bytes())
    while True:
        sock.settimeout(_remaining(deadline))
        data = sock.recv(READ_SIZE)
        if not data:
            handshake.receive_eof()  # raises InvalidHandshake or InvalidStatus
        response = handshake.receive_data(data)
        if response is not None:
            return response
