"""Where received bytes are written and what is kept of them until they can be parsed.

:class:`InputBuffer` serves :meth:`Connection.get_buffer
<pulsewire.protocol.Connection.get_buffer>`, the entry point for I/O layers that read straight
into memory (``asyncio.BufferedProtocol``, ``socket.recv_into``): the bytes are parsed where
they land, with no ``bytes`` object per read and no concatenation of a partial frame with the
next read.

Two kinds of memory, so that an idle connection holds none:

* a **scratch buffer** per thread (:data:`SCRATCH_SIZE`), shared by every connection of that
  thread: a read goes there whenever its connection holds no unparsed bytes. The caller must
  call ``buffer_updated`` before any other connection of the thread asks for a buffer (an
  event loop does: ``get_buffer``, ``recv_into``, ``buffer_updated`` run back to back), and
  what is left unparsed is moved out before ``buffer_updated`` returns.
* an **own buffer** per connection, only while it holds unparsed bytes (a frame not complete
  yet): sized for the frame the parser waits for, so that the rest of a large frame is read
  directly behind its beginning and the frame is unmasked once, whole. It grows with what
  arrives (at most :data:`GROWTH` times what the peer sent, at least :data:`MIN_OWN`), never
  past the size of the awaited frame, and is let go as soon as it is parsed to the end.

A ``bytearray`` is never resized while a view of it may be alive (the event loop keeps the
view it got from ``get_buffer`` until ``buffer_updated`` returns, and a resize would raise
``BufferError``): growing or shrinking means a new ``bytearray``.
"""

from __future__ import annotations

import threading

__all__ = ["GROWTH", "MIN_OWN", "SCRATCH_SIZE", "InputBuffer"]

SCRATCH_SIZE = 256 * 1024
"""The most one read brings into the scratch buffer (asyncio's and uvloop's own read size)."""
MIN_OWN = 16 * 1024
"""The smallest own buffer: a few bytes of a frame header need not cost a read per byte."""
GROWTH = 8
"""An own buffer holds at most this many times the bytes the peer sent of the awaited frame:
large enough that a frame read in a few pieces is seldom moved, small enough that a header
announcing a large frame, and nothing else, costs little (the memory is reported in
``Connection.buffered_in``, hence to the memory budgets, all the same)."""

_local = threading.local()


def _scratch() -> memoryview:
    """This thread's scratch buffer (allocated on the first read of the thread)."""
    view: memoryview | None = getattr(_local, "view", None)
    if view is None:
        view = _local.view = memoryview(bytearray(SCRATCH_SIZE))
    return view


def _capacity(held: int, need: int) -> int:
    """The own buffer for ``held`` unparsed bytes when the parser waits for ``need``: the
    awaited frame whole if the peer sent a good part of it already, else :data:`GROWTH` times
    what it sent, so that a header announcing a large frame costs at most :data:`MIN_OWN`
    until the frame's bytes actually come."""
    return max(held, min(need, max(GROWTH * held, MIN_OWN)))


class InputBuffer:
    """The unparsed input of one connection and where its next read goes."""

    __slots__ = ("_buf", "_start", "_end", "_scratch_used")

    def __init__(self) -> None:
        self._buf: bytearray | None = None  # the own buffer, while it holds unparsed bytes
        self._start = 0  # unparsed bytes are _buf[_start:_end]
        self._end = 0
        self._scratch_used = False  # the last get_buffer() handed out the scratch buffer

    @property
    def held(self) -> int:
        """Unparsed bytes kept."""
        return self._end - self._start

    @property
    def memory(self) -> int:
        """Bytes the own buffer takes (0 when there is none)."""
        buf = self._buf
        return 0 if buf is None else len(buf)

    def clear(self) -> None:
        """Forget every unparsed byte and the own buffer."""
        self._buf = None
        self._start = self._end = 0

    def get_buffer(self, need: int) -> memoryview:
        """Memory for the next read (never empty); ``need`` is how many bytes from the first
        unparsed one the parser waits for (0: any)."""
        buf = self._buf
        if buf is None:
            self._scratch_used = True
            return _scratch()
        self._scratch_used = False
        start, end = self._start, self._end
        held = end - start
        target = _capacity(held, need) if need > held else held + MIN_OWN
        if len(buf) - start < target:
            if len(buf) >= target:
                buf[:held] = buf[start:end]  # same size: allowed while views exist
            else:
                new = bytearray(target)
                new[:held] = memoryview(buf)[start:end]
                self._buf = buf = new
            self._start, self._end = 0, held
            end = held
        return memoryview(buf)[end:]

    def filled(self, nbytes: int) -> tuple[memoryview, int]:
        """``nbytes`` were written into the last buffer handed out: the bytes to parse (a view
        ending at the last byte written) and the position of the first unparsed one."""
        if self._scratch_used:
            self._scratch_used = False
            return _scratch()[:nbytes], 0
        buf = self._buf
        if buf is None:
            raise RuntimeError("buffer_updated() without get_buffer()")
        self._end += nbytes
        return memoryview(buf)[: self._end], self._start

    def append(self, data: bytes) -> tuple[memoryview, int]:
        """``data`` follows the bytes held (which there must be): as :meth:`filled`."""
        buf = self._buf
        assert buf is not None
        start, end = self._start, self._end
        held = end - start
        if len(buf) - end < len(data):
            # Room for more than this: bytes fed in small pieces are not copied each time.
            new = bytearray(max(held + len(data), min(GROWTH * held, SCRATCH_SIZE)))
            new[:held] = memoryview(buf)[start:end]
            self._buf = buf = new
            self._start = start = 0
            end = held
        buf[end : end + len(data)] = data
        self._end = end = end + len(data)
        return memoryview(buf)[:end], start

    def keep(self, data: bytes | memoryview, pos: int, need: int, room: bool) -> None:
        """Parsing ``data`` (from :meth:`filled`, :meth:`append`, or bytes the caller passed)
        stopped at ``pos``, waiting for ``need`` bytes from there: keep what is unparsed, with
        ``room`` for the rest of the awaited frame to be read in behind it (else exactly)."""
        held = len(data) - pos
        buf = self._buf
        if not held:
            self.clear()
            return
        capacity = _capacity(held, need) if room else held
        # Parsed in place: keep the buffer, unless it is much larger than what waits now (a
        # large frame was parsed), then shrink it.
        if (
            buf is not None
            and isinstance(data, memoryview)
            and data.obj is buf
            and len(buf) <= 2 * capacity
        ):
            self._start = pos
            return
        new = bytearray(capacity)
        new[:held] = memoryview(data)[pos:]
        self._buf = new
        self._start, self._end = 0, held
