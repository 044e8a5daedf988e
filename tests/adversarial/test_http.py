"""Issue #10's rows on the HTTP front door and the HTTP transports, and more of the same kind,
run against real ``pulsewire serve`` processes at their default limits from one address.

Each test runs the attack from :data:`ATTACKER`, keeps a probe client (another address)
served throughout, holds the RSS growth under the limit, asserts the refusal's status and its
metric, and records its figures. (The ``GET *`` row is in ``test_auth.py``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest

from .conftest import (
    API_KEY,
    ATTACKER,
    PUBLISHER,
    Metrics,
    Node,
    http,
    record,
    rss_watch,
)
from .http_clients import JSON, Conn, LongPoll, Sse, connect_and_subscribe, request

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20
JS_SIZE = 37_000  # about the size of /pulsewire.js


async def served_meanwhile(p: Any, rounds: int = 3) -> None:
    """Let the probe do ``rounds`` more rounds before the attack's block ends."""
    target = p.rounds + rounds
    deadline = time.monotonic() + 30
    while p.rounds < target and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def until(n: Node, check: Any, timeout: float) -> Metrics:
    """Scrape until ``check(metrics)`` holds (or fail after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = await n.metrics()
        if check(metrics):
            return metrics
        assert time.monotonic() < deadline, "the node's metrics never showed it"
        await asyncio.sleep(0.25)


async def publish(n: Node, channel: str, data: Any) -> None:
    answer = await http(
        n.port,
        "POST",
        "/api/publish",
        body=json.dumps({"channel": channel, "data": data}).encode(),
        headers=[*JSON, ("Authorization", f"apikey {API_KEY}")],
        source=PUBLISHER,
    )
    assert answer.status == 200, answer


# --------------------------------------- row: ~10,000 pipelined GETs, never read


async def test_pipelined_gets_never_read(node, probe) -> None:
    """10,000 ``GET /pulsewire.js`` (377 MB of answers) on one connection that reads nothing:
    the node answers what the kernel's buffers take, then no more until the peer reads; past
    ``send_timeout`` (30 s) it aborts the connection."""
    n = await node("serve")
    before = await n.metrics()
    async with probe(n) as p, rss_watch(n) as rss:
        conn = await Conn.open(n.port, ATTACKER, rcvbuf=4096, limit=4096)
        conn.send(request("GET", "/pulsewire.js") * 10_000)
        started = time.monotonic()
        after = await until(
            n, lambda m: m.delta(before, "pulsewire_http_timeouts_total", phase="send"), 60
        )
        aborted_after = time.monotonic() - started
        await served_meanwhile(p)
    rss.check()
    conn.reset()
    assert 25 < aborted_after < 45, aborted_after  # the default send_timeout: 30 s
    assert after.delta(before, "pulsewire_http_timeouts_total", phase="send") == 1
    held = after.value("pulsewire_held_bytes")
    assert held < MiB, held  # nothing of it is left once the connection is gone
    record(
        "pipelined_gets_never_read",
        requests=10_000,
        aborted_after_s=round(aborted_after, 1),
        **rss.figures(),
        **p.figures(),
    )


async def test_many_connections_pipelining_and_never_reading(node, probe) -> None:
    """The same from 50 connections with 150 GETs each (5.6 MB of answers per connection,
    past the 3 MB or so that the kernel's socket buffers take on loopback): each holds one
    answer not taken and what one read brought in."""
    n = await node("serve")
    before = await n.metrics()
    conns = []
    async with probe(n) as p, rss_watch(n) as rss:
        for _ in range(50):
            conn = await Conn.open(n.port, ATTACKER, rcvbuf=4096, limit=4096)
            conn.send(request("GET", "/pulsewire.js") * 150)
            conns.append(conn)
        await n.settle()
        during = await n.metrics()
        await served_meanwhile(p)
    rss.check()
    for conn in conns:
        conn.reset()
    held = during.value("pulsewire_held_bytes")
    assert held < 50 * (JS_SIZE + 16 * 1024), held  # an answer and a read per connection
    record(
        "many_pipelining_connections",
        connections=50,
        held_mib=round(held / MiB, 1),
        pauses=during.delta(before, "pulsewire_budget_pauses_total"),
        over_budget=during.delta(before, "pulsewire_budget_exceeded_total", scope="address"),
        **rss.figures(),
        **p.figures(),
    )


# ------------------------------------------------------ row: a body dripping 1 byte / 2 s


async def test_a_body_dripping_one_byte_every_two_seconds_is_408(node, probe) -> None:
    n = await node("serve")
    before = await n.metrics()
    async with probe(n) as p, rss_watch(n) as rss:
        conn = await Conn.open(n.port, ATTACKER)
        auth = [*JSON, ("Authorization", f"apikey {API_KEY}")]
        await conn.send_all(request("POST", "/api/publish", headers=auth, length=1000))
        started = time.monotonic()

        async def drip() -> None:
            while True:
                with contextlib.suppress(ConnectionError):
                    await conn.send_all(b" ")
                await asyncio.sleep(2)

        dripping = asyncio.ensure_future(drip())
        try:
            answer = await conn.answer(timeout=25)  # the table: "still open after 25 s"
        finally:
            dripping.cancel()
        elapsed = time.monotonic() - started
        assert await conn.closed_by_server()
        await served_meanwhile(p)
    rss.check()
    assert answer.status == 408
    assert answer.body == b"request body too slow: under 1024 bytes/s over 5 s\n"
    after = await n.metrics()
    assert after.delta(before, "pulsewire_refusals_total", status="408") == 1
    assert after.delta(before, "pulsewire_http_timeouts_total", phase="body") == 1
    record("slow_body_drip", answered_after_s=round(elapsed, 1), **rss.figures(), **p.figures())


async def test_300_bodies_each_1_mib_short_then_dripping(node, probe) -> None:
    """300 connections each send all but 1 KiB of a 1 MiB body, then a byte every 2 s: the
    address's hard limit (32 MiB) refuses the connections that would hold more (503), the
    rest end at the body's minimum rate (408)."""
    n = await node("serve")
    before = await n.metrics()
    statuses: list[int] = []
    head = request("POST", "/api/publish", headers=JSON, length=MiB)

    async def attack(conn: Conn) -> None:
        try:
            conn.send(head + b" " * (MiB - 1024))
            answer = asyncio.ensure_future(conn.answer(timeout=30))
            while not answer.done():
                with contextlib.suppress(ConnectionError):
                    conn.send(b" ")
                await asyncio.wait({answer}, timeout=2)
            statuses.append(answer.result().status)
        except (ConnectionError, asyncio.IncompleteReadError):
            statuses.append(0)  # reset by the node after its answer (lingering close ended)
        finally:
            conn.reset()

    async with probe(n) as p, rss_watch(n) as rss:
        attacks = []
        for i in range(300):
            if i >= 190:
                await asyncio.sleep(1 / 45)  # under the rate of new connections per address
            attacks.append(asyncio.ensure_future(attack(await Conn.open(n.port, ATTACKER))))
        await asyncio.gather(*attacks)
        await served_meanwhile(p)
    rss.check()
    after = await n.metrics()
    refused = statuses.count(503)
    assert refused > 200, statuses  # most never fit in the address's budget
    assert statuses.count(408) > 10, statuses
    assert set(statuses) <= {408, 503, 0}, statuses
    assert after.delta(before, "pulsewire_budget_exceeded_total", scope="address") >= refused
    assert after.delta(before, "pulsewire_refusals_total", status="503") >= refused
    assert after.delta(before, "pulsewire_refusals_total", status="408") == statuses.count(408)
    record(
        "bodies_1_mib_short",
        connections=300,
        answered_503=refused,
        answered_408=statuses.count(408),
        **rss.figures(),
        **p.figures(),
    )


# ------------------------------------- row: 20,160 long-poll sessions over 4 connections


async def test_20160_longpoll_sessions_over_4_keep_alive_connections(node, probe) -> None:
    """Each long-poll session takes a connection slot and a token of the address's rate of
    new connections: past the burst, opens are refused with 429 (and 503 past the cap)."""
    n = await node("serve")
    before = await n.metrics()
    statuses: dict[int, int] = {}
    open_request = request("POST", "/connection/longpoll/open")

    async def opener(conn: Conn, count: int) -> None:
        batch = 120
        for done in range(0, count, batch):
            size = min(batch, count - done)
            conn.send(open_request * size)
            for _ in range(size):
                status = (await conn.answer()).status
                statuses[status] = statuses.get(status, 0) + 1

    async with probe(n) as p, rss_watch(n) as rss:
        conns = [await Conn.open(n.port, ATTACKER) for _ in range(4)]
        for conn in conns:  # admitted (each took a token) before the sessions take the rest
            assert (await conn.call(request("GET", "/health"))).status == 200
        started = time.monotonic()
        await asyncio.gather(*(opener(conn, 5040) for conn in conns))
        elapsed = time.monotonic() - started
        during = await n.metrics()
        await served_meanwhile(p)
    rss.check()
    for conn in conns:
        conn.close()
    accepted = statuses.get(200, 0)
    assert sum(statuses.values()) == 20_160
    assert set(statuses) <= {200, 429, 503}, statuses
    # the burst (200 tokens, 4 of them taken by the connections) and 50/s afterwards
    assert accepted <= 196 + 50 * elapsed + 10, (accepted, elapsed)
    assert accepted + 4 <= 1000
    assert during.value("pulsewire_session_slots") == accepted
    assert during.value("pulsewire_connections", transport="longpoll") == accepted
    for status in (429, 503):
        assert during.delta(before, "pulsewire_refusals_total", status=str(status)) == (
            statuses.get(status, 0)
        )
    record(
        "longpoll_sessions_4_connections",
        attempted=20_160,
        accepted=accepted,
        refused_429=statuses.get(429, 0),
        refused_503=statuses.get(503, 0),
        seconds=round(elapsed, 1),
        **rss.figures(),
        **p.figures(),
    )


# --------------------------- row: 600 pipelined requests and a split one over 16 KiB


async def test_600_pipelined_requests_and_a_split_one_in_one_read(node, probe) -> None:
    n = await node("serve")
    before = await n.metrics()
    async with probe(n) as p, rss_watch(n) as rss:
        conn = await Conn.open(n.port, ATTACKER)
        requests = b"".join(request("GET", f"/health?n={i}") for i in range(600))
        split = request("GET", "/health?n=600")
        assert len(requests) > 16 * 1024
        await conn.send_all(requests + split[:25])
        statuses = [(await conn.answer()).status for _ in range(600)]
        await conn.send_all(split[25:])
        statuses.append((await conn.answer()).status)
        conn.close()
        await served_meanwhile(p)
    rss.check()
    assert statuses == [200] * 601
    after = await n.metrics()
    assert after.delta(before, "pulsewire_refusals_total", status="431") == 0
    record("pipelined_600_and_split", answered=len(statuses), **rss.figures(), **p.figures())


# ------------------------------------------------------------------- event streams


async def test_an_event_stream_that_never_reads(node, probe) -> None:
    """An SSE client subscribed to a busy channel reads nothing: its queue reaches the slow
    consumer cap (1013 disconnect) and the stream is aborted, not held."""
    n = await node("serve")
    before = await n.metrics()
    async with probe(n) as p, rss_watch(n) as rss:
        sse = await Sse.open(n.port, ATTACKER, rcvbuf=4096, limit=4096)
        assert await sse.send(n.port, connect_and_subscribe("reader", "busy")) == 204
        await asyncio.sleep(0.2)
        sent = 0
        while sent < 60:  # 6 MB for a stream that takes nothing (the kernel takes ~3 MB)
            await publish(n, "busy", "x" * 100_000)
            sent += 1
        after = await until(n, lambda m: not m.value("pulsewire_connections", transport="sse"), 30)
        await served_meanwhile(p)
    rss.check()
    sse.conn.reset()
    assert after.delta(before, "pulsewire_slow_consumer_disconnects_total") == 1
    record("sse_never_read", publications=sent, **rss.figures(), **p.figures())


async def test_many_event_streams_from_one_address(node, probe) -> None:
    """60 SSE streams from one address subscribed to one channel, none reading: each queue
    may grow to 1 MiB (the slow-consumer threshold), but together they may hold only the
    address's 32 MiB: the sessions that would take it past that end (1013) first."""
    n = await node("serve")
    before = await n.metrics()
    streams: list[Sse] = []
    async with probe(n) as p, rss_watch(n) as rss:
        sender = await Conn.open(n.port, ATTACKER)
        for i in range(60):
            sse = await Sse.open(n.port, ATTACKER, rcvbuf=4096, limit=4096)
            body = "\n".join(json.dumps(c) for c in connect_and_subscribe(f"u{i}", "wide"))
            target = f"/connection/sse/send?session={sse.session}"
            answer = await sender.call(request("POST", target, body=body.encode(), headers=JSON))
            assert answer.status == 204, answer
            streams.append(sse)
        for _ in range(60):  # 6 MB per stream unread, past what the kernel's buffers take
            await publish(n, "wide", "x" * 100_000)
        after = await until(
            n, lambda m: m.delta(before, "pulsewire_budget_exceeded_total", scope="address"), 30
        )
        await served_meanwhile(p)
    rss.check()
    for sse in streams:
        sse.conn.reset()
    sender.close()
    ended = after.delta(before, "pulsewire_budget_exceeded_total", scope="address")
    assert ended >= 1
    assert after.value("pulsewire_held_bytes") < 40 * MiB
    record(
        "many_sse_streams",
        streams=60,
        ended_over_budget=ended,
        **rss.figures(),
        **p.figures(),
    )


async def test_long_polls_of_one_address_share_its_budget(node, probe) -> None:
    """100 sessions (opened over one connection) that never poll, subscribed to a busy
    channel: each queue may reach 1 MiB, together only the address's 32 MiB."""
    n = await node("serve")
    before = await n.metrics()
    async with probe(n) as p, rss_watch(n) as rss:
        conn = await Conn.open(n.port, ATTACKER)
        for i in range(100):
            answer = await conn.call(request("POST", "/connection/longpoll/open"))
            assert answer.status == 200, answer
            lp = LongPoll(conn, n.port, json.loads(answer.body)["session"])
            assert await lp.send(connect_and_subscribe(f"lp{i}", "polled")) == 204
        for _ in range(15):  # 1.5 MB per session: 150 MB without the address budget
            await publish(n, "polled", "y" * 100_000)
        after = await until(
            n, lambda m: m.delta(before, "pulsewire_budget_exceeded_total", scope="address"), 30
        )
        await served_meanwhile(p)
    rss.check()
    conn.close()
    assert after.value("pulsewire_held_bytes") < 40 * MiB
    record(
        "longpoll_queues",
        sessions=100,
        ended_over_budget=after.delta(before, "pulsewire_budget_exceeded_total", scope="address"),
        **rss.figures(),
        **p.figures(),
    )
