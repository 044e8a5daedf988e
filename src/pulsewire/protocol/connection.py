"""The WebSocket connection state machine, Sans-I/O: bytes in, events out; send calls, bytes out.

States and what moves between them (the opening handshake happens before a Connection exists)::

    state     event                                  next      what the core does
    -------   -------------------------------------  --------  ---------------------------------
    OPEN      send_close()                           CLOSING   queue our Close
    OPEN      Close frame received                   CLOSED    queue the echo; server: close TCP
    OPEN      protocol error in the input            CLOSED    queue Close(code); close TCP
    CLOSING   Close frame received                   CLOSED    server: close TCP
    CLOSING   protocol error in the input            CLOSED    close TCP
    any       receive_eof()                          CLOSED    (abnormal unless already CLOSED)

"close TCP" means :attr:`Connection.close_transport` turns True: the I/O layer writes what
:meth:`data_to_send` returns, then closes the socket. A client whose closing handshake is
complete waits for the server to close TCP first (RFC 6455 section 7.1.1); enforcing that wait
with a timeout is the I/O layer's job, since the core has no clock.

Input is parsed as it arrives. A frame header is validated the moment it is complete (mask,
reserved bits and opcodes, control-frame rules, size limits), and a data frame's payload is
consumed chunk by chunk, so text is UTF-8 validated and compressed data inflated as bytes
arrive. The only bytes ever held back are an incomplete header (at most 14 bytes) or an
incomplete control frame (at most 139 bytes), or a binary frame of at most 1 MiB (and the frame
limit) that is taken whole once complete, unmasked in one pass from where it was read (cheaper
than streaming it): buffering is bounded by design.

Bytes come in either as ``bytes`` (:meth:`Connection.receive_data`) or written straight into
the connection's memory (:meth:`Connection.get_buffer`, then
:meth:`Connection.buffer_updated`: the ``asyncio.BufferedProtocol`` way, see
:mod:`.receiving`); both give the same events for the same bytes, however they are split.
Complete messages are assembled up to ``max_message_size`` and no further, and compressed data
is inflated in bounded pieces (see :mod:`.deflate`): a decompression bomb costs at most the
limit plus one piece. A message that fails (1007, 1009, ...) is dropped at once.
:attr:`Connection.buffered_in` tells an I/O layer what the input side holds.

Compressed messages are the one way a few bytes of input become many: with
``max_inflated_per_read``, :meth:`Connection.receive_data` stops at the first message boundary
after inflating that many bytes and keeps the rest of its input unparsed
(:attr:`Connection.input_held_back`), so that the caller can deliver (or stop reading) before
it continues with ``receive_data(b"")``.
"""

from __future__ import annotations

from collections.abc import Callable

from .close import (
    Close,
    CloseCode,
    serialize_close,
    truncate_reason,
)
from .deflate import PerMessageDeflate
from .errors import PayloadTooBig, ProtocolError
from .events import CloseReceived, Event, Ping, Pong
from .frames import (
    MAX_CONTROL_PAYLOAD,
    apply_mask,
    parse_close,
    scan_messages,
)
from .receiving import InputBuffer
from .state import InvalidState, Side, State
from .utf8 import Utf8Decoder, decode_text
from .writing import Writer

__all__ = ["Connection", "InvalidState", "Side", "State"]


_NO_MESSAGE = 0
_TEXT = 1
_BINARY = 2
_LARGE_PAYLOAD = 16384  # from this size, header and payload are queued separately (no copy)
_WHOLE_FRAME = 2**20  # binary frames up to this size are buffered whole, not streamed


