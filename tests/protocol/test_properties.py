"""Property-based tests of the Sans-I/O core (Hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulsewire.protocol import (
    Connection,
    DeflateOptions,
    InvalidHandshake,
    Ping,
    Pong,
    ProtocolError,
    Refused,
    Side,
    connection,
    frames,
    is_valid_close_code,
)
from pulsewire.protocol.handshake import ClientHandshake, ServerHandshake, parse_uri
from pulsewire.protocol.headers import parse_extension_list

from .helpers import CLOSE, PONG, parse_frames

# Frame-level properties run on both receive paths (the ``parser`` fixture): 2 x 100 examples.
SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SINGLE_SETTINGS = settings(max_examples=200, deadline=None)
both_parsers = pytest.mark.usefixtures("parser")


# ------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Message:
    data: str | bytes
    cuts: tuple[int, ...]  # fragment boundaries (indices into data)
    compress: bool | None
    controls: tuple[tuple[int, tuple[str, bytes], ...], ...] = ()  # (after fragment i, ...)


control = st.tuples(st.sampled_from(["ping", "pong"]), st.binary(max_size=125))


@st.composite
def messages(draw: st.DrawFn) -> Message:
    data: str | bytes = draw(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
    n = len(data)
    cuts = tuple(sorted(set(draw(st.lists(st.integers(0, n), max_size=4)))))
    fragments = len(cuts) + 1
    controls = tuple(
        (draw(st.integers(0, fragments - 1)), draw(control)) for _ in range(draw(st.integers(0, 3)))
    )
    return Message(data, cuts, draw(st.sampled_from([None, True, False])), controls)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Message], list[tuple[str, bytes]], dict[str, bool]]:
    msgs = draw(st.lists(messages(), max_size=6))
    between = draw(st.lists(control, max_size=3))  # control frames between messages
    opts = {
        "deflate": draw(st.booleans()),
        "client_no_context_takeover": draw(st.booleans()),
        "server_no_context_takeover": draw(st.booleans()),
    }
    return msgs, between, opts


def make_pair(opts: dict[str, bool]) -> tuple[Connection, Connection]:
    if not opts["deflate"]:
        return (
            Connection(Side.CLIENT, max_message_size=None),
            Connection(Side.SERVER, max_message_size=None),
        )
    client_opts = DeflateOptions(
        client_no_context_takeover=opts["client_no_context_takeover"],
        server_no_context_takeover=opts["server_no_context_takeover"],
    )
    accepted = DeflateOptions().server_accept(parse_extension_list(client_opts.client_offer()))
    assert accepted is not None
    value, server_codec = accepted
    client_codec = client_opts.client_accept(parse_extension_list(value)[0][1])
    return (
        Connection(Side.CLIENT, deflate=client_codec, max_message_size=None),
        Connection(Side.SERVER, deflate=server_codec, max_message_size=None),
    )


def write(conn: Connection, msgs: list[Message], between: list[tuple[str, bytes]]) -> list[object]:
    """Send everything through ``conn``; return the events a peer should see."""
    expected: list[object] = []

    def send_control(kind: str, payload: bytes) -> None:
        if kind == "ping":
            conn.send_ping(payload)
            expected.append(Ping(payload))
        else:
            conn.send_pong(payload)
            expected.append(Pong(payload))

    for index, msg in enumerate(msgs):
        bounds = [0, *msg.cuts, len(msg.data)]
        pieces = [msg.data[a:b] for a, b in pairwise(bounds)]
        for i, piece in enumerate(pieces):
            fin = i == len(pieces) - 1
            if i == 0:
                if isinstance(msg.data, str):
                    conn.send_text(piece, fin=fin, compress=msg.compress)  # type: ignore[arg-type]
                else:
                    conn.send_binary(piece, fin=fin, compress=msg.compress)  # type: ignore[arg-type]
            else:
                conn.send_continuation(piece, fin=fin)
            for after, (kind, payload) in msg.controls:
                if after == i and not fin:
                    send_control(kind, payload)
        expected.append(msg.data)
        if index < len(between):
            send_control(*between[index])
    return expected


def check_wire(data: bytes, masked: bool) -> None:
    for f in parse_frames(data):
        assert (f.mask is not None) == masked
        assert not (f.rsv2 or f.rsv3)


# ------------------------------------------------------------------------------- round trips


@both_parsers
@SETTINGS
@given(streams())
def test_valid_streams_round_trip_client_to_server(
    stream: tuple[list[Message], list[tuple[str, bytes]], dict[str, bool]],
) -> None:
    msgs, between, opts = stream
    client, server = make_pair(opts)
    expected = write(client, msgs, between)
    data = b"".join(client.data_to_send())
    check_wire(data, masked=True)
    server.receive_data(data)
    assert server.failure is None
    events = server.events_received()
    assert events == expected
    # Every Ping was answered, in order, by a Pong with the same payload.
    pongs = [f.payload for f in parse_frames(b"".join(server.data_to_send())) if f.opcode == PONG]
    assert pongs == [e.data for e in expected if isinstance(e, Ping)]


@both_parsers
@SETTINGS
@given(streams())
def test_valid_streams_round_trip_server_to_client(
    stream: tuple[list[Message], list[tuple[str, bytes]], dict[str, bool]],
) -> None:
    msgs, between, opts = stream
    client, server = make_pair(opts)
    expected = write(server, msgs, between)
    data = b"".join(server.data_to_send())
    check_wire(data, masked=False)
    client.receive_data(data)
    assert client.failure is None
    assert client.events_received() == expected


@both_parsers
@SETTINGS
@given(streams(), st.data())
def test_any_split_gives_the_same_events(
    stream: tuple[list[Message], list[tuple[str, bytes]], dict[str, bool]],
    data: st.DataObject,
) -> None:
    msgs, between, opts = stream
    client, server_at_once = make_pair(opts)
    write(client, msgs, between)
    wire = b"".join(client.data_to_send())
    # A second server with the same negotiated codec settings, fed in random chunks.
    _, server_split = make_pair(opts)
    server_at_once.receive_data(wire)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    bounds = [0, *cuts, len(wire)]
    events: list[object] = []
    for a, b in pairwise(bounds):
        server_split.receive_data(wire[a:b])
        events += server_split.events_received()
    assert server_split.failure is None
    assert events == server_at_once.events_received()
    assert server_split._input.held <= 14 + 125


# ------------------------------------------------------------------------------- garbage


def check_failure(conn: Connection) -> None:
    """After bad input: nothing raised; a failure is a ProtocolError whose Close was queued."""
    out = b"".join(conn.data_to_send())
    frames = parse_frames(out)  # whatever was queued is well-formed
    if conn.failure is None:
        return
    assert isinstance(conn.failure, ProtocolError)
    code = conn.failure.code
    assert is_valid_close_code(code)
    assert code in (1002, 1007, 1008, 1009)
    closes = [f for f in frames if f.opcode == CLOSE]
    assert [c.close[0] for c in closes] == [code]
    assert conn.close_transport


def fresh(side: Side, deflate: bool) -> Connection:
    codec = None
    if deflate:
        accepted = DeflateOptions().server_accept([("permessage-deflate", [])])
        assert accepted is not None
        codec = accepted[1]
    return Connection(side, deflate=codec, max_message_size=4096)


@both_parsers
@SETTINGS
@given(
    st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=8),
    st.sampled_from([Side.SERVER, Side.CLIENT]),
    st.booleans(),
)
def test_garbage_never_raises(chunks: list[bytes], side: Side, deflate: bool) -> None:
    conn = fresh(side, deflate)
    for chunk in chunks:
        conn.receive_data(chunk)
    conn.events_received()
    check_failure(conn)


def mutate(wire: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(wire or b"\x00")
    for kind, position, value in mutations:
        i = position % len(data)
        if kind == "flip":
            data[i] ^= 1 << (value % 8)
        elif kind == "insert":
            data.insert(i, value)
        elif kind == "delete" and len(data) > 1:
            del data[i]
        else:
            data[i] = value
    return bytes(data)


mutation = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "set"]), st.integers(0, 10**6), st.integers(0, 255)
)


@both_parsers
@SETTINGS
@given(streams(), st.lists(mutation, min_size=1, max_size=5))
def test_mutated_streams_never_raise(
    stream: tuple[list[Message], list[tuple[str, bytes]], dict[str, bool]],
    mutations: list[tuple[str, int, int]],
) -> None:
    msgs, between, opts = stream
    client, server = make_pair(opts)
    server.max_message_size = server.max_frame_size = 4096
    write(client, msgs, between)
    server.receive_data(mutate(b"".join(client.data_to_send()), mutations))
    server.events_received()
    check_failure(server)


def read_into(conn: Connection, data: bytes, shared: memoryview) -> None:
    """``data`` as reads into ``conn.get_buffer(shared)``, as an event loop reads."""
    pos = 0
    while pos < len(data):
        buf = conn.get_buffer(shared)
        n = min(len(buf), len(data) - pos)
        buf[:n] = data[pos : pos + n]
        conn.buffer_updated(n)
        del buf
        pos += n


@pytest.mark.skipif(not frames.SPEEDUPS, reason=frames.SPEEDUPS_ABSENT)
@settings(SINGLE_SETTINGS, max_examples=150)
@given(
    streams(),
    st.lists(mutation, max_size=3),
    st.sampled_from([Side.SERVER, Side.CLIENT]),
    st.booleans(),
    st.data(),
)
def test_c_fast_path_and_python_parser_agree(
    stream: tuple[list[Message], list[tuple[str, bytes]], dict[str, bool]],
    mutations: list[tuple[str, int, int]],
    side: Side,
    reading: bool,
    data: st.DataObject,
) -> None:
    # ``reading``: through get_buffer/buffer_updated, where the C path unmasks text in place
    # (and must leave a frame it hands back to Python as it was); else receive_data.
    msgs, between, _ = stream
    sender = Connection(Side.CLIENT if side is Side.SERVER else Side.SERVER)
    write(sender, msgs, between)
    wire = mutate(b"".join(sender.data_to_send()), mutations)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=5)))
    limit = data.draw(st.one_of(st.none(), st.integers(0, 300)))
    shared = memoryview(bytearray(data.draw(st.sampled_from([16, 1000, 65536]))))
    results = []
    for scan in (frames.scan_messages, None):
        saved = connection.scan_messages
        connection.scan_messages = scan
        try:
            conn = Connection(side, max_message_size=limit, mask_key=lambda: b"mask")
            for a, b in pairwise([0, *cuts, len(wire)]):
                if reading:
                    read_into(conn, wire[a:b], shared)
                else:
                    conn.receive_data(wire[a:b])
        finally:
            connection.scan_messages = saved
        failure = None if conn.failure is None else conn.failure.code
        output = [(f.opcode, f.payload) for f in parse_frames(b"".join(conn.data_to_send()))]
        results.append((conn.events_received(), failure, output, conn.state))
    assert results[0] == results[1]


# ------------------------------------------------------------------------------- handshakes

REQUEST = (
    b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"Sec-WebSocket-Protocol: chat\r\nOrigin: https://example.com\r\n\r\n"
)


def run_server_handshake(chunks: list[bytes]) -> None:
    hs = ServerHandshake(
        origins=["https://example.com"],
        subprotocols=["chat"],
        deflate=DeflateOptions(),
        max_header_bytes=2048,
        max_headers=20,
        max_request_line=512,
    )
    try:
        for chunk in chunks:
            request = hs.receive_data(chunk)
            if request is not None:
                hs.accept(request)
                break
    except Refused as exc:
        assert 400 <= exc.status < 600
        assert isinstance(exc.reason, str)


@SINGLE_SETTINGS
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5))
def test_handshake_parser_on_random_bytes(chunks: list[bytes]) -> None:
    run_server_handshake(chunks)


@SINGLE_SETTINGS
@given(
    st.lists(st.tuples(st.integers(0, len(REQUEST) - 1), st.integers(0, 255)), max_size=4),
    st.integers(1, len(REQUEST)),
)
def test_handshake_parser_on_mutated_requests(edits: list[tuple[int, int]], chunk: int) -> None:
    data = bytearray(REQUEST)
    for position, value in edits:
        data[position] = value
    run_server_handshake([bytes(data[i : i + chunk]) for i in range(0, len(data), chunk)])


@SINGLE_SETTINGS
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5), st.booleans())
def test_client_handshake_on_random_bytes(chunks: list[bytes], eof: bool) -> None:
    hs = ClientHandshake(
        parse_uri("ws://example.com/"), deflate=DeflateOptions(), subprotocols=["chat"]
    )
    try:
        for chunk in chunks:
            if hs.receive_data(chunk) is not None:
                return
        if eof:
            hs.receive_eof()
    except InvalidHandshake:
        pass
