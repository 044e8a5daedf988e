"""The Connection state machine: messages, control frames, closing, failures and limits."""

from __future__ import annotations

import pytest

from pulsewire.protocol import (
    CloseReceived,
    InvalidState,
    PayloadTooBig,
    PerMessageDeflate,
    Ping,
    Pong,
    State,
)
from pulsewire.protocol.close import Close
from pulsewire.protocol.frames import PreparedFrame

from .helpers import (
    BINARY,
    CLOSE,
    CONT,
    MASK,
    PING,
    PONG,
    TEXT,
    client,
    close_payload,
    failed_with,
    feed_bytewise,
    frame,
    sent,
    server,
)

pytestmark = pytest.mark.usefixtures("parser")  # the C receive fast path and pure Python

# --------------------------------------------------------------------------- data messages


def test_text_and_binary_messages() -> None:
    conn = server()
    conn.receive_data(frame(TEXT, "héllo".encode()) + frame(BINARY, b"\x00\xff"))
    assert conn.events_received() == ["héllo", b"\x00\xff"]
    assert conn.events_received() == []
    assert sent(conn) == []


def test_empty_messages() -> None:
    conn = server()
    conn.receive_data(frame(TEXT) + frame(BINARY))
    conn.receive_data(frame(TEXT, fin=False) + frame(CONT, fin=False) + frame(CONT))
    assert conn.events_received() == ["", b"", ""]


def test_fragmented_message_with_control_frames_interleaved() -> None:
    conn = server()
    conn.receive_data(
        frame(TEXT, b"frag", fin=False)
        + frame(PING, b"p1")
        + frame(CONT, "mé".encode(), fin=False)
        + frame(PONG, b"p2")
        + frame(PING, b"")
        + frame(CONT, b"nted")
    )
    assert conn.events_received() == [Ping(b"p1"), Pong(b"p2"), Ping(b""), "fragménted"]
    assert [(f.opcode, f.payload) for f in sent(conn)] == [(PONG, b"p1"), (PONG, b"")]


def test_fragmented_binary_message_fed_in_pieces() -> None:
    conn = server()
    data = frame(BINARY, b"a" * 300, fin=False) + frame(PING, b"x") + frame(CONT, b"b" * 70000)
    for i in range(0, len(data), 1000):
        conn.receive_data(data[i : i + 1000])
    assert conn.events_received() == [Ping(b"x"), b"a" * 300 + b"b" * 70000]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(frame(CONT, b"x"), id="continuation-first"),
        pytest.param(frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), id="text-inside-text"),
        pytest.param(frame(BINARY, b"a", fin=False) + frame(TEXT, b"b"), id="text-inside-binary"),
        pytest.param(frame(TEXT, b"a") + frame(CONT, b"b"), id="continuation-after-end"),
    ],
)
def test_fragmentation_errors(data: bytes) -> None:
    conn = server()
    conn.receive_data(data)
    assert failed_with(conn) == 1002


def test_sending_a_fragmented_message() -> None:
    conn = client()
    conn.send_text("ab", fin=False)
    conn.send_ping(b"x")  # control frames may be sent between fragments
    conn.send_continuation("cd", fin=False)
    conn.send_continuation(b"ef", fin=True)
    conn.send_binary(b"next")
    frames = sent(conn)
    assert [(f.opcode, f.fin, f.payload) for f in frames] == [
        (TEXT, False, b"ab"),
        (PING, True, b"x"),
        (CONT, False, b"cd"),
        (CONT, True, b"ef"),
        (BINARY, True, b"next"),
    ]


# --------------------------------------------------------------------------- ping and pong


@pytest.mark.parametrize("payload", [b"", b"hello", b"\x00" * 125])
def test_ping_is_answered_with_a_pong(payload: bytes) -> None:
    conn = server()
    conn.receive_data(frame(PING, payload))
    assert conn.events_received() == [Ping(payload)]
    (pong,) = sent(conn)
    assert (pong.opcode, pong.payload, pong.mask) == (PONG, payload, None)


def test_client_pong_is_masked() -> None:
    conn = client()
    conn.receive_data(frame(PING, b"abc", mask=None))
    (pong,) = sent(conn)
    assert (pong.opcode, pong.payload, pong.mask) == (PONG, b"abc", MASK)


def test_pong_is_an_event_and_needs_no_answer() -> None:
    conn = server()
    conn.receive_data(frame(PONG, b"data"))
    assert conn.events_received() == [Pong(b"data")]
    assert sent(conn) == []


