"""Close codes (RFC 6455 section 7.4) and the Close frame payload."""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

__all__ = [
    "Close",
    "CloseCode",
    "is_valid_close_code",
    "serialize_close",
    "truncate_reason",
]


class CloseCode(enum.IntEnum):
    """Registered close codes. Codes 1005, 1006 and 1015 never travel in a Close frame."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015


# Codes a peer may put in a Close frame: the registered ones that are not reserved for local use
# (1004 reserved, 1005/1006/1015 "MUST NOT be set as a status code in a Close control frame"),
# plus the 3000-4999 ranges for libraries, frameworks and applications.
_VALID_REGISTERED = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)


def is_valid_close_code(code: int) -> bool:
    """True when ``code`` may appear in a Close frame on the wire."""
    return code in _VALID_REGISTERED or 3000 <= code <= 4999


class Close(NamedTuple):
    """A close code and reason, as sent or received in a Close frame."""

    code: int
    reason: str = ""

    def __str__(self) -> str:
        try:
            name = CloseCode(self.code).name.lower().replace("_", " ")
        except ValueError:
            name = "private use" if 4000 <= self.code <= 4999 else "registered"
        return f"{self.code} ({name})" + (f" {self.reason}" if self.reason else "")


def truncate_reason(reason: str) -> str:
    """Cut ``reason`` to the 123 bytes of UTF-8 a Close frame has room for (whole characters)."""
    data = reason.encode("utf-8")
    if len(data) <= 123:
        return reason
    return data[:123].decode("utf-8", "ignore")


def serialize_close(code: int, reason: str = "") -> bytes:
    """Encode a Close frame payload (code 1005 means: send an empty payload)."""
    if code == CloseCode.NO_STATUS_RCVD:
        return b""
    data = struct.pack("!H", code) + reason.encode("utf-8")
    if len(data) > 125:
        raise ValueError("close reason is longer than 123 bytes in UTF-8")
    return data
