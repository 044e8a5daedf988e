"""Fan-out: send one message to many connections without waiting on any of them."""

from __future__ import annotations

from collections.abc import Iterable

from ..protocol.connection import InvalidState, Side, State, serialize_message
from .connection import Connection, Data

__all__ = ["broadcast"]


def broadcast(
    connections: Iterable[Connection], message: Data, *, compress: bool | None = None
) -> int:
    """Send ``message`` to every open connection in ``connections``; returns how many got it.

    Never blocks. A connection whose write buffer is above its high-water mark (a slow
    reader) is skipped for this message, so one slow client never holds up the others nor
    grows the server's memory. Without compression the frame is built once and shared.
    """
    sent = 0
    frame: bytes | None = None
    text = isinstance(message, str)
    payload = message.encode("utf-8") if isinstance(message, str) else bytes(message)
    for conn in connections:
        proto = conn._proto
        if proto is None or proto.state is not State.OPEN or conn._paused_writing:
            continue
        try:
            deflate = proto.deflate
            if proto.side is Side.CLIENT or (
                deflate is not None and deflate.should_compress(len(payload), compress)
            ):
                # Masked or compressed frames differ per connection: build them one by one.
                if text:
                    proto.send_text(payload, compress=compress)
                else:
                    proto.send_binary(payload, compress=compress)
            else:
                if frame is None:
                    frame = serialize_message(1 if text else 2, payload)
                proto.send_frame_bytes(frame)
        except InvalidState:
            continue  # a fragmented message is being sent on this connection
        # Write now rather than at the end of the loop iteration: the first clients start
        # receiving while the loop is still serving the others.
        conn._flush()
        sent += 1
    return sent