def test_ping_while_closing_is_still_answered() -> None:
    # RFC 6455 5.5.2: a Ping gets a Pong "unless it already received a Close frame". Having
    # *sent* a Close only forbids data frames (5.5.1), so a Pong is still due in CLOSING.
    conn = server()
    conn.send_close(1000)
    sent(conn)
    conn.receive_data(frame(PING, b"still there?"))
    assert conn.events_received() == [Ping(b"still there?")]
    assert [(f.opcode, f.payload) for f in sent(conn)] == [(PONG, b"still there?")]


def test_send_ping_and_pong() -> None:
    conn = server()
    conn.send_ping(b"a" * 125)
    conn.send_pong(b"b")
    assert [(f.opcode, f.payload) for f in sent(conn)] == [(PING, b"a" * 125), (PONG, b"b")]
    with pytest.raises(ValueError):
        conn.send_ping(b"a" * 126)
    with pytest.raises(ValueError):
        conn.send_pong(b"a" * 126)


# --------------------------------------------------------------------------- closing handshake


def test_server_initiates_close() -> None:
    conn = server()
    conn.send_close(1000, "done")
    assert conn.state is State.CLOSING
    (close,) = sent(conn)
    assert close.close == (1000, "done")
    assert not conn.close_transport
    # Data still arrives while CLOSING.
    conn.receive_data(frame(TEXT, b"late") + frame(CLOSE, close_payload(1000)))
    assert conn.events_received() == ["late", CloseReceived(Close(1000, ""))]
    assert conn.state is State.CLOSED
    assert sent(conn) == []  # no second Close
    assert conn.close_transport  # the server closes TCP
    assert conn.close_sent == Close(1000, "done")
    assert conn.close_rcvd == Close(1000, "")
    assert conn.close_rcvd_then_sent is False


def test_client_initiates_close_and_waits_for_the_server_to_close_tcp() -> None:
    conn = client()
    conn.send_close(4000, "bye")
    assert conn.state is State.CLOSING
    (close,) = sent(conn)
    assert close.close == (4000, "bye") and close.mask == MASK
    conn.receive_data(frame(CLOSE, close_payload(4000), mask=None))
    assert conn.events_received() == [CloseReceived(Close(4000, ""))]
    assert conn.state is State.CLOSED
    assert not conn.close_transport  # RFC 6455 7.1.1: the client waits for the server
    conn.receive_eof()
    assert conn.close_transport


def test_server_answers_a_close_and_closes_tcp() -> None:
    conn = server()
    conn.receive_data(frame(CLOSE, close_payload(1001, "going")))
    assert conn.events_received() == [CloseReceived(Close(1001, "going"))]
    (echo,) = sent(conn)
    assert echo.close == (1001, "")
    assert conn.state is State.CLOSED
    assert conn.close_transport
    assert conn.close_rcvd_then_sent is True
    assert conn.close_sent == Close(1001, "")


def test_server_may_echo_the_close_reason() -> None:
    conn = server(echo_close_reason=True)
    conn.receive_data(frame(CLOSE, close_payload(4001, "bye now")))
    (echo,) = sent(conn)
    assert echo.close == (4001, "bye now")
    assert conn.close_sent == Close(4001, "bye now")


def test_client_answers_a_close_and_waits() -> None:
    conn = client()
    conn.receive_data(frame(CLOSE, close_payload(1000, "bye"), mask=None))
    (echo,) = sent(conn)
    assert echo.close == (1000, "") and echo.mask == MASK
    assert conn.state is State.CLOSED
    assert not conn.close_transport


def test_empty_close_is_answered_with_an_empty_close() -> None:
    conn = server()
    conn.receive_data(frame(CLOSE))
    assert conn.events_received() == [CloseReceived(Close(1005, ""))]
    (echo,) = sent(conn)
    assert echo.payload == b""


def test_send_close_without_status() -> None:
    conn = client()
    conn.send_close(1005)
    (close,) = sent(conn)
    assert close.payload == b""


def test_receive_eof_while_open() -> None:
    conn = server()
    conn.receive_eof()
    assert conn.state is State.CLOSED
    assert conn.close_transport
    assert conn.close_rcvd is None
    conn.receive_data(frame(TEXT, b"after eof"))
    assert conn.events_received() == []


# --------------------------------------------------------------------------- close codes


