"""A libFuzzer-style harness (atheris) for the frame parser: ``Connection.receive_data``.

Not part of CI (pytest does not collect it). Coverage-guided, it complements the Hypothesis
tests next to it; see docs/fuzzing.md::

    .venv/bin/pip install atheris
    mkdir -p /tmp/pw-corpus
    .venv/bin/python tests/fuzz/atheris_frames.py --make-corpus /tmp/pw-corpus
    PULSEWIRE_NO_EXTENSIONS=1 .venv/bin/python tests/fuzz/atheris_frames.py \\
        -max_total_time=600 -max_len=4096 /tmp/pw-corpus

The first input byte picks the configuration (side, permessage-deflate and its parameters,
message and fragment limits), the next ones where the input is cut into ``receive_data``
calls; the rest is the byte stream. A violated invariant raises AssertionError, which atheris
reports as a crash with the input that caused it (replay: run the script with the file).
With ``PULSEWIRE_NO_EXTENSIONS=1`` the pure-Python receive path is fuzzed (and instrumented
for coverage); without it the C fast path is exercised, uninstrumented.
"""

from __future__ import annotations

import os
import struct
import sys

import atheris

with atheris.instrument_imports(include=["pulsewire"]):
    from pulsewire.protocol import Connection, DeflateOptions, ProtocolError, Side, State
    from pulsewire.protocol.close import is_valid_close_code
    from pulsewire.protocol.headers import parse_extension_list

MAX_PENDING = 14 + 125
LIMITS = (1 << 20, 1000, 64, 0)


def make_connection(config: int) -> Connection:
    side = Side.SERVER if config & 1 else Side.CLIENT
    codec = None
    if config & 2:
        offer = DeflateOptions(
            client_no_context_takeover=bool(config & 4),
            server_no_context_takeover=bool(config & 8),
            client_max_window_bits=9 if config & 16 else None,
        )
        accepted = DeflateOptions().server_accept(parse_extension_list(offer.client_offer()))
        assert accepted is not None
        value, server_codec = accepted
        client_codec = offer.client_accept(parse_extension_list(value)[0][1])
        codec = server_codec if side is Side.SERVER else client_codec
    limit = LIMITS[(config >> 5) & 3] or None
    fragments = 3 if config & 128 else 4096
    return Connection(side, max_message_size=limit, max_fragments=fragments, deflate=codec)


def output_frames(data: bytes) -> list[tuple[int, bytes]]:
    frames = []
    pos = 0
    while pos < len(data):
        b1 = data[pos + 1]
        length = b1 & 0x7F
        head = 2
        if length == 126:
            length, head = struct.unpack_from("!H", data, pos + 2)[0], 4
        elif length == 127:
            length, head = struct.unpack_from("!Q", data, pos + 2)[0], 10
        mask = data[pos + head : pos + head + 4] if b1 & 0x80 else None
        head += 4 if mask else 0
        payload = data[pos + head : pos + head + length]
        assert len(payload) == length, "truncated output frame"
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        frames.append((data[pos] & 0x0F, payload))
        pos += head + length
    return frames


def TestOneInput(data: bytes) -> None:
    if len(data) < 3:
        return
    conn = make_connection(data[0])
    cuts = sorted({data[1] * 7 % (len(data) + 1), data[2] * 13 % (len(data) + 1)})
    stream = data[3:]
    limit = conn.max_message_size
    start = 0
    for cut in [*cuts, len(stream)]:
        conn.receive_data(stream[start:cut])  # must never raise
        start = max(start, cut)
        assert conn._input.held <= MAX_PENDING
        for event in conn.events_received():
            if isinstance(event, (bytes, str)) and limit is not None:
                size = len(event.encode()) if isinstance(event, str) else len(event)
                assert size <= limit
    frames = output_frames(b"".join(conn.data_to_send()))
    assert all(opcode in (0x8, 0xA) for opcode, _ in frames)
    if conn.failure is not None:
        assert isinstance(conn.failure, ProtocolError)
        assert is_valid_close_code(conn.failure.code)
        assert conn.state is State.CLOSED and conn.close_transport
        assert frames and frames[-1][0] == 0x8
        assert int.from_bytes(frames[-1][1][:2], "big") == conn.failure.code


def make_corpus(directory: str) -> None:
    """Seed inputs: valid frame streams written by a real peer, for each configuration."""
    for config in range(0, 256, 3):
        receiver = make_connection(config)
        sender_side = Side.CLIENT if receiver.side is Side.SERVER else Side.SERVER
        sender = Connection(sender_side, deflate=receiver.deflate and make_peer_codec(config))
        sender.send_text("hello, world " * (config % 5))
        sender.send_binary(bytes(range(config % 200)), fin=False)
        sender.send_ping(b"ping")
        sender.send_continuation(b"tail", fin=True)
        sender.send_close(1000, "bye")
        stream = b"".join(sender.data_to_send())
        with open(os.path.join(directory, f"seed-{config:03d}"), "wb") as fh:
            fh.write(bytes([config, 17, 91]) + stream)


def make_peer_codec(config: int):  # type: ignore[no-untyped-def]
    offer = DeflateOptions(
        client_no_context_takeover=bool(config & 4),
        server_no_context_takeover=bool(config & 8),
        client_max_window_bits=9 if config & 16 else None,
    )
    value, server_codec = DeflateOptions().server_accept(  # type: ignore[misc]
        parse_extension_list(offer.client_offer())
    )
    client_codec = offer.client_accept(parse_extension_list(value)[0][1])
    return client_codec if config & 1 else server_codec


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--make-corpus":
        make_corpus(sys.argv[2])
    else:
        atheris.Setup(sys.argv, TestOneInput)
        atheris.Fuzz()
