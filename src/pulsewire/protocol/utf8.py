"""Incremental UTF-8 validation that fails on the first byte that cannot be valid.

CPython's incremental ``utf-8`` decoder already rejects an invalid byte as soon as it arrives,
with one exception: it waits for the third byte of an encoded surrogate (``ED A0..BF``) before
failing. RFC 6455 section 8.1 asks endpoints to fail fast, so :class:`Utf8Decoder` checks the
decoder's pending bytes for that one prefix after every chunk. Decoding (not only validating)
keeps the str pieces, so a fragmented text message is never decoded twice.
"""

from __future__ import annotations

import codecs

from .close import CloseCode
from .errors import ProtocolError

__all__ = ["Utf8Decoder", "decode_text"]

_new_decoder = codecs.getincrementaldecoder("utf-8")


def decode_text(data: bytes | memoryview) -> str:
    """Decode a complete text payload; raises ProtocolError(1007) when it is not UTF-8."""
    try:
        return str(data, "utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"invalid UTF-8 in text message: {exc.reason}", CloseCode.INVALID_DATA
        ) from None


class Utf8Decoder:
    """Decodes a text message chunk by chunk, raising ProtocolError(1007) at the first bad byte."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = _new_decoder("strict")

    def decode(self, data: bytes, final: bool = False) -> str:
        try:
            text: str = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise ProtocolError(
                f"invalid UTF-8 in text message: {exc.reason}", CloseCode.INVALID_DATA
            ) from None
        if not final:
            pending = self._decoder.getstate()[0]
            if len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0:
                raise ProtocolError(
                    "invalid UTF-8 in text message: surrogate", CloseCode.INVALID_DATA
                )
        return text
