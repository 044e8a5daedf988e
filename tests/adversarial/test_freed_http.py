"""Freed when closed, for HTTP, SSE and long-polling: with the garbage collector disabled, over
a thousand connections and sessions ending by every path leave no live connection, session or
transport object behind (issue #10, "What must show" item 2, for the HTTP side).

The node runs with short deadlines (so that every timeout path ends quickly), small memory
budgets (so that one connection can go over its hard limit) and the connection rate limits
raised (this is about what is freed, not about admission).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from .conftest import (
    ATTACKER,
    HUB_CONFIG,
    Node,
    WsClient,
    make_token,
    record,
)
from .http_clients import Conn, LongPoll, Sse, connect_and_subscribe, request

pytestmark = pytest.mark.timeout(240)

CONFIG = HUB_CONFIG.replace(
    "[server]\n",
    """[server]
head_timeout = 1.0
body_timeout = 1.0
send_timeout = 1.0
longpoll_timeout = 1.0
longpoll_idle_timeout = 1.0
bytes_high_per_connection = 65536
max_bytes_per_connection = 262144
connections_per_second_per_ip = 100000.0
connections_burst_per_ip = 100000.0
""",
)

FREED = (
    "HttpProtocol",
    "RequestReader",
    "Deadlines",
    "WriteFlow",
    "Answerer",
    "HttpRequest",
    "StreamResponse",
    "Session",
    "Subscription",
    "SseTransport",
    "LongPollTransport",
    "Account",
    "Answer",
    "Upgrade",
)
"""What must be gone once every connection and session has ended."""
SHARED = ("Task", "Future", "TimerHandle", "Handle", "TCPTransport", "_SelectorSocketTransport")
"""asyncio's objects: back to what an idle node has (give or take its own periodic work)."""


# -------------------------------------------------------------------------------- the paths


async def completed(port: int) -> None:
    conn = await Conn.open(port)
    for _ in range(3):
        assert (await conn.call(request("GET", "/health"))).status == 200
    answer = await conn.call(request("GET", "/pulsewire.js", headers=[("Connection", "close")]))
    assert answer.status == 200
    assert await conn.closed_by_server()
    conn.close()


async def head_timeout(port: int) -> None:
    conn = await Conn.open(port)
    await conn.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    assert (await conn.answer()).status == 408
    conn.close()


async def body_timeout(port: int) -> None:
    conn = await Conn.open(port)
    await conn.send_all(request("POST", "/api/publish", length=1000) + b"{")
    assert (await conn.answer()).status == 408
    conn.close()


async def too_large(port: int) -> None:
    conn = await Conn.open(port)
    assert (await conn.call(request("POST", "/api/publish", length=2 << 20))).status == 413
    conn.close()
    conn = await Conn.open(port)
    huge = request("GET", "/health", headers=[("X-Big", "a" * 20000)])
    assert (await conn.call(huge)).status == 431
    conn.close()
    conn = await Conn.open(port)
    assert (await conn.call(request("GET", "*"))).status == 400
    conn.close()


async def over_budget(port: int) -> None:
    conn = await Conn.open(port)
    answer = await conn.call(request("POST", "/api/publish", body=b"x" * 400_000))
    assert answer.status == 503, answer
    conn.close()


async def vanished_mid_request(port: int) -> None:
    conn = await Conn.open(port)
    await conn.send_all(b"GET /health HTTP/1.1\r\nHo")
    await asyncio.sleep(0.05)
    conn.reset()
    conn = await Conn.open(port)
    await conn.send_all(request("POST", "/api/publish", length=10000) + b"x" * 5000)
    await asyncio.sleep(0.05)
    conn.reset()


async def vanished_mid_response(port: int) -> None:
    conn = await Conn.open(port, rcvbuf=4096, limit=4096)
    conn.send(request("GET", "/pulsewire.js") * 20)
    await asyncio.sleep(0.2)
    conn.reset()


async def never_read(port: int) -> None:
    """Answers never taken: the send deadline aborts the connection (past what the kernel's
    socket buffers absorb on loopback: up to 4 MiB)."""
    conn = await Conn.open(port, rcvbuf=4096, limit=4096)
    conn.send(request("GET", "/pulsewire.js") * 200)
    await asyncio.sleep(2.5)
    conn.reset()


async def sse_closed_by_client(port: int) -> None:
    sse = await Sse.open(port)
    assert await sse.send(port, connect_and_subscribe("sse-a", "feed")) == 204
    assert "result" in await sse.event()
    sse.conn.close()


async def sse_vanished(port: int) -> None:
    sse = await Sse.open(port)
    assert await sse.send(port, connect_and_subscribe("sse-b", "feed")) == 204
    sse.conn.reset()


async def sse_ended_by_the_hub(port: int) -> None:
    sse = await Sse.open(port)
    assert await sse.send(port, [{"id": 1, "method": "ping"}]) == 204  # before connect: 4501
    assert (await sse.event())["push"] == "disconnect"
    assert await sse.conn.closed_by_server()
    sse.conn.close()


