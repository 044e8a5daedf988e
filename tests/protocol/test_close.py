"""Close codes and Close payloads (RFC 6455 sections 5.5.1 and 7.4), and the closed errors."""

from __future__ import annotations

import pytest

from pulsewire.protocol import (
    Close,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    ProtocolError,
    is_valid_close_code,
)
from pulsewire.protocol.close import serialize_close
from pulsewire.protocol.errors import connection_closed
from pulsewire.protocol.frames import parse_close

from .helpers import close_payload

VALID = [
    1000,
    1001,
    1002,
    1003,
    1007,
    1008,
    1009,
    1010,
    1011,
    1012,
    1013,
    1014,
    3000,
    3999,
    4000,
    4999,
]
INVALID = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize("code", VALID)
def test_valid_codes(code: int) -> None:
    assert is_valid_close_code(code)
    assert parse_close(close_payload(code, "why")) == Close(code, "why")


@pytest.mark.parametrize("code", INVALID)
def test_invalid_codes(code: int) -> None:
    assert not is_valid_close_code(code)
    with pytest.raises(ProtocolError) as info:
        parse_close(close_payload(code))
    assert info.value.code == 1002


def test_empty_payload_means_no_status() -> None:
    assert parse_close(b"") == Close(1005, "")


def test_one_byte_payload_is_1002() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_close(b"\x03")
    assert info.value.code == 1002


@pytest.mark.parametrize("reason", [b"\xff", b"\xc3", b"ok\xed\xa0\x80", b"\xf4\x90\x80\x80"])
def test_invalid_utf8_reason_is_1007(reason: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_close(close_payload(1000, reason))
    assert info.value.code == 1007


def test_utf8_reason() -> None:
    assert parse_close(close_payload(4000, "héllo ✓")) == Close(4000, "héllo ✓")


def test_serialize_close() -> None:
    assert serialize_close(1000) == b"\x03\xe8"
    assert serialize_close(4001, "bye") == b"\x0f\xa1bye"
    assert serialize_close(1005) == b""


def test_serialize_close_reason_length_limit() -> None:
    assert len(serialize_close(1000, "a" * 123)) == 125
    with pytest.raises(ValueError):
        serialize_close(1000, "a" * 124)
    with pytest.raises(ValueError):
        serialize_close(1000, "é" * 62)  # 124 bytes of UTF-8


def test_close_str() -> None:
    assert str(Close(1000, "")) == "1000 (normal closure)"
    assert str(Close(1001, "bye")) == "1001 (going away) bye"
    assert "private use" in str(Close(4000, ""))


class TestConnectionClosed:
    def test_ok_when_both_sides_closed_normally(self) -> None:
        for rcvd, sent in [(1000, 1000), (1001, 1001), (1005, 1005), (1000, 1001)]:
            exc = connection_closed(Close(rcvd), Close(sent), True)
            assert isinstance(exc, ConnectionClosedOK), (rcvd, sent)
            assert exc.code == rcvd

    def test_error_otherwise(self) -> None:
        cases = [
            (Close(1002), Close(1002)),
            (Close(1000), Close(1011)),
            (None, Close(1000)),
            (Close(1000), None),
            (None, None),
            (Close(4000, "x"), Close(4000)),
        ]
        for rcvd, sent in cases:
            assert isinstance(connection_closed(rcvd, sent, False), ConnectionClosedError)

    def test_code_and_reason(self) -> None:
        exc = ConnectionClosed(Close(4001, "r"), Close(4001), True)
        assert (exc.code, exc.reason) == (4001, "r")
        assert "received 4001" in str(exc) and "then sent" in str(exc)
        exc = ConnectionClosed(None, None)
        assert (exc.code, exc.reason) == (1006, "")
