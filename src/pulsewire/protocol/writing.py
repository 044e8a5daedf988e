"""The writing side of a connection: send calls, the output queue, prepared frames.

:class:`Writer` is the base of :class:`~pulsewire.protocol.Connection` (which adds the reading
side). One output queue: every ``send_*()`` call, and the core itself (pongs, the Close echo,
failures), appends buffers to it in the order they must reach the network; the I/O layer
takes them either without allocating (:attr:`~Writer.pending_output`, then
:meth:`~Writer.output_written`) or as a list it keeps (:meth:`~Writer.data_to_send`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .close import Close, CloseCode, is_valid_close_code, serialize_close
from .deflate import PerMessageDeflate
from .frames import MAX_CONTROL_PAYLOAD, PreparedFrame, build_frame, frame_header
from .state import InvalidState, Side, State

__all__ = ["Writer"]

_TEXT = 1
_BINARY = 2
_LARGE_PAYLOAD = 16384  # from this size, header and payload are queued separately (no copy)


class Writer:
    """The state and output queue every connection has: its side, state, compression and the
    Close it sent, and the buffers queued for the network (:attr:`out_bytes` of them)."""

    __slots__ = (
        "side",
        "state",
        "deflate",
        "close_sent",
        "out_bytes",
        "is_client",
        "_plain",
        "_mask_key",
        "_out",
        "_out_fragmenting",
        "_out_compressed",
    )

    def __init__(
        self,
        side: Side,
        *,
        deflate: PerMessageDeflate | None = None,
        mask_key: Callable[[], bytes] | None = None,
    ) -> None:
        self.side = side
        self.state = State.OPEN
        self.deflate = deflate
        self.close_sent: Close | None = None
        self.out_bytes = 0
        """Bytes queued for the network and not yet taken (for write backpressure)."""
        self.is_client = side is Side.CLIENT
        """A client masks every frame it sends and expects none masked."""
        # Every message goes out as one unmasked, uncompressed frame (deflate is fixed at
        # the handshake): send_text/send_binary's short way.
        self._plain = not self.is_client and deflate is None
        self._mask_key: Callable[[], bytes] = mask_key or (lambda: os.urandom(4))
        self._out: list[bytes] = []
        self._out_fragmenting = 0  # the opcode of the fragmented message being sent
        self._out_compressed = False

    def data_to_send(self) -> list[bytes]:
        """Take the queued buffers: :attr:`pending_output` and :meth:`output_written` in one
        call, the list handed over (for an I/O layer that writes it later, elsewhere)."""
        out = self._out
        if out:
            self._out = []
            self.out_bytes = 0
        return out

    @property
    def pending_output(self) -> list[bytes]:
        """The queued buffers, without taking them: write them, then call
        :meth:`output_written`. (Unlike :meth:`data_to_send`, this allocates nothing, which
        matters when one message fans out to 10,000 connections: a new list each would be
        10,000 garbage-collected containers.)"""
        return self._out

    def output_written(self) -> None:
        """The buffers from :attr:`pending_output` were written: forget them."""
        self._out.clear()
        self.out_bytes = 0

    def send_text(
        self, data: str | bytes, *, fin: bool = True, compress: bool | None = None
    ) -> None:
        """Send a text message (``bytes`` must already be UTF-8; ``fin=False`` starts fragments)."""
        payload = data.encode("utf-8") if isinstance(data, str) else data
        if self._plain and fin and self.state is State.OPEN and not self._out_fragmenting:
            self._queue_plain(0x81, payload)  # the common case, without _send_data's calls
            return
        self._send_data(_TEXT, payload, fin, compress)

    def send_binary(self, data: bytes, *, fin: bool = True, compress: bool | None = None) -> None:
        """Send a binary message (``fin=False`` starts a fragmented one)."""
        payload = bytes(data) if not isinstance(data, bytes) else data
        if self._plain and fin and self.state is State.OPEN and not self._out_fragmenting:
            self._queue_plain(0x82, payload)
            return
        self._send_data(_BINARY, payload, fin, compress)

    def _queue_plain(self, first: int, payload: bytes) -> None:
        """Queue a whole unmasked, uncompressed frame (what :meth:`send_frame` does for a
        server, one call less per message)."""
        n = len(payload)
        self.out_bytes += n + 14
        if n >= _LARGE_PAYLOAD:
            out = self._out
            out.append(frame_header(first, n))
            out.append(payload)  # written with the header by a vectored write: no join
        else:
            self._out.append(build_frame(first, payload, None))

    def send_continuation(self, data: str | bytes, *, fin: bool) -> None:
        """Send the next fragment of the message started with ``fin=False``."""
        if not self._out_fragmenting:
            raise InvalidState("no fragmented message in progress")
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        self._send_data(0, payload, fin, None)

    def _send_data(self, opcode: int, payload: bytes, fin: bool, compress: bool | None) -> None:
        if self.state is not State.OPEN:
            raise InvalidState(f"cannot send data in state {self.state.name}")
        if opcode:
            if self._out_fragmenting:
                raise InvalidState("a fragmented message is in progress; send its continuation")
            deflate = self.deflate
            compressed = deflate is not None and deflate.should_compress(len(payload), compress)
            self._out_compressed = compressed
        else:
            compressed = self._out_compressed
        first = opcode | (0x80 if fin else 0)
        if compressed:
            assert self.deflate is not None
            packed = self.deflate.compress(payload, fin)
            if (
                opcode
                and fin
                and len(packed) >= len(payload)
                and self.deflate.can_skip_after_compressing
            ):
                packed = payload  # incompressible: the history was reset, so send it raw
            else:
                first |= 0x40 if opcode else 0
            payload = packed
        self._out_fragmenting = 0 if fin else (opcode or self._out_fragmenting)
        self.send_frame(first, payload)

    def send_prepared(self, frame: PreparedFrame, *, compress: bool | None = None) -> None:
        """Send a message prepared once for many connections (see :class:`PreparedFrame`).

        Its shared bytes are queued as they are when they fit this connection: server side
        (a client masks every frame) and not compressed (``compress`` as for
        :meth:`send_text`). Otherwise the message is framed for this connection alone."""
        deflate = self.deflate
        if self.is_client or (
            deflate is not None and deflate.should_compress(len(frame.payload), compress)
        ):
            self._send_data(frame.opcode, frame.payload, True, compress)
            return
        if self.state is not State.OPEN:
            raise InvalidState(f"cannot send data in state {self.state.name}")
        if self._out_fragmenting:
            raise InvalidState("a fragmented message is in progress; send its continuation")
        data = frame.data
        self._out.append(data)
        self.out_bytes += len(data)

    def send_ping(self, data: bytes = b"") -> None:
        """Send a Ping (at most 125 bytes of payload)."""
        if len(data) > MAX_CONTROL_PAYLOAD:
            raise ValueError("ping payload longer than 125 bytes")
        if self.state is not State.OPEN:
            raise InvalidState(f"cannot send a ping in state {self.state.name}")
        self.send_frame(0x89, bytes(data))

    def send_pong(self, data: bytes = b"") -> None:
        """Send an unsolicited Pong (a heartbeat that needs no answer)."""
        if len(data) > MAX_CONTROL_PAYLOAD:
            raise ValueError("pong payload longer than 125 bytes")
        if self.state is not State.OPEN:
            raise InvalidState(f"cannot send a pong in state {self.state.name}")
        self.send_frame(0x8A, bytes(data))

    def send_close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (code 1005 sends a Close without a status code)."""
        if code != CloseCode.NO_STATUS_RCVD and not is_valid_close_code(code):
            raise ValueError(f"invalid close code {code}")
        if code == CloseCode.NO_STATUS_RCVD and reason:
            raise ValueError("a reason needs a close code")
        if self.state is not State.OPEN:
            raise InvalidState(f"cannot send a close in state {self.state.name}")
        payload = serialize_close(code, reason)  # validates the reason's length
        self.close_sent = Close(code, reason)
        self.state = State.CLOSING
        self.send_frame(0x88, payload)

    def send_frame(self, first: int, payload: bytes) -> None:
        """Queue one frame: ``first`` is its first byte (FIN, RSV1-3, opcode); a client masks
        it. The caller keeps the protocol's rules (the core's own sends do)."""
        if not self.is_client:
            self._queue_plain(first, payload)
            return
        self.out_bytes += len(payload) + 14
        self._out.append(build_frame(first, payload, self._mask_key()))
