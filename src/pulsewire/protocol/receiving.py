"""What a connection keeps of the bytes it received until they can be parsed.

:class:`InputBuffer` serves :meth:`Connection.get_buffer
<pulsewire.protocol.Connection.get_buffer>`, the entry point for I/O layers that read straight
into memory (``asyncio.BufferedProtocol``, ``socket.recv_into``): the bytes are parsed where
they land, with no ``bytes`` object per read and no concatenation of a partial frame with the
next read. Two kinds of memory, so that an idle connection holds none:

* a **shared buffer**, the caller's (e.g. one per event loop, for all its connections): a read
  goes there whenever its connection holds no unparsed bytes, and whatever is left unparsed
  is moved out before ``buffer_updated`` returns.
* an **own buffer** per connection, only while it holds unparsed bytes (a frame not complete
  yet): sized for the frame the parser waits for, so that the rest of a large frame is read
  directly behind its beginning and the frame is unmasked once, whole. It grows with what
  arrives (at most :data:`GROWTH` times what the peer sent, at least :data:`MIN_OWN`), never
  past the size of the awaited frame, and is let go as soon as it is parsed to the end.

A ``bytearray`` is never resized while a view of it may be alive (the event loop keeps the
view it got from ``get_buffer`` until ``buffer_updated`` returns, and a resize would raise
``BufferError``): growing or shrinking means another ``bytearray``. Bytes are moved by
assigning to a ``memoryview`` (one ``memmove``): a slice assignment to a ``bytearray`` from
anything but a ``bytearray`` copies the source into a temporary first. Own buffers let go are
kept for the next frame of any connection (at most :data:`SPARE_BYTES` in all): a large
``bytearray`` is otherwise a fresh ``mmap``, zero-filled and page-faulted in, for every frame
that takes two reads.
"""

from __future__ import annotations

import threading

__all__ = ["GROWTH", "MIN_OWN", "InputBuffer"]

MIN_OWN = 16 * 1024
"""The smallest own buffer: a few bytes of a frame header need not cost a read per byte."""
GROWTH = 8
"""An own buffer holds at most this many times the bytes the peer sent of the awaited frame:
large enough that a frame read in a few pieces is seldom moved, small enough that a header
announcing a large frame, and nothing else, costs little (the memory is reported in
``Connection.buffered_in``, hence to the memory budgets, all the same)."""
SPARE_BYTES = 4 * 1024 * 1024
"""The most memory the process keeps in own buffers let go, for reuse."""
_MAX_AHEAD = 256 * 1024  # the most room kept ahead for bytes fed in small pieces

# Own buffers let go, for reuse by any connection of any thread (hence the lock).
_spare: list[bytearray] = []
_spare_bytes = 0
_spare_lock = threading.Lock()


def _allocate(size: int) -> bytearray:
    """A bytearray of at least ``size`` bytes (at most twice: what is kept is counted)."""
    global _spare_bytes
    if _spare:
        with _spare_lock:
            for i in range(len(_spare) - 1, -1, -1):  # the last let go: likely still cached
                buf = _spare[i]
                if size <= len(buf) <= 2 * size:
                    del _spare[i]  # by position: bytearrays compare by content
                    _spare_bytes -= len(buf)
                    return buf
    return bytearray(size)


def _release(buf: bytearray) -> None:
    """``buf`` is no longer used: keep it for reuse if there is room."""
    global _spare_bytes
    if len(buf) >= MIN_OWN and _spare_bytes + len(buf) <= SPARE_BYTES:
        with _spare_lock:
            if _spare_bytes + len(buf) <= SPARE_BYTES:
                _spare_bytes += len(buf)
                _spare.append(buf)


def _capacity(held: int, need: int) -> int:
    """The own buffer for ``held`` unparsed bytes when the parser waits for ``need``: the
    awaited frame whole if the peer sent a good part of it already, else :data:`GROWTH` times
    what it sent, so that a header announcing a large frame costs at most :data:`MIN_OWN`
    until the frame's bytes actually come."""
    return max(held, min(need, max(GROWTH * held, MIN_OWN)))


class InputBuffer:
    """The unparsed input of one connection: ``own[start:end]`` (``own`` is None when there is
    none, and then the next read goes to the caller's shared buffer)."""

    __slots__ = ("own", "start", "end")

    def __init__(self) -> None:
        self.own: bytearray | None = None
        self.start = 0
        self.end = 0

    @property
    def held(self) -> int:
        """Unparsed bytes kept."""
        return self.end - self.start

    @property
    def memory(self) -> int:
        """Bytes the own buffer takes (0 when there is none)."""
        own = self.own
        return 0 if own is None else len(own)

    def clear(self) -> None:
        """Forget every unparsed byte and the own buffer."""
        own = self.own
        if own is not None:
            self.own = None
            _release(own)
        self.start = self.end = 0

    def room(self, need: int) -> memoryview:
        """Memory for the next read, behind the bytes held (which there must be; never
        empty); ``need`` is how many bytes from the first unparsed one the parser waits for
        (0: any)."""
        own = self.own
        assert own is not None
        start, end = self.start, self.end
        held = end - start
        target = _capacity(held, need) if need > held else held + MIN_OWN
        if len(own) - start < target:
            if len(own) >= target:
                view = memoryview(own)  # same size: allowed while views exist
                view[:held] = view[start:end]
            else:
                new = _allocate(target)
                memoryview(new)[:held] = memoryview(own)[start:end]
                _release(own)
                self.own = own = new
            self.start, self.end = 0, held
            end = held
        return memoryview(own)[end:]

    def filled(self, nbytes: int) -> tuple[memoryview, int]:
        """``nbytes`` were written where :meth:`room` said: the bytes to parse (a view ending
        at the last byte written) and the position of the first unparsed one."""
        own = self.own
        assert own is not None
        self.end = end = self.end + nbytes
        return memoryview(own)[:end], self.start

    def append(self, data: bytes) -> tuple[memoryview, int]:
        """``data`` follows the bytes held (which there must be): as :meth:`filled`."""
        own = self.own
        assert own is not None
        start, end = self.start, self.end
        held = end - start
        if len(own) - end < len(data):
            # Room for more than this: bytes fed in small pieces are not copied each time.
            new = _allocate(max(held + len(data), min(GROWTH * held, _MAX_AHEAD)))
            memoryview(new)[:held] = memoryview(own)[start:end]
            _release(own)
            self.own = own = new
            self.start = start = 0
            end = held
        memoryview(own)[end : end + len(data)] = data
        self.end = end = end + len(data)
        return memoryview(own)[:end], start

    def keep(self, data: bytes | memoryview, pos: int, need: int, room: bool) -> None:
        """Parsing ``data`` (from :meth:`filled`, :meth:`append`, or memory the caller reuses)
        stopped at ``pos``, waiting for ``need`` bytes from there: keep what is unparsed, with
        ``room`` for the rest of the awaited frame to be read in behind it (else exactly)."""
        held = len(data) - pos
        if not held:
            self.clear()
            return
        own = self.own
        capacity = _capacity(held, need) if room else held
        # Parsed in place: keep the buffer, unless it is much larger than what waits now (a
        # large frame was parsed), then shrink it.
        if (
            own is not None
            and isinstance(data, memoryview)
            and data.obj is own
            and len(own) <= 2 * capacity
        ):
            self.start = pos
            return
        new = _allocate(capacity)
        memoryview(new)[:held] = memoryview(data)[pos:]
        if own is not None:
            _release(own)
        self.own = new
        self.start, self.end = 0, held