@pytest.mark.parametrize(
    "code",
    [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4000, 4999],
)
def test_valid_close_codes_are_echoed(code: int) -> None:
    conn = server()
    conn.receive_data(frame(CLOSE, close_payload(code, "r")))
    assert conn.failure is None
    assert conn.events_received() == [CloseReceived(Close(code, "r"))]
    (echo,) = sent(conn)
    assert echo.close[0] == code


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
)
def test_invalid_close_codes_are_1002(code: int) -> None:
    conn = server()
    conn.receive_data(frame(CLOSE, close_payload(code)))
    assert failed_with(conn) == 1002
    assert conn.events_received() == []


def test_one_byte_close_payload_is_1002() -> None:
    conn = server()
    conn.receive_data(frame(CLOSE, b"\x03"))
    assert failed_with(conn) == 1002


def test_invalid_utf8_close_reason_is_1007() -> None:
    conn = client()
    conn.receive_data(frame(CLOSE, close_payload(1000, b"\xce\xba\xff"), mask=None))
    assert failed_with(conn) == 1007


# --------------------------------------------------------------------------- reserved bits


@pytest.mark.parametrize(
    ("rsv", "deflate"),
    [
        pytest.param({"rsv1": True}, False, id="rsv1-without-deflate"),
        pytest.param({"rsv2": True}, False, id="rsv2"),
        pytest.param({"rsv3": True}, False, id="rsv3"),
        pytest.param({"rsv2": True}, True, id="rsv2-with-deflate"),
        pytest.param({"rsv3": True}, True, id="rsv3-with-deflate"),
        pytest.param({"rsv1": True, "rsv2": True}, True, id="rsv1+rsv2-with-deflate"),
    ],
)
def test_reserved_bits(rsv: dict[str, bool], deflate: bool) -> None:
    conn = server(deflate=PerMessageDeflate() if deflate else None)
    conn.receive_data(frame(TEXT, b"x", **rsv))
    assert failed_with(conn) == 1002


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(frame(PING, b"", rsv1=True), id="ping"),
        pytest.param(frame(CLOSE, b"", rsv1=True), id="close"),
        pytest.param(
            frame(BINARY, b"", fin=False) + frame(CONT, b"", rsv1=True), id="continuation"
        ),
    ],
)
def test_rsv1_only_on_the_first_data_frame_even_with_deflate(data: bytes) -> None:
    conn = server(deflate=PerMessageDeflate())
    conn.receive_data(data)
    assert failed_with(conn) == 1002


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcodes(opcode: int) -> None:
    conn = server()
    conn.receive_data(frame(opcode, b"x"))
    assert failed_with(conn) == 1002


@pytest.mark.parametrize("opcode", [3, 0xB])
def test_reserved_opcodes_inside_a_fragmented_message(opcode: int) -> None:
    conn = server()
    conn.receive_data(frame(TEXT, b"a", fin=False) + frame(opcode, b"x"))
    assert failed_with(conn) == 1002


# --------------------------------------------------------------------------- control frames


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_control_frame_longer_than_125_bytes(opcode: int) -> None:
    conn = server()
    data = frame(opcode, close_payload(1000, "x" * 124))  # 126 bytes
    conn.receive_data(data[:8])  # the header alone is enough to fail
    assert failed_with(conn) == 1002


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_fragmented_control_frame(opcode: int) -> None:
    conn = server()
    conn.receive_data(frame(opcode, b"", fin=False))
    assert failed_with(conn) == 1002


def test_control_frame_with_125_bytes() -> None:
    conn = server()
    conn.receive_data(frame(PING, b"p" * 125))
    assert conn.events_received() == [Ping(b"p" * 125)]


def test_control_frame_with_a_64_bit_length_encoding() -> None:
    # Not minimal, but RFC 6455 only forbids more than 125 bytes of payload.
    conn = client()
    data = bytes([0x89, 127]) + (3).to_bytes(8, "big") + b"abc"
    conn.receive_data(data)
    assert conn.events_received() == [Ping(b"abc")]


def test_64_bit_length_with_the_most_significant_bit_set() -> None:
    conn = client()
    conn.receive_data(bytes([0x82, 127]) + (2**63 + 5).to_bytes(8, "big"))
    assert failed_with(conn) == 1002
    conn = server(max_message_size=None)
    conn.receive_data(bytes([0x82, 0xFF]) + (2**63).to_bytes(8, "big") + MASK)
    assert failed_with(conn) == 1002


# --------------------------------------------------------------------------- UTF-8


