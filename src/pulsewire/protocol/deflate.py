"""permessage-deflate (RFC 7692): negotiation both ways and the per-connection codec.

Decisions worth knowing:

* Inflation is bounded twice: :meth:`PerMessageDeflate.inflate_pieces` never asks zlib for
  more than the remaining budget plus one byte, so a decompression bomb is detected (1009)
  at the limit, and never for more than :data:`INFLATE_STEP` bytes per zlib call, so what a
  bomb makes us hold is the message's pieces so far (at most the limit) plus one step, not a
  second copy of the limit in zlib's output buffer.
* "No context takeover" on our own side is done with ``Z_FULL_FLUSH`` at the end of each message,
  which resets the compressor's history without reallocating it. That also lets us fall back to
  sending an incompressible message uncompressed (RSV1 clear) for free.
* zlib cannot compress with a 256-byte window (``wbits=8`` is rejected). When the peer limits
  our window to 8 bits we accept the offer (so the peer can still compress towards us) and send
  our messages uncompressed, which RFC 7692 allows for any message.
* Codec state is created lazily, on the first compressed message in each direction: an idle
  connection costs no zlib memory.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .close import CloseCode
from .errors import NegotiationError, PayloadTooBig, ProtocolError
from .headers import ExtensionOffer, format_extension

__all__ = [
    "EXTENSION_NAME",
    "INFLATE_STEP",
    "DeflateOptions",
    "PerMessageDeflate",
    "deflate_options",
]

EXTENSION_NAME = "permessage-deflate"
_TAIL = b"\x00\x00\xff\xff"
INFLATE_STEP = 64 * 1024
"""Most bytes of output asked of zlib in one call, and most bytes of input given to it. zlib's
output buffer grows in blocks and is copied into one bytes object at the end of a call, so a
call costs up to twice its output, and a call stopped by the output limit copies the input
it left into ``unconsumed_tail``: one step bounds both, whatever the compression ratio."""
_PARAMS = (
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
)


@dataclass(frozen=True)
class DeflateOptions:
    """What this endpoint asks for in the negotiation, and how it compresses.

    The four negotiation fields use RFC 7692's names. On a client they go into the offer; on a
    server they are imposed on every accepted offer (``server_max_window_bits`` caps our
    window; ``client_max_window_bits`` is asked of clients that announce support for it).
    ``window_bits`` is the window our compressor actually uses, never more than negotiated:
    a compressor may always use a smaller window, and 12 bits with ``mem_level`` 5 (as in
    python-websockets) keeps most of the ratio for JSON-sized messages at a fraction of
    zlib's default memory. The receiving side always honours what was negotiated.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    client_max_window_bits: int | None = None
    window_bits: int = 12
    level: int = 1
    """zlib level: 1 by default, as gorilla/websocket and Centrifugo do. For JSON-sized
    real-time messages it compresses nearly as well as 6 (context takeover does most of
    the work) at about half the CPU; raise it when bandwidth costs more than CPU."""
    mem_level: int = 5
    threshold: int = 0
    """Messages shorter than this many bytes are sent uncompressed."""

    def __post_init__(self) -> None:
        for name in ("server_max_window_bits", "client_max_window_bits"):
            bits = getattr(self, name)
            if bits is not None and not 8 <= bits <= 15:
                raise ValueError(f"{name} must be between 8 and 15")
        if not 9 <= self.window_bits <= 15:
            raise ValueError("window_bits must be between 9 and 15")
        if not -1 <= self.level <= 9 or not 1 <= self.mem_level <= 9:
            raise ValueError("invalid zlib level or mem_level")

    def _codec(
        self, local_nct: bool, remote_nct: bool, local_bits: int, remote_bits: int
    ) -> PerMessageDeflate:
        return PerMessageDeflate(
            local_no_context_takeover=local_nct,
            remote_no_context_takeover=remote_nct,
            local_max_window_bits=local_bits,
            remote_max_window_bits=remote_bits,
            window_bits=self.window_bits,
            level=self.level,
            mem_level=self.mem_level,
            threshold=self.threshold,
        )

    # -- client side ---------------------------------------------------------------------

    def client_offer(self) -> str:
        """The Sec-WebSocket-Extensions value a client sends."""
        params: list[tuple[str, str | None]] = []
        if self.server_no_context_takeover:
            params.append(("server_no_context_takeover", None))
        if self.client_no_context_takeover:
            params.append(("client_no_context_takeover", None))
        if self.server_max_window_bits is not None:
            params.append(("server_max_window_bits", str(self.server_max_window_bits)))
        # Always announce that we can limit our own window: servers may then ask for less.
        bits = self.client_max_window_bits
        params.append(("client_max_window_bits", None if bits is None else str(bits)))
        return format_extension(EXTENSION_NAME, params)

    def client_accept(self, params: list[tuple[str, str | None]]) -> PerMessageDeflate:
        """Check the server's answer to our offer; raises NegotiationError if it is not allowed."""
        try:
            got = _read_params(params)
        except ValueError as exc:
            raise NegotiationError(f"invalid permessage-deflate response: {exc}") from None
        if self.server_no_context_takeover and not got["server_no_context_takeover"]:
            raise NegotiationError("server ignored server_no_context_takeover")
        server_bits = got["server_max_window_bits"]
        if server_bits is True:
            raise NegotiationError("server_max_window_bits without a value in response")
        wanted = self.server_max_window_bits
        if wanted is not None and (server_bits is None or server_bits > wanted):
            raise NegotiationError("server did not honour server_max_window_bits")
        client_bits = got["client_max_window_bits"]
        if client_bits is True:
            raise NegotiationError("client_max_window_bits without a value in response")
        limit = self.client_max_window_bits
        if limit is not None and client_bits is not None and client_bits > limit:
            raise NegotiationError("server raised client_max_window_bits above the offer")
        local_bits = client_bits if client_bits is not None else (self.client_max_window_bits or 15)
        return self._codec(
            bool(got["client_no_context_takeover"]) or self.client_no_context_takeover,
            bool(got["server_no_context_takeover"]),
            int(local_bits),
            int(server_bits or 15),
        )

    # -- server side ---------------------------------------------------------------------

    def server_accept(self, offers: list[ExtensionOffer]) -> tuple[str, PerMessageDeflate] | None:
        """Pick the first acceptable permessage-deflate offer: (response value, codec) or None.

        Offers with unknown, repeated or invalid parameters are declined, as RFC 7692 section
        5 requires, and the next one is tried.
        """
        for name, params in offers:
            if name != EXTENSION_NAME:
                continue
            try:
                got = _read_params(params)
            except ValueError:
                continue
            response: list[tuple[str, str | None]] = []
            # server_no_context_takeover: must echo when asked, may add when configured.
            local_nct = bool(got["server_no_context_takeover"]) or self.server_no_context_takeover
            if local_nct:
                response.append(("server_no_context_takeover", None))
            remote_nct = bool(got["client_no_context_takeover"]) or self.client_no_context_takeover
            if remote_nct:
                response.append(("client_no_context_takeover", None))
            # server_max_window_bits: the smaller of what is asked and what we want.
            asked = got["server_max_window_bits"]
            if asked is True:
                continue  # a value is mandatory for this parameter
            local_bits = min(b for b in (asked, self.server_max_window_bits, 15) if b is not None)
            if asked is not None or self.server_max_window_bits is not None:
                response.append(("server_max_window_bits", str(local_bits)))
            # client_max_window_bits: only if the client announced support.
            offered = got["client_max_window_bits"]
            remote_bits = 15
            if offered is not None:
                limit = 15 if offered is True else offered
                remote_bits = min(limit, self.client_max_window_bits or 15)
                if offered is not True or self.client_max_window_bits is not None:
                    response.append(("client_max_window_bits", str(remote_bits)))
            codec = self._codec(local_nct, remote_nct, local_bits, remote_bits)
            return format_extension(EXTENSION_NAME, response), codec
        return None


