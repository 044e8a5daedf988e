"""Fan-out: send one message to many connections without waiting on any of them."""

from __future__ import annotations

from collections.abc import Iterable

from ..protocol.connection import InvalidState
from ..protocol.frames import PreparedFrame
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
    frame = PreparedFrame(message if isinstance(message, str) else bytes(message))
    for conn in connections:
        if not conn.open or conn.writing_paused:
            continue
        try:
            # Written now rather than at the end of the loop iteration: the first clients
            # start receiving while the loop is still serving the others.
            conn.send_prepared(frame, compress=compress, now=True)
        except InvalidState:
            continue  # a fragmented message is being sent on this connection
        sent += 1
    return sent