def _payload_offsets(frames: list[bytes]) -> list[int]:
    """Stream offset of each frame's first payload byte (frames are masked and short)."""
    offsets, pos = [], 0
    for data in frames:
        offsets.append(pos + 6)
        pos += len(data)
    return offsets


@pytest.mark.parametrize(
    ("pieces", "bad_frame", "bad_index"),
    [
        pytest.param([b"ab", b"c\xed", b"\xa0\x80d"], 2, 0, id="surrogate-across-frames"),
        pytest.param([b"ab", b"c\xed\xa0\x80"], 1, 2, id="surrogate-in-one-frame"),
        pytest.param([b"hello", b"\xff world"], 1, 0, id="ff"),
        pytest.param(["κόσμε".encode(), b"\xf4\x90\x80\x80"], 1, 1, id="above-10ffff"),
        pytest.param([b"\xe2\x82", b"A"], 1, 0, id="truncated"),
        pytest.param([b"a", b"", b"b\xc0\xaf"], 2, 1, id="overlong"),
    ],
)
def test_invalid_utf8_fails_at_the_bad_byte(
    pieces: list[bytes], bad_frame: int, bad_index: int
) -> None:
    frames = [
        frame(TEXT if i == 0 else CONT, piece, fin=i == len(pieces) - 1)
        for i, piece in enumerate(pieces)
    ]
    conn = server()
    where = feed_bytewise(conn, b"".join(frames))
    assert where == _payload_offsets(frames)[bad_frame] + bad_index
    assert failed_with(conn) == 1007
    assert conn.events_received() == []


def test_invalid_utf8_in_a_single_frame_fed_byte_by_byte() -> None:
    data = frame(TEXT, b"abc\xed\xa0\x80xyz")
    conn = server()
    assert feed_bytewise(conn, data) == 6 + 4  # the A0 byte
    assert failed_with(conn) == 1007


def test_invalid_utf8_in_a_single_frame_at_once() -> None:
    conn = server()
    conn.receive_data(frame(TEXT, b"abc\xffxyz"))
    assert failed_with(conn) == 1007


def test_incomplete_utf8_at_the_end_of_a_message() -> None:
    conn = server()
    conn.receive_data(frame(TEXT, b"ok\xe2", fin=False))
    assert conn.failure is None
    conn.receive_data(frame(CONT, b"\x82"))
    assert failed_with(conn) == 1007


def test_utf8_split_across_frames_is_valid() -> None:
    data = "€😀".encode()
    conn = server()
    conn.receive_data(
        b"".join(
            frame(TEXT if i == 0 else CONT, data[i : i + 1], fin=i == len(data) - 1)
            for i in range(len(data))
        )
    )
    assert conn.events_received() == ["€😀"]


def test_binary_messages_are_not_utf8_checked() -> None:
    conn = server()
    conn.receive_data(frame(BINARY, b"\xff\xed\xa0\x80"))
    assert conn.events_received() == [b"\xff\xed\xa0\x80"]


# --------------------------------------------------------------------------- size limits


def test_message_at_the_limit() -> None:
    conn = server(max_message_size=1000)
    conn.receive_data(frame(BINARY, b"x" * 1000))
    conn.receive_data(frame(BINARY, b"x" * 600, fin=False) + frame(CONT, b"y" * 400))
    assert conn.events_received() == [b"x" * 1000, b"x" * 600 + b"y" * 400]


def test_message_over_the_limit_is_1009() -> None:
    conn = server(max_message_size=1000)
    conn.receive_data(frame(TEXT, b"x" * 1001))
    assert failed_with(conn) == 1009
    assert isinstance(conn.failure, PayloadTooBig)


def test_too_large_frame_fails_on_its_header() -> None:
    conn = server(max_message_size=1000)
    data = frame(BINARY, b"x" * 100_000)
    conn.receive_data(data[:14])  # header + mask only: no payload yet
    assert failed_with(conn) == 1009


def test_announced_huge_frame_fails_without_its_payload() -> None:
    conn = client(max_message_size=2**20)
    conn.receive_data(bytes([0x82, 127]) + (2**40).to_bytes(8, "big"))
    assert failed_with(conn) == 1009


def test_fragmented_message_over_the_limit_fails_on_the_fragment_header() -> None:
    conn = server(max_message_size=1000)
    conn.receive_data(frame(BINARY, b"x" * 600, fin=False))
    assert conn.failure is None
    conn.receive_data(frame(CONT, b"y" * 401)[:8])
    assert failed_with(conn) == 1009