class Connection(Writer):
    """One WebSocket connection after the opening handshake.

    ``max_message_size`` bounds a whole message after inflation (``None``: no limit, for tools
    that need it, never the default); ``max_frame_size`` bounds one frame's payload (default:
    the message limit). Both fail the connection with 1009. ``max_inflated_per_read`` (default
    ``None``: no pause) bounds the compressed messages one :meth:`receive_data` call completes,
    see the module docstring.
    """

    __slots__ = (
        "__weakref__",
        "max_message_size",
        "max_frame_size",
        "max_fragments",
        "max_inflated_per_read",
        "echo_close_reason",
        "close_rcvd",
        "close_rcvd_then_sent",
        "failure",
        "close_transport",
        "buffered_in",
        "input_held_back",
        "_events",
        "_input",
        "_need",
        "_shared",
        "_discard_input",
        # current incoming frame, while its payload is streaming in
        "_frame_left",
        "_frame_fin",
        "_frame_mask",
        "_frame_phase",
        # current incoming message
        "_msg_type",
        "_msg_compressed",
        "_msg_size",
        "_msg_frames",
        "_msg_held",
        "_msg_parts",
        "_read_inflated",
        "_utf8",
    )

    def __init__(
        self,
        side: Side,
        *,
        max_message_size: int | None = 2**20,
        max_frame_size: int | None = None,
        max_fragments: int | None = 4096,
        max_inflated_per_read: int | None = None,
        deflate: PerMessageDeflate | None = None,
        mask_key: Callable[[], bytes] | None = None,
        echo_close_reason: bool = False,
    ) -> None:
        super().__init__(side, deflate=deflate, mask_key=mask_key)
        self.max_message_size = max_message_size
        self.max_frame_size = max_frame_size if max_frame_size is not None else max_message_size
        self.max_fragments = max_fragments
        self.max_inflated_per_read = max_inflated_per_read
        self.echo_close_reason = echo_close_reason
        """Answer a Close with its reason too, not only its code (an echo server's choice)."""
        self.close_rcvd: Close | None = None
        self.close_rcvd_then_sent: bool | None = None
        self.failure: ProtocolError | None = None
        self.close_transport = False
        self.buffered_in = 0
        """Bytes the input side holds after the last :meth:`receive_data` or
        :meth:`buffer_updated`: the memory kept for unparsed input (with room for the rest of
        an incomplete frame, when reading into :meth:`get_buffer`) plus the message being
        assembled (complete messages waiting in :meth:`events_received` are not counted)."""
        self.input_held_back = False
        """:meth:`receive_data` stopped before the end of its input (``max_inflated_per_read``):
        take the events, then call ``receive_data(b"")`` to go on."""
        self._events: list[Event] = []
        self._input = InputBuffer()
        self._need = 0  # bytes from the first unparsed one that parsing waits for
        self._shared: memoryview | None = None  # the last get_buffer() gave the caller's memory
        self._discard_input = False
        self._frame_left = 0
        self._frame_fin = True
        self._frame_mask: bytes | None = None
        self._frame_phase = 0
        self._msg_type = _NO_MESSAGE
        self._msg_compressed = False
        self._msg_size = 0
        self._msg_frames = 0
        self._msg_held = 0
        self._msg_parts: list[bytes] = []
        self._read_inflated = 0
        self._utf8: Utf8Decoder | None = None

    # ------------------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the network, then read :meth:`events_received`, :meth:`data_to_send`.

        When :attr:`input_held_back` turns True, call ``receive_data(b"")`` (after taking the
        events) to parse the rest of what was fed."""
        self.input_held_back = False
        if self._discard_input:
            return
        inp = self._input
        if inp.own is not None:
            view, pos = inp.append(data)
            if len(view) - pos >= self._need:  # else the frame awaited is still incomplete
                self._receive(view, pos, False, True)
        elif data:
            self._receive(data, 0, False, False)

    def get_buffer(self, shared: memoryview) -> memoryview:
        """Where to read the next bytes from the network (never empty): then call
        :meth:`buffer_updated` with how many were written at its start. No ``bytes`` object
        per read, and a frame that takes several reads is read in behind its first bytes.

        ``shared`` is memory the caller reuses for every read of every connection (one
        buffer per event loop, say): it is returned unless this connection holds part of a
        frame, which then goes on in the connection's own memory. Nothing may write into
        ``shared`` between this call and :meth:`buffer_updated`, which copies out whatever
        it does not parse (and may change what it parses: text is unmasked in place). Made
        for ``asyncio.BufferedProtocol`` and ``socket.recv_into``."""
        inp = self._input
        if inp.own is None:
            self._shared = shared
            return shared
        self._shared = None
        return inp.room(self._need)

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of the last :meth:`get_buffer`: parse them,
        as :meth:`receive_data` would (the same events, :attr:`input_held_back` included)."""
        self.input_held_back = False
        shared = self._shared
        if self._discard_input:
            self._shared = None
            return
        inp = self._input
        if shared is not None:
            self._shared = None
            data, pos, end = shared, 0, nbytes
        else:
            data, pos = inp.filled(nbytes)
            end = len(data)
            if end - pos < self._need:  # the frame awaited is still incomplete (it may grow)
                self.buffered_in = inp.memory + self._msg_held
                return
        scan = scan_messages
        if scan is not None and not self._frame_left and not self._msg_type:
            # The common case in one C call: the read holds (or completes) whole data frames.
            frame_limit, message_limit = self.max_frame_size, self.max_message_size
            if frame_limit is None or (message_limit is not None and message_limit < frame_limit):
                frame_limit = message_limit
            pos = scan(data, pos, end, self.is_client, frame_limit, self._events, True)
            if pos == end:
                if shared is None:
                    inp.clear()  # parsed to the end: the own buffer goes
                self._need = 0
                self.buffered_in = 0  # no message in progress, nothing kept
                return
        self._receive(data[:end] if shared is not None else data, pos, True, True)

    def _receive(self, data: bytes | memoryview, pos: int, reading: bool, ours: bool) -> None:
        """Parse ``data`` from ``pos`` and keep what is left (in the connection's own memory:
        ``data`` may be a view of a buffer reused by the next read); ``reading``: the caller
        reads into :meth:`get_buffer`, so keep room for the rest of an incomplete frame;
        ``ours``: ``data`` is the connection's read buffer, which parsing may change (text
        is unmasked in place), not the caller's bytes."""
        self._read_inflated = 0
        try:
            pos = self._parse(data, pos, ours)
        except ProtocolError as exc:
            self.fail(exc.code, exc.reason, exc)
            return
        if self._discard_input:
            return
        inp = self._input
        if pos == len(data) and inp.own is None:  # the common case: everything parsed
            self.buffered_in = self._msg_held
        else:
            inp.keep(data, pos, self._need, reading)
            self.buffered_in = inp.memory + self._msg_held

    def receive_eof(self) -> None:
        """The peer closed the TCP connection (or it broke)."""
        self._drop_input()
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
        self.close_transport = True

    def _drop_input(self) -> None:
        """Nothing more will be parsed: let go of unparsed input and of a partial message."""
        self._discard_input = True
        self.input_held_back = False
        self.buffered_in = 0
        self._input.clear()
        self._need = 0
        self._shared = None
        self._frame_left = 0
        self._msg_type = _NO_MESSAGE
        self._msg_compressed = False
        self._msg_size = self._msg_frames = self._msg_held = 0
        self._msg_parts = []
        self._utf8 = None
        if self.deflate is not None:
            self.deflate.reset_receiving()

    def events_received(self) -> list[Event]:
        """Events parsed since the last call: str/bytes messages, Ping, Pong, CloseReceived."""
        events = self._events
        if events:
            self._events = []
        return events

    def _parse(self, data: bytes | memoryview, pos: int, ours: bool) -> int:
        """Consume as much of ``data`` from ``pos`` as possible; return where it stopped, and
        set ``_need`` to the bytes from there that parsing waits for (0: any); ``ours``: the
        C fast path may unmask in place.

        ``data`` may be a view of memory the next read reuses: every payload taken from it is
        copied (``bytes()`` of a ``bytes`` slice is the same object, no second copy)."""
        self._need = 0
        end = len(data)
        events = self._events
        client = self.is_client
        scan = scan_messages
        if scan is not None:
            frame_limit, message_limit = self.max_frame_size, self.max_message_size
            if frame_limit is None or (message_limit is not None and message_limit < frame_limit):
                frame_limit = message_limit
        while pos < end:
            if scan is not None and not self._frame_left and not self._msg_type:
                # C fast path: every whole unfragmented uncompressed message at once.
                moved = scan(data, pos, end, client, frame_limit, events, ours)
                if moved != pos:
                    pos = moved
                    continue
            if self._frame_left:
                # Stream the payload of the current data frame.
                take = min(self._frame_left, end - pos)
                view = data[pos : pos + take]
                pos += take
                self._frame_left -= take
                mask = self._frame_mask
                if mask is not None:
                    phase = self._frame_phase
                    if phase:
                        mask = mask[phase:] + mask[:phase]
                    chunk = apply_mask(view, mask)
                    self._frame_phase = (phase + take) & 3
                else:
                    chunk = bytes(view)
                self._on_data(chunk, self._frame_left == 0)
                cap = self.max_inflated_per_read
                if cap is not None and self._read_inflated >= cap and not self._msg_type:
                    # Enough inflated for one read: let the caller deliver it first.
                    if pos < end:
                        self.input_held_back = True
                    return pos
                continue

            if end - pos < 2:
                self._need = 2
                break
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            if length < 126:
                hlen = 2
            elif length == 126:
                if end - pos < 4:
                    self._need = 4
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                hlen = 4
            else:
                if end - pos < 10:
                    self._need = 10
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                if length >> 63:
                    raise ProtocolError("64-bit payload length with the most significant bit set")
                hlen = 10
            masked = b1 & 0x80
            if masked:
                hlen += 4
            opcode = b0 & 0x0F
            # Header checks run before the payload arrives: fail as soon as the bytes are wrong.
            if client:
                if masked:
                    raise ProtocolError("masked frame from server")
            elif not masked:
                raise ProtocolError("unmasked frame from client")
            if b0 & 0x70 and (b0 & 0x30 or opcode > 2 or opcode == 0 or self.deflate is None):
                raise ProtocolError("reserved bits must be 0 (no extension negotiated them)")
            fin = b0 & 0x80
            if opcode >= 8:
                if opcode > 10:
                    raise ProtocolError(f"reserved control opcode {opcode:#x}")
                if not fin:
                    raise ProtocolError("fragmented control frame")
                if length > MAX_CONTROL_PAYLOAD:
                    raise ProtocolError("control frame payload longer than 125 bytes")
                if end - pos < hlen + length:
                    self._need = hlen + length  # wait for the whole control frame (<= 139)
                    break
                start = pos + hlen
                payload = data[start : start + length]
                if masked:
                    payload = apply_mask(payload, bytes(data[start - 4 : start]))
                else:
                    payload = bytes(payload)
                pos = start + length
                self._on_control(opcode, payload)
                if self._discard_input:
                    return pos
                continue
            if opcode > 2:
                raise ProtocolError(f"reserved data opcode {opcode:#x}")
            if opcode:
                if self._msg_type:
                    raise ProtocolError("new data frame inside a fragmented message")
            elif not self._msg_type:
                raise ProtocolError("continuation frame outside a fragmented message")
            if end - pos < hlen:
                self._need = hlen
                break
            rsv1 = b0 & 0x40
            # Compressed data may be larger than what it inflates to (incompressible data):
            # allow deflate's worst-case overhead on the wire; the inflated size is held to
            # the message limit by the inflate budget.
            compressed = rsv1 if opcode else self._msg_compressed
            limit = self.max_frame_size
            if limit is not None and length > (_with_overhead(limit) if compressed else limit):
                raise PayloadTooBig(f"frame of {length} bytes exceeds the limit of {limit}")
            limit = self.max_message_size
            if limit is not None and self._msg_size + length > (
                _with_overhead(limit) if compressed else limit
            ):
                raise PayloadTooBig(f"message exceeds the limit of {limit} bytes")
            start = pos + hlen
            if fin and opcode and not rsv1 and end - start >= length:
                # Fast path: a whole single-frame uncompressed message is in the buffer.
                payload = data[start : start + length]
                if masked:
                    payload = apply_mask(payload, bytes(data[start - 4 : start]))
                pos = start + length
                events.append(decode_text(payload) if opcode == 1 else bytes(payload))
                continue
            if fin and opcode == 2 and not rsv1 and length <= _WHOLE_FRAME and not self._msg_type:
                # A binary message not all here yet: wait for the rest (read in behind it, see
                # .receiving) and take it in one pass, one unmasking copy, rather than as
                # pieces copied once more to be joined.
                self._need = hlen + length
                break
            # General path: a fragment, a compressed message, or a payload not all here yet.
            if opcode:
                self._msg_type = opcode
                self._msg_compressed = bool(rsv1)
            self._msg_size += length
            self._msg_frames += 1
            if self.max_fragments is not None and self._msg_frames > self.max_fragments:
                # Empty continuation frames cost CPU without growing the message: bound them.
                raise ProtocolError(
                    f"more than {self.max_fragments} frames in one message",
                    CloseCode.POLICY_VIOLATION,
                )
            self._frame_fin = bool(fin)
            self._frame_mask = bytes(data[start - 4 : start]) if masked else None
            self._frame_phase = 0
            self._frame_left = length
            pos = start
            if not length:
                self._on_data(b"", True)
        return pos

    def _on_data(self, chunk: bytes, frame_done: bool) -> None:
        """Add a piece of the current frame's (unmasked) payload to the current message.

        The message is kept as the bytes that arrived (inflated), and text is decoded once,
        when it is complete: str pieces could take up to 4 bytes per UTF-8 byte. Text that
        arrives in several pieces is also validated as each one arrives, to fail fast."""
        last = frame_done and self._frame_fin
        if self._msg_compressed:
            assert self.deflate is not None
            limit = self.max_message_size
            budget = None if limit is None else limit - self._msg_held
            # One piece of look-ahead: a message that inflates to a single piece is not
            # validated twice.
            ahead = b""
            for piece in self.deflate.inflate_pieces(chunk, last, budget):
                if ahead:
                    self._add_piece(ahead, True)
                ahead = piece
            if ahead:
                self._add_piece(ahead, not last or bool(self._msg_parts))
        elif chunk:
            self._add_piece(chunk, not last or bool(self._msg_parts))
        if last:
            self._finish_message()

    def _add_piece(self, piece: bytes, validate: bool) -> None:
        self._msg_parts.append(piece)
        self._msg_held += len(piece)
        if validate and self._msg_type == _TEXT:
            utf8 = self._utf8
            if utf8 is None:
                utf8 = self._utf8 = Utf8Decoder()
            utf8.decode(piece)  # raises ProtocolError(1007) at the first invalid byte

    def _finish_message(self) -> None:
        parts = self._msg_parts
        text = self._msg_type == _TEXT
        if self._msg_compressed:
            self._read_inflated += self._msg_held
        self._msg_type = _NO_MESSAGE
        self._msg_compressed = False
        self._msg_size = self._msg_frames = self._msg_held = 0
        self._msg_parts = []
        self._utf8 = None
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()  # the pieces are joined: don't hold them twice while decoding
        self._events.append(decode_text(payload) if text else payload)

    def _on_control(self, opcode: int, payload: bytes) -> None:
        if opcode == 9:
            self._events.append(Ping(payload))
            # A Ping is answered "unless [we] already received a Close frame" (RFC 6455 5.5.2);
            # having sent one ourselves (CLOSING) only forbids data frames.
            if self.state is not State.CLOSED:
                self.send_frame(0x8A, payload)
        elif opcode == 10:
            self._events.append(Pong(payload))
        else:
            close = parse_close(payload)
            self.close_rcvd = close
            self.close_rcvd_then_sent = self.state is State.OPEN
            if self.state is State.OPEN:
                # Echo the code (RFC 6455 5.5.1); an empty Close is answered with an empty one.
                reason = close.reason if self.echo_close_reason else ""
                self.close_sent = Close(close.code, reason)
                self.send_frame(0x88, serialize_close(close.code, reason))
            self.state = State.CLOSED
            self._drop_input()
            if not self.is_client:
                self.close_transport = True
            self._events.append(CloseReceived(close))

    def fail(self, code: int, reason: str = "", exc: ProtocolError | None = None) -> None:
        """Fail the connection: send Close(code) if we still may, then close TCP."""
        if exc is None:
            exc = ProtocolError(reason, code)
        if self.failure is None:
            # Kept without its traceback, whose frames would hold this connection (a cycle
            # only the garbage collector frees) and the input being parsed.
            exc.__traceback__ = exc.__context__ = exc.__cause__ = None
            self.failure = exc
        if self.state is State.OPEN:
            reason = truncate_reason(reason)
            self.close_sent = Close(code, reason)
            self.send_frame(0x88, serialize_close(code, reason))
        self.state = State.CLOSED
        self._drop_input()  # a failed message's pieces go at once
        self.close_transport = True


def _with_overhead(limit: int) -> int:
    """The largest deflate encoding of ``limit`` bytes, whatever the sender's zlib settings
    (zlib's conservative deflateBound: incompressible data grows by up to ~14% in tiny blocks)."""
    return limit + (limit >> 3) + (limit >> 6) + 64
