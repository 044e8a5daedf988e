"""The cheap side of the benchmark driver: draining connections (fanout_hub.HubConn with
``draining``) count frames without decoding them and still answer pings, and
backpressure.py's sampled subscribers are spread over the subscription order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from .test_smoke import load


def frame(payload: bytes, opcode: int = 1) -> bytes:
    """A server frame (not masked)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + payload


def unmask(data: bytes) -> tuple[int, bytes]:
    """A client frame's opcode and payload (short frames only)."""
    n = data[1] & 0x7F
    key, body = data[2:6], data[6 : 6 + n]
    return data[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(body))


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


class Owner:
    def __init__(self) -> None:
        self.frames = 0
        self.messages: list[bytes] = []

    def drained(self, conn: Any, frames: int, now: float) -> None:
        self.frames += frames

    def message(self, conn: Any, payload: bytes, now: float) -> None:
        self.messages.append(payload)


def draining(conn_class: Any, owner: Any) -> tuple[Any, Transport]:
    conn = conn_class(owner, 0, b"hello", 0)
    transport = Transport()
    conn.transport, conn.open, conn.draining = transport, True, True
    conn.ready.set_result(None)
    return conn, transport


def test_a_draining_connection_counts_text_frames_and_answers_pings() -> None:
    hub = load("fanout_hub")

    async def scenario() -> None:
        owner = Owner()
        conn, transport = draining(hub.HubConn, owner)
        stream = (
            frame(b'{"push":1}')
            + frame(b"x" * 300)  # 16-bit length
            + frame(b"p1", opcode=9)
            + frame(b"y" * 70_000)  # 64-bit length
            + frame(b'{"push":2}')
        )
        for i in range(0, len(stream), 7):  # frames and headers split across reads
            conn.data_received(stream[i : i + 7])
        assert conn.count == owner.frames == 4
        assert owner.messages == []  # nothing decoded
        assert [unmask(w) for w in transport.written] == [(0xA, b"p1")]
        assert conn.buf == b""
        conn.data_received(frame(b"", opcode=8))
        assert transport.closed

    asyncio.run(scenario())


def test_a_draining_socketio_connection_answers_engineio_pings_without_counting_them() -> None:
    peers = load("hub_peers")

    async def scenario() -> None:
        owner = Owner()
        conn, transport = draining(peers.SocketIOConn, owner)
        conn.data_received(frame(b'42["pub",{}]') + frame(b"2") + frame(b'42["pub",{}]'))
        assert conn.count == owner.frames == 2
        assert [unmask(w) for w in transport.written] == [(1, b"3")]

    asyncio.run(scenario())


def test_publications_in_the_read_that_completes_the_connect_are_counted_as_drained() -> None:
    bench = load("backpressure")
    hub = load("fanout_hub")

    async def scenario() -> None:
        receipts = bench.Receipts(0, bench.hub_data)
        conn = hub.HubConn(receipts, 0, b"hello", 0)
        conn.transport, conn.draining = Transport(), True
        data = b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + frame(b'{"id":1,"result":{}}')
        pub = json.dumps({"push": {"channel": "c", "pub": {"data": {"s": 1, "k": 1, "t": 0}}}})
        conn.data_received(data + frame(pub.encode()))
        assert conn.ready.done() and conn.count == receipts.frames == 1
        conn.data_received(frame(pub.encode()))  # from now on the cheap path
        assert conn.count == receipts.frames == 2
        assert receipts.records == {}  # a draining subscriber decodes nothing
        assert sum(receipts.bins.values()) == 2

    asyncio.run(scenario())


def test_sampled_subscribers_are_spread_over_the_subscription_order() -> None:
    bench = load("backpressure")
    assert bench.sample_indexes(1000, 5) == [0, 250, 500, 749, 999]
    assert bench.sample_indexes(3, 10) == [0, 1, 2]
    assert bench.sample_indexes(10, 1) == [0]
    settings = bench.Settings(subscribers=2000, sampled=40, client_procs=2)
    assert bench.sample_split(settings) == [20, 20]


def test_the_drained_check_counts_what_each_draining_subscriber_missed() -> None:
    bench = load("backpressure")
    tallies = {"1": {"accepted": 3}, "2": {"accepted": 2}}
    parts = [{"drained": [5, 4]}, {"drained": [5, 6]}]
    check = bench.drained_check(tallies, parts)
    assert check == {
        "draining_subscribers": 4,
        "drained_missing": 1,
        "drained_extra": 1,
        "drained_fewest": 4,
    }


def test_backlog_figures_are_the_median_and_max_of_the_step_samples() -> None:
    bench = load("backpressure")
    kib = 1024
    samples = [(0.5, 9 * kib), (1.0, 1 * kib), (1.5, 3 * kib), (2.0, 2 * kib), (3.0, 99 * kib)]
    figures = bench.backlog_figures(samples, 1.0, 3.0)  # the sample at 3.0 is past the end
    assert figures == {"driver_unread_median_kib": 2, "driver_unread_max_kib": 3}
    assert bench.backlog_figures(samples, 4.0, 5.0)["driver_unread_median_kib"] is None


def test_a_status_line_reports_the_worst_loop_lag_since_the_last_one() -> None:
    bench = load("backpressure")
    receipts = bench.Receipts(1, bench.hub_data)
    receipts.frames, receipts.lag_ms = 7, 12.5
    assert receipts.status() == "STATUS 0 0.0 0 7 12.5"
    assert receipts.status() == "STATUS 0 0.0 0 7 0.0"
