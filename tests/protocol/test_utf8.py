"""Incremental UTF-8 validation: the first byte that cannot be valid fails at once."""

from __future__ import annotations

import pytest

from pulsewire.protocol import ProtocolError
from pulsewire.protocol.utf8 import Utf8Decoder, decode_text

SAMPLE = "aé€😀z"  # 1-, 2-, 3- and 4-byte sequences


def test_decode_text() -> None:
    assert decode_text(SAMPLE.encode()) == SAMPLE
    with pytest.raises(ProtocolError) as info:
        decode_text(b"a\xffb")
    assert info.value.code == 1007


@pytest.mark.parametrize("split", range(len(SAMPLE.encode()) + 1))
def test_any_split_decodes(split: int) -> None:
    data = SAMPLE.encode()
    dec = Utf8Decoder()
    text = dec.decode(data[:split]) + dec.decode(data[split:], final=True)
    assert text == SAMPLE


def test_byte_by_byte_decodes() -> None:
    dec = Utf8Decoder()
    data = SAMPLE.encode()
    pieces = [dec.decode(data[i : i + 1]) for i in range(len(data))]
    assert "".join(pieces) + dec.decode(b"", final=True) == SAMPLE


# (valid prefix, bytes whose first one is the first that cannot be valid)
BAD = [
    pytest.param(b"ab", b"\xff", id="ff"),
    pytest.param(b"ab", b"\x80", id="lone-continuation"),
    pytest.param(b"a", b"\xc0\xaf", id="overlong-c0"),
    pytest.param(b"a\xe0", b"\x80\x80", id="overlong-e0"),
    pytest.param(b"a\xed", b"\xa0\x80", id="surrogate-ed-a0"),
    pytest.param(b"\xed", b"\xbf\xbf", id="surrogate-ed-bf"),
    pytest.param(b"a\xf4", b"\x90\x80\x80", id="above-10ffff"),
    pytest.param(b"a", b"\xf5\x80\x80\x80", id="f5"),
    pytest.param(b"a\xe2\x82", b"A", id="truncated-then-ascii"),
    pytest.param("κόσμε".encode() + b"\xed", b"\xa0\x80", id="kosme-surrogate"),
]


@pytest.mark.parametrize(("good", "bad"), BAD)
def test_fails_on_the_first_invalid_byte(good: bytes, bad: bytes) -> None:
    dec = Utf8Decoder()
    for i in range(len(good)):
        dec.decode(good[i : i + 1])  # no error before the bad byte
    with pytest.raises(ProtocolError) as info:
        dec.decode(bad[:1])
    assert info.value.code == 1007


def test_surrogate_prefix_in_one_chunk() -> None:
    with pytest.raises(ProtocolError):
        Utf8Decoder().decode(b"ok\xed\xa0")


@pytest.mark.parametrize("data", [b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xf4\x8f\xbf\xbf"])
def test_code_points_next_to_invalid_ranges_are_valid(data: bytes) -> None:
    dec = Utf8Decoder()
    out = "".join(dec.decode(data[i : i + 1]) for i in range(len(data)))
    assert out + dec.decode(b"", final=True) == data.decode("utf-8")


@pytest.mark.parametrize("tail", [b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98"])
def test_incomplete_sequence_at_the_end(tail: bytes) -> None:
    dec = Utf8Decoder()
    assert dec.decode(b"ok" + tail) == "ok"
    with pytest.raises(ProtocolError) as info:
        dec.decode(b"", final=True)
    assert info.value.code == 1007
