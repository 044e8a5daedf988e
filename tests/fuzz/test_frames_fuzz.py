"""Fuzzing the frame parser: ``Connection.receive_data`` on both sides, with and without
permessage-deflate, on both receive paths (C accelerator and pure Python).

Inputs are arbitrary bytes, and valid frame streams written by a real peer ``Connection`` then
mutated (bit flips, overwrites, inserted, deleted, duplicated ranges, truncation), all fed in
random chunks. Whatever the input:

* ``receive_data`` never raises (protocol errors become a failed connection);
* a failure carries a close code that may travel on the wire (1002, 1007, 1008 or 1009), the
  connection is CLOSED, wants its transport closed, and its last output is a Close frame with
  that code (masked on the client side, unmasked on the server side);
* bytes held back between calls stay bounded (``MAX_PENDING``) and no message exceeds
  ``max_message_size``;
* once failed or closed, further input is ignored.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulsewire.protocol import (
    Connection,
    DeflateOptions,
    Ping,
    Pong,
    ProtocolError,
    Side,
    State,
)
from pulsewire.protocol.close import is_valid_close_code
from pulsewire.protocol.events import CloseReceived
from pulsewire.protocol.headers import parse_extension_list

from .common import chunks, cut_points, fuzz_settings, mutated, parse_output

MAX_PENDING = 14 + 2**20
"""An incomplete frame held back whole: a control frame (at most 125 bytes of payload behind
a header of at most 14 bytes: 2, 8 of extended length, 4 of mask), or a final binary frame of
at most 1 MiB, which the parser takes in one pass once complete (``_WHOLE_FRAME``)."""
FAILURE_CODES = {1002, 1007, 1008, 1009}

SETTINGS = fuzz_settings(150)
both_parsers = pytest.mark.usefixtures("parser")


def codec_pair(client_nct: bool, server_nct: bool, bits: int | None):  # type: ignore[no-untyped-def]
    """(client codec, server codec) after a real permessage-deflate negotiation."""
    client_opts = DeflateOptions(
        client_no_context_takeover=client_nct,
        server_no_context_takeover=server_nct,
        client_max_window_bits=bits,
    )
    accepted = DeflateOptions().server_accept(parse_extension_list(client_opts.client_offer()))
    assert accepted is not None
    value, server_codec = accepted
    client_codec = client_opts.client_accept(parse_extension_list(value)[0][1])
    return client_codec, server_codec


configs = st.fixed_dictionaries(
    {
        "side": st.sampled_from([Side.SERVER, Side.CLIENT]),
        "deflate": st.booleans(),
        "client_nct": st.booleans(),
        "server_nct": st.booleans(),
        "bits": st.sampled_from([None, 9, 15]),
        "max_message_size": st.sampled_from([2**20, 1000, 64]),
        "max_fragments": st.sampled_from([4096, 3]),
    }
)


def pair(config: dict) -> tuple[Connection, Connection]:  # type: ignore[type-arg]
    """(sender, receiver): the receiver is on ``config["side"]``."""
    client_codec = server_codec = None
    if config["deflate"]:
        client_codec, server_codec = codec_pair(
            config["client_nct"], config["server_nct"], config["bits"]
        )
    limits = {
        "max_message_size": config["max_message_size"],
        "max_fragments": config["max_fragments"],
    }
    client = Connection(Side.CLIENT, deflate=client_codec, **limits)
    server = Connection(Side.SERVER, deflate=server_codec, **limits)
    return (client, server) if config["side"] is Side.SERVER else (server, client)


operation = st.one_of(
    st.tuples(
        st.just("message"),
        st.one_of(st.text(max_size=200), st.binary(max_size=300)),
        st.lists(st.integers(0, 300), max_size=4),
        st.sampled_from([None, True, False]),
    ),
    st.tuples(st.sampled_from(["ping", "pong"]), st.binary(max_size=125)),
    st.tuples(st.just("close"), st.sampled_from([1000, 1001, 1011, 4000]), st.text(max_size=20)),
)


def write(sender: Connection, ops: list[tuple]) -> bytes:  # type: ignore[type-arg]
    """What ``sender`` writes for ``ops`` (a Close ends the stream)."""
    for op in ops:
        kind = op[0]
        if kind == "message":
            _, data, cuts, compress = op
            bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
            pieces = [data[a:b] for a, b in pairwise(bounds)]
            for i, piece in enumerate(pieces):
                fin = i == len(pieces) - 1
                if i == 0 and isinstance(data, str):
                    sender.send_text(piece, fin=fin, compress=compress)
                elif i == 0:
                    sender.send_binary(piece, fin=fin, compress=compress)
                else:
                    sender.send_continuation(piece, fin=fin)
        elif kind == "ping":
            sender.send_ping(op[1])
        elif kind == "pong":
            sender.send_pong(op[1])
        else:
            sender.send_close(op[1], op[2][:20])
            break
    return b"".join(sender.data_to_send())


def check(receiver: Connection, data: bytes, cuts: list[int]) -> list[object]:
    """Feed ``data`` in chunks and check every invariant; returns the events."""
    limit = receiver.max_message_size
    events: list[object] = []
    for chunk in chunks(data, cuts):
        receiver.receive_data(chunk)  # must never raise
        assert receiver._input.held <= MAX_PENDING, receiver._input.held
        events += receiver.events_received()
    for event in events:
        if isinstance(event, (str, bytes)) and limit is not None:
            size = len(event.encode("utf-8")) if isinstance(event, str) else len(event)
            assert size <= limit
        else:
            assert isinstance(event, (Ping, Pong, CloseReceived, str, bytes)), event
    out = parse_output(b"".join(receiver.data_to_send()))
    masked = receiver.side is Side.CLIENT
    assert all(f.masked == masked for f in out)
    assert all(f.opcode in (0x8, 0xA) for f in out), out  # only pongs and the close
    failure = receiver.failure
    if failure is not None:
        assert isinstance(failure, ProtocolError)
        assert failure.code in FAILURE_CODES and is_valid_close_code(failure.code)
        assert receiver.state is State.CLOSED and receiver.close_transport
        assert out and out[-1].opcode == 0x8, "a failure sends a Close frame"
        assert int.from_bytes(out[-1].payload[:2], "big") == failure.code
        out[-1].payload[2:].decode("utf-8")  # the reason is valid UTF-8
        assert len(out[-1].payload) <= 125
        assert not any(isinstance(e, CloseReceived) for e in events)
    closes = [f for f in out if f.opcode == 0x8]
    assert len(closes) <= 1
    if receiver.state is State.CLOSED:
        receiver.receive_data(b"\x81\x85more garbage after the end")  # ignored, no error
        assert receiver.events_received() == [] and receiver.data_to_send() == []
    return events


@both_parsers
@SETTINGS
@given(configs, st.binary(max_size=600), cut_points)
def test_arbitrary_bytes(config, data, cuts):
    _, receiver = pair(config)
    check(receiver, data, cuts)


@both_parsers
@SETTINGS
@given(configs, st.lists(operation, max_size=6), cut_points, st.data())
def test_mutated_valid_streams(config, ops, cuts, data):
    sender, receiver = pair(config)
    stream = write(sender, ops)
    check(receiver, data.draw(mutated(stream)), cuts)


@both_parsers
@SETTINGS
@given(configs, st.lists(operation, max_size=6), cut_points)
def test_valid_streams_are_received_intact(config, ops, cuts):
    """The unmutated streams: every message within the limits arrives, nothing fails except
    on the limits (1008 fragments, 1009 size)."""
    sender, receiver = pair(config)
    events = check(receiver, write(sender, ops), cuts)
    if receiver.failure is not None:
        assert receiver.failure.code in (1008, 1009), receiver.failure
    else:
        sent = [op[1] for op in ops if op[0] == "message"]
        received = [e for e in events if isinstance(e, (str, bytes))]
        assert received == sent[: len(received)]


def test_non_minimal_length_encodings_are_held_back_up_to_139_bytes():
    """A Ping of 125 bytes with a 64-bit length field: 139 bytes, the whole frame is needed
    before it is handled, so up to 138 bytes wait in the buffer."""
    receiver = Connection(Side.SERVER)
    header = bytes([0x89, 0x80 | 127]) + (125).to_bytes(8, "big") + b"\x00\x00\x00\x00"
    receiver.receive_data(header + b"p" * 124)
    assert receiver._input.held == 138
    receiver.receive_data(b"p")
    assert receiver.events_received() == [Ping(b"p" * 125)]
    assert receiver._input.held == 0