def test_frame_limit_below_the_message_limit() -> None:
    conn = server(max_message_size=1000, max_frame_size=100)
    conn.receive_data(
        b"".join(frame(CONT if i else BINARY, b"z" * 100, fin=i == 9) for i in range(10))
    )
    assert conn.events_received() == [b"z" * 1000]
    conn.receive_data(frame(BINARY, b"z" * 101))
    assert failed_with(conn) == 1009


def test_no_limit() -> None:
    conn = server(max_message_size=None)
    conn.receive_data(frame(BINARY, b"q" * (3 * 2**20)))
    assert conn.events_received() == [b"q" * (3 * 2**20)]


def test_limits_do_not_apply_to_the_limits_of_control_frames() -> None:
    conn = server(max_message_size=10)
    conn.receive_data(frame(PING, b"p" * 100))
    assert conn.events_received() == [Ping(b"p" * 100)]


def test_number_of_fragments_is_bounded() -> None:
    def message(frames: int) -> bytes:
        return b"".join(
            frame(CONT if i else BINARY, b"x" if i == 0 else b"", fin=i == frames - 1)
            for i in range(frames)
        )

    conn = server(max_fragments=10)
    conn.receive_data(message(10) + message(10))  # the count restarts with each message
    assert conn.events_received() == [b"x", b"x"]
    conn.receive_data(message(11))
    assert failed_with(conn) == 1008
    unbounded = server(max_fragments=None)
    unbounded.receive_data(message(5000))
    assert unbounded.events_received() == [b"x"]


# --------------------------------------------------------------------------- bounded buffering

MAX_PENDING = 14 + 125


@pytest.mark.parametrize("chunk", [1, 7, 4093, 65537])
def test_pending_bytes_stay_bounded(chunk: int) -> None:
    payload = bytes(i & 0xFF for i in range(2 * 2**20 + 3))
    data = (
        frame(BINARY, payload[:1000], fin=False)
        + frame(PING, b"p" * 125)
        + frame(CONT, payload[1000:], fin=True)
    )
    if chunk < 100:
        data = data[:100_000]  # enough bytes to cross every state in small steps
    conn = server(max_message_size=4 * 2**20)
    peak = 0
    for i in range(0, len(data), chunk):
        conn.receive_data(data[i : i + chunk])
        peak = max(peak, conn._input.held)
    assert conn.failure is None
    assert peak <= MAX_PENDING
    if chunk > 100:
        assert conn.events_received() == [Ping(b"p" * 125), payload]


def test_pending_bytes_for_the_largest_control_frame_header() -> None:
    # A 125-byte Ping with a 64-bit length and a mask: 14 + 125 bytes before it is complete.
    data = bytes([0x89, 0xFF]) + (125).to_bytes(8, "big") + MASK + bytes(125)
    conn = server()
    for i in range(len(data) - 1):
        conn.receive_data(data[i : i + 1])
        assert conn._input.held <= MAX_PENDING
    assert conn._input.held == MAX_PENDING - 1
    conn.receive_data(data[-1:])
    assert conn._input.held == 0
    assert len(conn.events_received()) == 1


# --------------------------------------------------------------------------- after the end


def test_events_after_close_are_ignored() -> None:
    conn = server()
    conn.receive_data(frame(CLOSE, close_payload(1000)) + frame(TEXT, b"ignored"))
    conn.receive_data(frame(PING, b"ignored") + b"\xff\xff garbage")
    assert conn.events_received() == [CloseReceived(Close(1000, ""))]
    assert [f.opcode for f in sent(conn)] == [CLOSE]
    assert conn.failure is None


def test_events_after_a_failure_are_ignored() -> None:
    conn = server()
    conn.receive_data(frame(TEXT, b"ok") + frame(3, b"bad") + frame(TEXT, b"never"))
    assert conn.events_received() == ["ok"]
    assert failed_with(conn) == 1002
    conn.receive_data(frame(PING, b"x"))
    assert conn.events_received() == []
    assert sent(conn) == []


def test_protocol_error_while_closing_sends_no_second_close() -> None:
    conn = server()
    conn.send_close(1000)
    sent(conn)
    conn.receive_data(frame(7))
    assert conn.failure is not None and conn.failure.code == 1002
    assert sent(conn) == []
    assert conn.state is State.CLOSED
    assert conn.close_transport


def test_fail_truncates_long_reasons() -> None:
    conn = server()
    conn.fail(1011, "é" * 200)
    (close,) = sent(conn)
    assert close.close[0] == 1011
    assert len(close.payload) <= 125
    assert conn.close_transport


