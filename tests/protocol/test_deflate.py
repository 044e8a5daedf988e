"""permessage-deflate (RFC 7692): negotiation both ways, the codec, and inflation limits."""

from __future__ import annotations

import os
import tracemalloc
import zlib

import pytest

from pulsewire.protocol import (
    Connection,
    DeflateOptions,
    NegotiationError,
    PerMessageDeflate,
    Ping,
    Side,
)
from pulsewire.protocol.deflate import deflate_options
from pulsewire.protocol.headers import parse_extension_list

from .helpers import BINARY, CONT, PING, TEXT, client, failed_with, frame, parse_frames, server

PMD = "permessage-deflate"


def offers(value: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    return parse_extension_list(value)


def response_params(value: str) -> dict[str, str | None]:
    ((name, params),) = parse_extension_list(value)
    assert name == PMD
    return dict(params)


def negotiate(
    client_opts: DeflateOptions, server_opts: DeflateOptions
) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    accepted = server_opts.server_accept(offers(client_opts.client_offer()))
    assert accepted is not None
    value, server_codec = accepted
    ((_, params),) = parse_extension_list(value)
    return client_opts.client_accept(params), server_codec


def pair(
    client_opts: DeflateOptions | None = None,
    server_opts: DeflateOptions | None = None,
    **limits: int | None,
) -> tuple[Connection, Connection]:
    ccodec, scodec = negotiate(client_opts or DeflateOptions(), server_opts or DeflateOptions())
    return client(deflate=ccodec, **limits), server(deflate=scodec, **limits)


def transfer(src: Connection, dst: Connection) -> tuple[list[object], list[bytes]]:
    """Move what ``src`` wrote to ``dst``: (events, raw frames as seen on the wire)."""
    data = b"".join(src.data_to_send())
    dst.receive_data(data)
    assert dst.failure is None, dst.failure
    return dst.events_received(), parse_frames(data)  # type: ignore[return-value]


# =============================================================================== negotiation


class TestServerNegotiation:
    def accept(
        self, value: str, **config: object
    ) -> tuple[dict[str, str | None], PerMessageDeflate]:
        accepted = DeflateOptions(**config).server_accept(offers(value))  # type: ignore[arg-type]
        assert accepted is not None, "offer declined"
        return response_params(accepted[0]), accepted[1]

    def declines(self, value: str, **config: object) -> bool:
        return DeflateOptions(**config).server_accept(offers(value)) is None  # type: ignore[arg-type]

    def test_plain_offer(self) -> None:
        params, codec = self.accept(PMD)
        assert params == {}
        assert not codec.local_no_context_takeover and not codec.remote_no_context_takeover
        assert (codec.local_max_window_bits, codec.remote_max_window_bits) == (15, 15)

    def test_server_no_context_takeover_is_echoed(self) -> None:
        params, codec = self.accept(f"{PMD}; server_no_context_takeover")
        assert params == {"server_no_context_takeover": None}
        assert codec.local_no_context_takeover
        assert not codec.remote_no_context_takeover

    def test_server_no_context_takeover_from_the_configuration(self) -> None:
        params, codec = self.accept(PMD, server_no_context_takeover=True)
        assert "server_no_context_takeover" in params
        assert codec.local_no_context_takeover

    def test_client_no_context_takeover(self) -> None:
        params, codec = self.accept(f"{PMD}; client_no_context_takeover")
        assert "client_no_context_takeover" in params
        assert codec.remote_no_context_takeover
        params, codec = self.accept(PMD, client_no_context_takeover=True)
        assert "client_no_context_takeover" in params
        assert codec.remote_no_context_takeover

    @pytest.mark.parametrize(
        ("asked", "config", "result"),
        [
            (10, None, 10),
            (13, 11, 11),
            (9, 11, 9),
            (15, None, 15),
            (8, None, 8),
            (None, 12, 12),
        ],
    )
    def test_server_max_window_bits(
        self, asked: int | None, config: int | None, result: int
    ) -> None:
        value = PMD if asked is None else f"{PMD}; server_max_window_bits={asked}"
        params, codec = self.accept(value, server_max_window_bits=config)
        assert params == {"server_max_window_bits": str(result)}
        assert codec.local_max_window_bits == result
        assert codec.remote_max_window_bits == 15

    def test_server_max_window_bits_needs_a_value(self) -> None:
        assert self.declines(f"{PMD}; server_max_window_bits")

    def test_client_max_window_bits_without_value_and_no_configuration(self) -> None:
        params, codec = self.accept(f"{PMD}; client_max_window_bits")
        assert params == {}
        assert codec.remote_max_window_bits == 15

    def test_client_max_window_bits_is_asked_when_offered(self) -> None:
        params, codec = self.accept(f"{PMD}; client_max_window_bits", client_max_window_bits=10)
        assert params == {"client_max_window_bits": "10"}
        assert codec.remote_max_window_bits == 10

    def test_client_max_window_bits_with_a_value(self) -> None:
        params, codec = self.accept(f"{PMD}; client_max_window_bits=12")
        assert params.get("client_max_window_bits") in ("12", None)
        params, codec = self.accept(f"{PMD}; client_max_window_bits=9", client_max_window_bits=12)
        assert params == {"client_max_window_bits": "9"}
        assert codec.remote_max_window_bits == 9

    def test_client_max_window_bits_is_never_sent_unless_offered(self) -> None:
        params, codec = self.accept(PMD, client_max_window_bits=10)
        assert "client_max_window_bits" not in params
        assert codec.remote_max_window_bits == 15

    @pytest.mark.parametrize(
        "param",
        [
            "server_max_window_bits=7",
            "server_max_window_bits=16",
            "server_max_window_bits=08",
            "server_max_window_bits=abc",
            "client_max_window_bits=7",
            "client_max_window_bits=16",
            'client_max_window_bits="1"',
            "server_no_context_takeover=1",
            "client_no_context_takeover=x",
            "unknown_param",
            "x=1",
            "server_no_context_takeover; server_no_context_takeover",
            "server_max_window_bits=10; server_max_window_bits=10",
            "client_max_window_bits; client_max_window_bits=10",
        ],
    )
    def test_invalid_offers_are_declined(self, param: str) -> None:
        assert self.declines(f"{PMD}; {param}")

    def test_next_offer_is_tried(self) -> None:
        params, _ = self.accept(
            f"{PMD}; unknown, {PMD}; server_max_window_bits, {PMD}; client_no_context_takeover"
        )
        assert params == {"client_no_context_takeover": None}

    def test_other_extensions_are_ignored(self) -> None:
        assert self.declines("x-webkit-deflate-frame")
        assert self.declines("")
        params, _ = self.accept(f"x-foo; a=1, {PMD}")
        assert params == {}


class TestClientNegotiation:
    def test_offers(self) -> None:
        assert DeflateOptions().client_offer() == f"{PMD}; client_max_window_bits"
        offer = DeflateOptions(
            server_no_context_takeover=True,
            client_no_context_takeover=True,
            server_max_window_bits=10,
            client_max_window_bits=11,
        ).client_offer()
        assert offers(offer) == [
            (
                PMD,
                [
                    ("server_no_context_takeover", None),
                    ("client_no_context_takeover", None),
                    ("server_max_window_bits", "10"),
                    ("client_max_window_bits", "11"),
                ],
            )
        ]

    def accept(self, response: str, **config: object) -> PerMessageDeflate:
        return DeflateOptions(**config).client_accept(response_params_list(response))  # type: ignore[arg-type]

    def test_plain_response(self) -> None:
        codec = self.accept(PMD)
        assert (codec.local_max_window_bits, codec.remote_max_window_bits) == (15, 15)
        assert not codec.local_no_context_takeover and not codec.remote_no_context_takeover

    def test_response_with_every_parameter(self) -> None:
        codec = self.accept(
            f"{PMD}; server_no_context_takeover; client_no_context_takeover; "
            "server_max_window_bits=10; client_max_window_bits=9"
        )
        assert codec.remote_no_context_takeover and codec.local_no_context_takeover
        assert (codec.local_max_window_bits, codec.remote_max_window_bits) == (9, 10)

    def test_server_must_echo_server_no_context_takeover(self) -> None:
        with pytest.raises(NegotiationError):
            self.accept(PMD, server_no_context_takeover=True)
        codec = self.accept(f"{PMD}; server_no_context_takeover", server_no_context_takeover=True)
        assert codec.remote_no_context_takeover

    def test_client_no_context_takeover_from_the_configuration(self) -> None:
        assert self.accept(PMD, client_no_context_takeover=True).local_no_context_takeover

    def test_server_max_window_bits_must_be_honoured(self) -> None:
        with pytest.raises(NegotiationError):
            self.accept(PMD, server_max_window_bits=10)
        with pytest.raises(NegotiationError):
            self.accept(f"{PMD}; server_max_window_bits=11", server_max_window_bits=10)
        codec = self.accept(f"{PMD}; server_max_window_bits=9", server_max_window_bits=10)
        assert codec.remote_max_window_bits == 9

    def test_client_max_window_bits_above_the_offer(self) -> None:
        with pytest.raises(NegotiationError):
            self.accept(f"{PMD}; client_max_window_bits=12", client_max_window_bits=10)
        assert (
            self.accept(
                f"{PMD}; client_max_window_bits=10", client_max_window_bits=12
            ).local_max_window_bits
            == 10
        )

    @pytest.mark.parametrize(
        "param",
        [
            "server_max_window_bits",
            "client_max_window_bits",
            "server_max_window_bits=7",
            "server_max_window_bits=16",
            "client_max_window_bits=16",
            "client_max_window_bits=0",
            "unknown",
            "server_no_context_takeover=1",
            "client_no_context_takeover; client_no_context_takeover",
            "server_max_window_bits=10; server_max_window_bits=11",
        ],
    )
    def test_invalid_responses(self, param: str) -> None:
        with pytest.raises(NegotiationError):
            self.accept(f"{PMD}; {param}")

    @pytest.mark.parametrize("bits", range(8, 16))
    def test_every_window_size_negotiates(self, bits: int) -> None:
        ccodec, scodec = negotiate(
            DeflateOptions(server_max_window_bits=bits, client_max_window_bits=bits),
            DeflateOptions(client_max_window_bits=bits),
        )
        assert ccodec.local_max_window_bits == scodec.remote_max_window_bits == bits
        assert ccodec.remote_max_window_bits == scodec.local_max_window_bits == bits


def response_params_list(value: str) -> list[tuple[str, str | None]]:
    ((name, params),) = parse_extension_list(value)
    assert name == PMD
    return params


def test_options_validation() -> None:
    for kwargs in (
        {"server_max_window_bits": 7},
        {"client_max_window_bits": 16},
        {"window_bits": 8},
        {"level": 10},
        {"mem_level": 0},
    ):
        with pytest.raises(ValueError):
            DeflateOptions(**kwargs)  # type: ignore[arg-type]


def test_deflate_options_setting() -> None:
    assert deflate_options(None) is None
    assert deflate_options("deflate") == DeflateOptions()
    opts = DeflateOptions(level=1)
    assert deflate_options(opts) is opts
    with pytest.raises(ValueError):
        deflate_options("gzip")


# =============================================================================== the codec

COMPRESSIBLE = "The quick brown fox jumps over the lazy dog. " * 40


@pytest.mark.parametrize("direction", ["client->server", "server->client"])
def test_round_trip(direction: str) -> None:
    cli, srv = pair()
    src, dst = (cli, srv) if direction == "client->server" else (srv, cli)
    src.send_text(COMPRESSIBLE)
    src.send_binary(COMPRESSIBLE.encode())
    src.send_text("")
    src.send_binary(b"")
    events, wire = transfer(src, dst)
    assert events == [COMPRESSIBLE, COMPRESSIBLE.encode(), "", b""]
    assert wire[0].rsv1 and wire[1].rsv1
    assert len(wire[0].payload) < len(COMPRESSIBLE) // 10


@pytest.mark.parametrize(
    ("client_opts", "server_opts", "client_resets", "server_resets"),
    [
        (DeflateOptions(), DeflateOptions(), False, False),
        (DeflateOptions(client_no_context_takeover=True), DeflateOptions(), True, False),
        (DeflateOptions(server_no_context_takeover=True), DeflateOptions(), False, True),
        (
            DeflateOptions(),
            DeflateOptions(server_no_context_takeover=True, client_no_context_takeover=True),
            True,
            True,
        ),
    ],
    ids=["takeover", "client-nct", "server-nct", "both-nct"],
)
def test_context_takeover(
    client_opts: DeflateOptions,
    server_opts: DeflateOptions,
    client_resets: bool,
    server_resets: bool,
) -> None:
    message = os.urandom(300).hex()  # compressible only against an earlier copy of itself
    cli, srv = pair(client_opts, server_opts)
    for src, dst, resets in ((cli, srv, client_resets), (srv, cli, server_resets)):
        for _ in range(3):
            src.send_text(message)
        events, wire = transfer(src, dst)
        assert events == [message] * 3
        sizes = [len(f.payload) for f in wire]
        if resets:
            assert sizes[0] == sizes[1] == sizes[2]
        else:
            assert sizes[1] < sizes[0] // 4 and sizes[2] < sizes[0] // 4


def test_per_message_opt_out() -> None:
    cli, srv = pair()
    cli.send_text(COMPRESSIBLE, compress=False)
    cli.send_text(COMPRESSIBLE)
    cli.send_binary(b"x" * 100, compress=False)
    events, wire = transfer(cli, srv)
    assert events == [COMPRESSIBLE, COMPRESSIBLE, b"x" * 100]
    assert [f.rsv1 for f in wire] == [False, True, False]
    assert wire[0].payload == COMPRESSIBLE.encode()


def test_opt_in_without_deflate_is_ignored() -> None:
    conn = server()
    conn.send_text("abc", compress=True)
    (wire,) = parse_frames(b"".join(conn.data_to_send()))
    assert not wire.rsv1 and wire.payload == b"abc"


@pytest.mark.parametrize("side", ["client", "server"])
def test_incompressible_data_is_sent_raw_without_context_takeover(side: str) -> None:
    opts = DeflateOptions(client_no_context_takeover=True, server_no_context_takeover=True)
    cli, srv = pair(opts, opts)
    src, dst = (cli, srv) if side == "client" else (srv, cli)
    noise = os.urandom(2000)
    src.send_binary(noise)
    src.send_text(COMPRESSIBLE)
    src.send_binary(noise)
    events, wire = transfer(src, dst)
    assert events == [noise, COMPRESSIBLE, noise]
    assert [f.rsv1 for f in wire] == [False, True, False]
    assert wire[0].payload == noise


def test_incompressible_data_is_compressed_with_context_takeover() -> None:
    # The compressor's history now holds the data: the message must go compressed.
    cli, srv = pair()
    noise = os.urandom(2000)
    cli.send_binary(noise)
    cli.send_binary(noise)
    events, wire = transfer(cli, srv)
    assert events == [noise, noise]
    assert wire[0].rsv1 and wire[1].rsv1
    assert len(wire[1].payload) < 100


def test_threshold() -> None:
    cli, srv = pair(DeflateOptions(threshold=100))
    cli.send_text("a" * 99)
    cli.send_text("a" * 100)
    cli.send_text("a" * 10, compress=True)
    events, wire = transfer(cli, srv)
    assert events == ["a" * 99, "a" * 100, "a" * 10]
    assert [f.rsv1 for f in wire] == [False, True, True]


def test_fragmented_compressed_message_with_interleaved_ping() -> None:
    cli, srv = pair()
    cli.send_text("part one " * 50, fin=False)
    cli.send_ping(b"hi")
    cli.send_continuation("part two " * 50, fin=False)
    cli.send_continuation("end", fin=True)
    events, wire = transfer(cli, srv)
    assert events == [Ping(b"hi"), "part one " * 50 + "part two " * 50 + "end"]
    assert [(f.opcode, f.rsv1) for f in wire] == [
        (TEXT, True),
        (PING, False),
        (CONT, False),
        (CONT, False),
    ]


def test_fragmented_message_sent_uncompressed() -> None:
    cli, srv = pair()
    cli.send_binary(b"a" * 100, fin=False, compress=False)
    cli.send_continuation(b"b" * 100, fin=True)
    events, wire = transfer(cli, srv)
    assert events == [b"a" * 100 + b"b" * 100]
    assert [f.payload for f in wire] == [b"a" * 100, b"b" * 100]


def test_server_max_window_bits_8_is_accepted_and_server_sends_uncompressed() -> None:
    cli, srv = pair(DeflateOptions(server_max_window_bits=8), DeflateOptions())
    assert srv.deflate is not None and srv.deflate.local_max_window_bits == 8
    srv.send_text(COMPRESSIBLE)
    srv.send_text(COMPRESSIBLE, compress=True)
    events, wire = transfer(srv, cli)
    assert events == [COMPRESSIBLE, COMPRESSIBLE]
    assert [f.rsv1 for f in wire] == [False, False]
    # The other direction still compresses.
    cli.send_text(COMPRESSIBLE)
    events, wire = transfer(cli, srv)
    assert events == [COMPRESSIBLE] and wire[0].rsv1


def test_client_max_window_bits_8_makes_the_client_send_uncompressed() -> None:
    cli, srv = pair(DeflateOptions(), DeflateOptions(client_max_window_bits=8))
    cli.send_text(COMPRESSIBLE)
    events, wire = transfer(cli, srv)
    assert events == [COMPRESSIBLE] and not wire[0].rsv1
    srv.send_text(COMPRESSIBLE)
    events, wire = transfer(srv, cli)
    assert events == [COMPRESSIBLE] and wire[0].rsv1


@pytest.mark.parametrize("bits", [9, 10, 12, 15])
def test_small_windows_round_trip(bits: int) -> None:
    cli, srv = pair(
        DeflateOptions(server_max_window_bits=bits, client_max_window_bits=bits, window_bits=15),
        DeflateOptions(window_bits=15),
    )
    data = bytes(range(256)) * 300 + os.urandom(3000) * 3
    for src, dst in ((cli, srv), (srv, cli)):
        src.send_binary(data)
        src.send_binary(data)
        events, wire = transfer(src, dst)
        assert events == [data, data]
        assert all(f.rsv1 for f in wire)


def test_message_compressed_with_a_final_block() -> None:
    # RFC 7692 7.2.3.4: a message may end its deflate stream with BFINAL set.
    srv = server(deflate=PerMessageDeflate())
    for text in ("first " * 20, "second " * 20):
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        payload = comp.compress(text.encode()) + comp.flush(zlib.Z_FINISH)
        srv.receive_data(frame(TEXT, payload, rsv1=True))
    assert srv.failure is None
    assert srv.events_received() == ["first " * 20, "second " * 20]


def test_corrupt_compressed_data_is_1007() -> None:
    srv = server(deflate=PerMessageDeflate())
    srv.receive_data(frame(BINARY, b"\xff\xff\xff\xff garbage", rsv1=True))
    assert failed_with(srv) == 1007


def test_compressed_invalid_utf8_is_1007() -> None:
    cli, srv = pair()
    cli.send_text(b"valid then \xff invalid")  # bytes are sent as they are
    srv.receive_data(b"".join(cli.data_to_send()))
    assert failed_with(srv) == 1007


# =============================================================================== size limits


def test_inflated_size_at_and_over_the_limit() -> None:
    cli, srv = pair(max_message_size=10_000)
    cli.send_binary(b"a" * 10_000)
    events, _ = transfer(cli, srv)
    assert events == [b"a" * 10_000]
    cli.send_binary(b"a" * 10_001)
    srv.receive_data(b"".join(cli.data_to_send()))
    assert failed_with(srv) == 1009


def test_inflated_fragments_count_against_one_limit() -> None:
    cli, srv = pair(max_message_size=10_000)
    cli.send_binary(b"a" * 6000, fin=False)
    cli.send_continuation(b"b" * 6000, fin=True)
    srv.receive_data(b"".join(cli.data_to_send()))
    assert failed_with(srv) == 1009


def _bomb(megabytes: int) -> bytes:
    """A raw deflate stream of ``megabytes`` MiB of zeros (about 1 KB per MiB)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(2**20)
    first = comp.compress(zeros) + comp.flush(zlib.Z_SYNC_FLUSH)
    steady = comp.compress(zeros) + comp.flush(zlib.Z_SYNC_FLUSH)
    # Each later MiB compresses to the same bytes: repeat them instead of compressing again.
    return (first + steady * (megabytes - 1))[:-4]


def test_the_bomb_is_real() -> None:
    dec = zlib.decompressobj(-15)
    assert len(dec.decompress(_bomb(8) + b"\x00\x00\xff\xff")) == 8 * 2**20


def test_small_decompression_bomb() -> None:
    limit = 2**20
    bomb = _bomb(8)  # about 8 KB that inflate to 8 MiB
    assert len(bomb) < 10_000
    conn = Connection(Side.CLIENT, deflate=PerMessageDeflate(), max_message_size=limit)
    data = frame(BINARY, bomb, rsv1=True, mask=None)
    tracemalloc.start()
    try:
        conn.receive_data(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert failed_with(conn) == 1009
    assert conn.events_received() == []
    assert peak < 4 * 2**20


def test_gigabyte_decompression_bomb() -> None:
    limit = 2**20
    bomb = _bomb(1000)  # about 1 MB that inflate to 1000 MiB (deflate tops out near 1:1000)
    assert len(bomb) < limit  # so only inflation can exceed the limit
    conn = server(deflate=PerMessageDeflate(), max_message_size=limit)
    data = frame(BINARY, bomb, rsv1=True)
    tracemalloc.start()
    try:
        for i in range(0, len(data), 65536):  # as a socket delivers it
            conn.receive_data(data[i : i + 65536])
            if conn.failure is not None:
                break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert failed_with(conn) == 1009
    # zlib's output buffer briefly holds the output twice: O(limit), never O(1 GB).
    assert peak < 4 * 2**20