def _read_params(params: list[tuple[str, str | None]]) -> dict[str, bool | int | None]:
    """Validate offer/response parameters; window bits are an int, True (no value) or None."""
    got: dict[str, bool | int | None] = {name: None for name in _PARAMS}
    for name, value in params:
        if name not in got:
            raise ValueError(f"unknown parameter {name}")
        if got[name] is not None:
            raise ValueError(f"duplicate parameter {name}")
        if name.endswith("no_context_takeover"):
            if value is not None:
                raise ValueError(f"{name} takes no value")
            got[name] = True
        elif value is None:
            got[name] = True
        else:
            if not (
                value.isdigit() and len(value) <= 2 and value[0] != "0" and 8 <= int(value) <= 15
            ):
                raise ValueError(f"invalid {name} value {value!r}")
            got[name] = int(value)
    return got


class PerMessageDeflate:
    """The negotiated codec of one connection ("local": what we send; "remote": we receive)."""

    __slots__ = (
        "_compressor",
        "_decompressor",
        "_flush_mode",
        "level",
        "local_max_window_bits",
        "local_no_context_takeover",
        "mem_level",
        "remote_max_window_bits",
        "remote_no_context_takeover",
        "threshold",
        "window_bits",
    )

    def __init__(
        self,
        *,
        local_no_context_takeover: bool = False,
        remote_no_context_takeover: bool = False,
        local_max_window_bits: int = 15,
        remote_max_window_bits: int = 15,
        window_bits: int = 15,
        level: int = 6,
        mem_level: int = 8,
        threshold: int = 0,
    ) -> None:
        self.local_no_context_takeover = local_no_context_takeover
        self.remote_no_context_takeover = remote_no_context_takeover
        self.local_max_window_bits = local_max_window_bits
        self.remote_max_window_bits = remote_max_window_bits
        self.window_bits = min(window_bits, local_max_window_bits)
        self.level = level
        self.mem_level = mem_level
        self.threshold = threshold
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None
        self._flush_mode = zlib.Z_FULL_FLUSH if local_no_context_takeover else zlib.Z_SYNC_FLUSH

    def __repr__(self) -> str:
        return (
            f"PerMessageDeflate(local_no_context_takeover={self.local_no_context_takeover}, "
            f"remote_no_context_takeover={self.remote_no_context_takeover}, "
            f"local_max_window_bits={self.local_max_window_bits}, "
            f"remote_max_window_bits={self.remote_max_window_bits})"
        )

    # -- sending -----------------------------------------------------------------------------

    def should_compress(self, size: int, compress: bool | None) -> bool:
        """Whether to compress a message of ``size`` bytes (``compress`` is the caller's wish)."""
        if self.local_max_window_bits < 9:  # zlib cannot honour an 8-bit window
            return False
        if compress is None:
            return size >= self.threshold
        return compress

    def compress(self, data: bytes, fin: bool) -> bytes:
        """Compress one frame's worth of a message; the final frame loses the 00 00 ff ff tail."""
        comp = self._compressor
        if comp is None:
            comp = self._compressor = zlib.compressobj(
                self.level, zlib.DEFLATED, -self.window_bits, self.mem_level
            )
        out = comp.compress(data) + comp.flush(self._flush_mode if fin else zlib.Z_SYNC_FLUSH)
        if fin:
            out = out[:-4] if out.endswith(_TAIL) else out
        return out

    @property
    def can_skip_after_compressing(self) -> bool:
        """True when a message, once compressed, may still be sent raw (history was reset)."""
        return self.local_no_context_takeover

    # -- receiving ---------------------------------------------------------------------------

    def inflate(self, data: bytes, fin: bool, budget: int | None) -> bytes:
        """Inflate one frame of a compressed message; at most ``budget`` bytes of output.

        Raises PayloadTooBig (1009) past the budget and ProtocolError (1007) on corrupt data.
        The output is joined into one bytes object: use :meth:`inflate_pieces` to keep the
        memory of a large message to one copy.
        """
        return b"".join(self.inflate_pieces(data, fin, budget))

    def inflate_pieces(self, data: bytes, fin: bool, budget: int | None) -> Iterator[bytes]:
        """Inflate one frame of a compressed message, in pieces of at most :data:`INFLATE_STEP`
        bytes and at most ``budget`` bytes in all (``None``: no limit).

        Raises PayloadTooBig (1009) as soon as the output would pass the budget, and
        ProtocolError (1007) on corrupt data; in both cases the inflater is dropped.
        """
        dec = self._decompressor
        if dec is None:
            # A larger window than negotiated always inflates correctly; zlib needs >= 9.
            dec = self._decompressor = zlib.decompressobj(-max(9, self.remote_max_window_bits))
        left = budget
        if len(data) <= INFLATE_STEP:  # the common case, without a second generator
            sources: Iterable[bytes | memoryview] = (data, _TAIL) if fin else (data,)
        else:
            sources = _slices(data, fin)
        try:
            for source in sources:
                while True:
                    step = INFLATE_STEP if left is None or left >= INFLATE_STEP else left + 1
                    piece = dec.decompress(source, step)
                    source = dec.unconsumed_tail
                    if left is not None:
                        left -= len(piece)
                        if left < 0:
                            raise PayloadTooBig(
                                f"message inflates past the limit of {budget} bytes"
                            )
                    if piece:
                        yield piece
                    # A full step may leave output inside zlib even with no input left. After
                    # the end of the stream, zlib keeps what follows in unused_data (below).
                    if dec.eof or (not source and len(piece) < step):
                        break
        except zlib.error as exc:
            self._decompressor = None
            raise ProtocolError(f"invalid compressed data: {exc}", CloseCode.INVALID_DATA) from None
        except ProtocolError:
            self._decompressor = None
            raise
        if dec.eof:
            # A block with BFINAL set ended the deflate stream (RFC 7692 7.2.3.4 allows it): the
            # next message starts a new stream. Bytes after the end, other than our tail, are junk.
            self._decompressor = None
            if dec.unused_data not in (b"", _TAIL):
                raise ProtocolError(
                    "data after the end of the deflate stream", CloseCode.INVALID_DATA
                )
        elif fin and self.remote_no_context_takeover:
            self._decompressor = None

    def reset_receiving(self) -> None:
        """Drop the inflater (and its window): after a failed message nothing is inflated
        again, and a fresh one is made on demand."""
        self._decompressor = None


def _slices(data: bytes, fin: bool) -> Iterator[bytes | memoryview]:
    """A frame's compressed payload in pieces of at most INFLATE_STEP, then the RFC 7692 tail."""
    view = memoryview(data)
    for start in range(0, len(data), INFLATE_STEP):
        yield view[start : start + INFLATE_STEP]
    if fin:
        yield _TAIL


def deflate_options(compression: str | DeflateOptions | None) -> DeflateOptions | None:
    """Read the ``compression=`` setting of serve/connect: "deflate", DeflateOptions or None."""
    if compression is None:
        return None
    if isinstance(compression, DeflateOptions):
        return compression
    if compression == "deflate":
        return DeflateOptions()
    raise ValueError(f"unsupported compression {compression!r}: use 'deflate' or None")
