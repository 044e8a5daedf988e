"""The hub over WebSocket: one session per connection, one command message per frame.

Pushes never block the publisher: they are queued on the connection and written once per
loop tick. A client that stops reading is disconnected (1013, "slow consumer") as soon as
its queued bytes pass ``max_buffered``, so memory stays bounded whatever the publish rate.
For uncompressed connections a publication's frame is built once and shared by every
subscriber.
"""

from __future__ import annotations

import logging

from ..aio.server import ServerConnection
from ..hub.errors import Disconnect
from ..hub.hub import Hub
from ..hub.session import ConnectRequest, Session
from ..hub.types import PreparedMessage
from ..hub.wire import SUBPROTOCOLS, codec_for
from ..protocol.close import CloseCode, truncate_reason
from ..protocol.errors import ConnectionClosed
from ..protocol.frames import PreparedFrame

__all__ = ["SUBPROTOCOLS", "WebSocketTransport", "serve_hub_session"]

logger = logging.getLogger("pulsewire.transports")

SLOW_CONSUMER = CloseCode.TRY_AGAIN_LATER


class WebSocketTransport:
    kind = "websocket"
    __slots__ = ("__weakref__", "binary", "max_buffered", "session", "ws")

    def __init__(self, ws: ServerConnection, binary: bool, max_buffered: int) -> None:
        self.ws = ws
        self.binary = binary
        self.max_buffered = max_buffered
        self.session: Session | None = None

    def send(self, message: str | bytes, prepared: PreparedMessage | None = None) -> None:
        ws = self.ws
        if not ws.open:
            return
        if ws.buffered_amount > self.max_buffered:
            # Past the hard cap (replies, pushes, or a "drop" channel gone wild): memory stays
            # bounded whatever the session's policy.
            if self.session is not None:
                self.session.disconnect(SLOW_CONSUMER, "slow consumer: too much data queued")
            return
        if prepared is not None:
            # One frame per prepared message (one publication, one codec), shared by every
            # subscriber (the core frames it again only for a connection that compresses it).
            frame = prepared.frame
            if frame is None:
                frame = prepared.frame = PreparedFrame(message, binary=self.binary)
            ws.send_prepared(frame)
        elif self.binary:
            ws.send_nowait(message if isinstance(message, bytes) else message.encode("utf-8"))
        else:
            ws.send_nowait(message if isinstance(message, str) else message.decode("utf-8"))

    def buffered(self) -> int:
        return self.ws.buffered_amount

    def close(self, code: int, reason: str) -> None:
        self.ws.close_nowait(code, truncate_reason(reason))


async def serve_hub_session(hub: Hub, ws: ServerConnection, *, max_buffered: int = 1 << 20) -> None:
    """The WebSocket handler of the hub endpoint: runs one client session to its end."""
    codec = codec_for(ws.subprotocol)
    transport = WebSocketTransport(ws, codec.binary, max_buffered)
    # The session's queue is bounded by max_buffered and the channel's slow-consumer policy
    # (drop or 1013): the connection's memory budget leaves room for it.
    ws.reserve_output(max_buffered)
    request = ws.request
    remote = ws.remote_address
    connect_request = ConnectRequest(
        transport="websocket",
        path=request.path if request is not None else "/",
        headers=request.headers.items() if request is not None else [],
        remote_address=str(remote[0]) if isinstance(remote, tuple) else str(remote or ""),
    )
    try:
        session = hub.open_session(transport, codec, connect_request)
    except Disconnect as exc:
        await ws.close(exc.code, exc.reason)
        return
    transport.session = session
    try:
        async for message in ws:
            await session.handle(message)
    except ConnectionClosed:
        pass
    finally:
        failure = ws.failure
        if failure is not None:  # we failed it (1002, 1007, 1008, 1009...): no Close came back
            session.transport_closed(failure.code, failure.reason)
        else:
            session.transport_closed(
                ws.close_code or CloseCode.ABNORMAL_CLOSURE, ws.close_reason or ""
            )
        # Session and transport point at each other: break that, so that both are freed by
        # reference counting as soon as the hub lets go of the session.
        transport.session = None