# --------------------------------------------------------------------------- invalid states


def _closing() -> object:
    conn = server()
    conn.send_close()
    return conn


def _closed_by_peer() -> object:
    conn = server()
    conn.receive_data(frame(CLOSE))
    return conn


def _failed() -> object:
    conn = server()
    conn.receive_data(frame(TEXT, b"x", mask=None))
    return conn


def _eof() -> object:
    conn = server()
    conn.receive_eof()
    return conn


@pytest.mark.parametrize("make", [_closing, _closed_by_peer, _failed, _eof])
@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.send_text("x"),
        lambda c: c.send_binary(b"x"),
        lambda c: c.send_ping(),
        lambda c: c.send_pong(),
        lambda c: c.send_close(),
        lambda c: c.send_prepared(PreparedFrame("x")),
    ],
    ids=["text", "binary", "ping", "pong", "close", "prepared"],
)
def test_send_after_close_raises_invalid_state(make, call) -> None:  # type: ignore[no-untyped-def]
    conn = make()
    sent(conn)
    with pytest.raises(InvalidState):
        call(conn)
    assert sent(conn) == []


def test_continuation_without_a_fragmented_message() -> None:
    conn = server()
    with pytest.raises(InvalidState):
        conn.send_continuation("x", fin=True)
    conn.send_text("a")
    with pytest.raises(InvalidState):
        conn.send_continuation("x", fin=True)


def test_new_message_during_a_fragmented_one() -> None:
    conn = server()
    conn.send_binary(b"a", fin=False)
    with pytest.raises(InvalidState):
        conn.send_text("b")
    with pytest.raises(InvalidState):
        conn.send_prepared(PreparedFrame("b"))
    conn.send_continuation(b"c", fin=True)
    conn.send_text("d")
    assert [f.payload for f in sent(conn)] == [b"a", b"c", b"d"]


def test_a_prepared_frame_is_shared_by_servers() -> None:
    frame = PreparedFrame("shared")
    conns = [server(), server()]
    for conn in conns:
        conn.send_prepared(frame)
        assert conn.out_bytes == len(frame.data)
        (queued,) = conn.pending_output
        assert queued is frame.data  # the same bytes object: built once
        conn.output_written()
    binary = PreparedFrame(b"\x00\x01")
    conns[0].send_prepared(binary)
    assert [(f.opcode, f.payload, f.fin) for f in sent(conns[0])] == [(BINARY, b"\x00\x01", True)]
    conns[0].send_prepared(PreparedFrame("as bytes", binary=True))
    conns[0].send_prepared(PreparedFrame(b"as text", binary=False))
    assert [(f.opcode, f.payload) for f in sent(conns[0])] == [
        (BINARY, b"as bytes"),
        (TEXT, b"as text"),
    ]


def test_a_client_masks_a_prepared_frame_itself() -> None:
    conn = client()
    frame = PreparedFrame("masked")
    conn.send_prepared(frame)
    (queued,) = conn.pending_output
    assert queued != frame.data
    (wire,) = sent(conn)
    assert (wire.opcode, wire.payload, wire.mask is not None) == (TEXT, b"masked", True)


def test_a_prepared_frame_is_compressed_per_connection() -> None:
    conn = server(deflate=PerMessageDeflate())
    text = "compress me " * 100
    frame = PreparedFrame(text)
    conn.send_prepared(frame)
    (wire,) = sent(conn)
    assert wire.rsv1 and wire.opcode == TEXT and len(wire.payload) < len(frame.payload)
    conn.send_prepared(frame, compress=False)  # this message only: the shared bytes
    (queued,) = conn.pending_output
    assert queued is frame.data


@pytest.mark.parametrize(
    ("code", "reason"),
    [(999, ""), (1004, ""), (1006, ""), (1015, ""), (5000, ""), (1005, "r"), (1000, "x" * 124)],
)
def test_send_close_rejects_bad_arguments(code: int, reason: str) -> None:
    conn = server()
    with pytest.raises(ValueError):
        conn.send_close(code, reason)
    assert conn.state is State.OPEN
    assert sent(conn) == []


def test_out_bytes_tracks_queued_bytes() -> None:
    conn = server()
    assert conn.out_bytes == 0
    conn.send_binary(b"x" * 1000)
    assert conn.out_bytes >= 1000
    conn.data_to_send()
    assert conn.out_bytes == 0