async def longpoll_closed(port: int) -> None:
    lp = await LongPoll.open(port)
    assert await lp.send(connect_and_subscribe("lp-a", "feed")) == 204
    assert (await lp.poll()).status == 200
    assert await lp.close_session() == 204
    lp.conn.close()


async def longpoll_expired(port: int) -> None:
    lp = await LongPoll.open(port)
    assert await lp.send(connect_and_subscribe("lp-b", "feed")) == 204
    lp.conn.close()  # never polls: the session expires (idle timeout)


async def longpoll_vanished_mid_poll(port: int) -> None:
    lp = await LongPoll.open(port)
    assert await lp.send(connect_and_subscribe("lp-c", "feed")) == 204
    assert (await lp.poll()).status == 200  # the replies
    lp.start_poll()  # waits for messages...
    await asyncio.sleep(0.1)
    lp.conn.reset()  # ...and the client is gone


async def longpoll_ended_by_the_hub(port: int) -> None:
    lp = await LongPoll.open(port)
    assert await lp.send([{"id": 1, "method": "ping"}]) == 204  # before connect: 4501
    assert b'"disconnect"' in (await lp.poll()).body
    assert (await lp.poll()).status == 404
    lp.conn.close()


async def websocket_handed_over(port: int) -> None:
    client = await WsClient.open(port, source=ATTACKER)
    await client.connect(make_token("ws"))
    await client.close()


PATHS: list[Callable[[int], Awaitable[None]]] = [
    completed,
    head_timeout,
    body_timeout,
    too_large,
    over_budget,
    vanished_mid_request,
    vanished_mid_response,
    never_read,
    sse_closed_by_client,
    sse_vanished,
    sse_ended_by_the_hub,
    longpoll_closed,
    longpoll_expired,
    longpoll_vanished_mid_poll,
    longpoll_ended_by_the_hub,
]


# ---------------------------------------------------------------------------------- the test


async def idle(n: Node, timeout: float = 30.0) -> None:
    """Wait until the node holds no connection or session but the scrape's own."""
    deadline = time.monotonic() + timeout
    while True:
        m = await n.metrics()
        sessions = sum(
            m.value("pulsewire_connections", transport=kind)
            for kind in ("websocket", "sse", "longpoll")
        )
        busy = (
            m.value("pulsewire_tcp_connections") - 1,
            m.value("pulsewire_session_slots"),
            sessions,
        )
        if not any(busy):
            return
        assert time.monotonic() < deadline, f"still busy: {busy}"
        await asyncio.sleep(0.2)


async def census_without(n: Node, names: tuple[str, ...], timeout: float = 15.0) -> dict[str, int]:
    """A census in which none of ``names`` is live, or the last one taken after ``timeout``
    (connections that just ended may still be closing: lingering closes, cancelled tasks)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await n.census()
        if not Node.live(counts, *names) or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.5)


async def test_http_sse_and_longpoll_objects_are_freed_by_reference_counting(node) -> None:
    n = await node("serve", gc=False, config=CONFIG)
    for path in PATHS:  # warm up: what is created once (caches, lazily built objects)
        await path(n.port)
    await idle(n)
    baseline = await n.census()
    rounds, each = 4, 16
    opened = Conn.opened
    for _ in range(rounds):
        await asyncio.gather(*(path(n.port) for path in PATHS for _ in range(each)))
    await idle(n)
    counts = await census_without(n, FREED)
    assert Node.live(counts, *FREED) == {}, Node.live(counts, *FREED)
    grown = {
        name: (baseline.get(name, 0), count)
        for name, count in Node.live(counts, *SHARED).items()
        if count > baseline.get(name, 0) + 3
    }
    assert not grown, f"asyncio objects left behind (before, after): {grown}"
    metrics = await n.metrics()
    for phase in ("head", "body", "send"):
        assert metrics.value("pulsewire_http_timeouts_total", phase=phase) >= rounds * each
    assert metrics.value("pulsewire_budget_exceeded_total", scope="connection") >= rounds * each
    record(
        "freed_http",
        paths=len(PATHS),
        runs=rounds * each * len(PATHS),
        connections=Conn.opened - opened,
        live_after={k: v for k, v in Node.live(counts, *FREED, *SHARED).items()},
    )


async def test_a_connection_handed_over_to_websocket_leaves_no_http_object(node) -> None:
    """The front door's side of an upgrade: what becomes of the WebSocket connection and its
    session is the WebSocket layer's proof (its own census test)."""
    n = await node("serve", gc=False, config=CONFIG)
    await websocket_handed_over(n.port)
    await idle(n)
    for _ in range(5):
        await asyncio.gather(*(websocket_handed_over(n.port) for _ in range(20)))
    await idle(n)
    names = (
        "HttpProtocol",
        "RequestReader",
        "Deadlines",
        "WriteFlow",
        "Answerer",
        "HttpRequest",
        "Upgrade",
        "Answer",
    )
    leftovers = Node.live(await census_without(n, names), *names)
    assert leftovers == {}, leftovers
