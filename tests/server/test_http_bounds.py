"""The front door inside its bounds: per-request head limits, one request parsed ahead,
responses written with backpressure, memory budgets, body and send deadlines, request targets.

Clients that "never read" use tiny socket buffers on both sides, so that the kernel does not
absorb megabytes before the server's own backpressure shows.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from pulsewire.aio.budget import BudgetLimits
from pulsewire.server.app import WEB_ROOT, HubServer
from pulsewire.server.http import HttpProtocol

from .conftest import HOST, request_bytes

KiB = 1024
JS = (WEB_ROOT / "pulsewire.js").read_bytes()


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class Client:
    """A raw HTTP/1.1 client on a real socket; ``tight`` shrinks the socket buffers of both
    ends so that a client that does not read is felt at once."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.server_side: HttpProtocol | None = None

    @classmethod
    async def open(cls, server: HubServer, *, tight: bool = False) -> Client:
        before = set(server.http.connections)
        sock = socket.socket()
        if tight:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, server.port))
        reader, writer = await asyncio.open_connection(
            sock=sock, limit=4 * KiB if tight else 64 * KiB
        )
        client = cls(reader, writer)
        await eventually(lambda: len(set(server.http.connections) - before) == 1)
        (proto,) = set(server.http.connections) - before
        client.server_side = proto
        if tight:
            assert proto.transport is not None
            proto.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
        return client

    def send(self, data: bytes) -> None:
        """Write without waiting for the peer to take it (it may stop reading)."""
        self.writer.write(data)

    async def response(self, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if line)}
        length = int(fields.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        return int(lines[0].split()[1]), fields, body

    async def closed(self, timeout: float = 10.0) -> bool:
        """True once the server has closed (EOF or reset), reading and dropping the rest."""

        async def drain() -> None:
            try:
                while await self.reader.read(65536):
                    pass
            except ConnectionError:
                pass

        await asyncio.wait_for(drain(), timeout)
        return True

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def clients() -> Any:
    opened: list[Client] = []

    async def open_(server: HubServer, *, tight: bool = False) -> Client:
        client = await Client.open(server, tight=tight)
        opened.append(client)
        return client

    yield open_
    for client in opened:
        client.close()


# ------------------------------------------------------------------------ heads per request


async def test_pipelined_requests_over_the_head_limit_in_one_read_are_all_answered(front, clients):
    server = await front()
    conn = await clients(server)
    requests = b"".join(request_bytes("GET", f"/health?n={n}") for n in range(600))
    split = request_bytes("GET", "/health?n=600")
    assert len(requests) > 16 * KiB
    conn.send(requests + split[:20])
    for _ in range(600):
        status, _, body = await conn.response()
        assert status == 200 and json.loads(body)["status"] == "ok"
    conn.send(split[20:])
    assert (await conn.response())[0] == 200
    assert server.http.refusals == {}


async def test_one_head_over_the_limit_among_pipelined_ones_is_refused_after_the_others(
    front, clients
):
    server = await front()
    conn = await clients(server)
    good = request_bytes("GET", "/health") * 3
    huge = request_bytes("GET", "/health", headers=[("X-Big", "a" * 17000)])
    conn.send(good + huge + good)
    for _ in range(3):
        assert (await conn.response())[0] == 200
    status, fields, body = await conn.response()
    assert (status, fields["connection"]) == (431, "close")
    assert b"request head larger than 16384 bytes" in body
    assert await conn.closed()


async def test_a_malformed_request_is_answered_after_the_good_ones_before_it(front, clients):
    server = await front()
    conn = await clients(server)
    conn.send(request_bytes("GET", "/health") * 3 + b"NOT HTTP AT ALL\r\n\r\n")
    assert [(await conn.response())[0] for _ in range(4)] == [200, 200, 200, 400]
    assert await conn.closed()


# --------------------------------------------------------------------- request targets


@pytest.mark.parametrize(
    ("line", "upgrade", "reason"),
    [
        ("GET * HTTP/1.1", False, b"request target * is only valid for OPTIONS"),
        ("GET * HTTP/1.1", True, b"request target * is only valid for OPTIONS"),
        ("POST * HTTP/1.1", False, b"request target * is only valid for OPTIONS"),
        ("CONNECT 127.0.0.1:443 HTTP/1.1", False, b"must be a path (/...) or an absolute"),
    ],
)
async def test_a_target_that_names_no_resource_is_400(front, clients, line, upgrade, reason):
    server = await front()
    conn = await clients(server)
    headers = "Host: 127.0.0.1\r\n"
    if upgrade:
        headers += (
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        )
    conn.send(f"{line}\r\n{headers}\r\n".encode())
    status, _, body = await conn.response()
    assert status == 400
    assert reason in body
    assert server.http.refusals == {400: 1}
    assert await conn.closed()


@pytest.mark.parametrize("upgrade", [False, True])
async def test_options_star_is_valid_http_with_nothing_to_route(front, clients, upgrade):
    server = await front()
    conn = await clients(server)
    extra = "Upgrade: websocket\r\nConnection: Upgrade\r\n" if upgrade else ""
    conn.send(f"OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
    assert (await conn.response())[0] == 404
    if not upgrade:  # keep-alive goes on
        conn.send(request_bytes("GET", "/health"))
        assert (await conn.response())[0] == 200


# ------------------------------------------------------------------ pipelining, backpressure


async def test_a_client_that_does_not_read_gets_one_answer_at_a_time(front, clients):
    """10,000 pipelined GETs of a 37 kB file, never read, made the server hold them all."""
    server = await front()
    conn = await clients(server, tight=True)
    proto = conn.server_side
    count = 300
    conn.send(request_bytes("GET", "/pulsewire.js") * count)
    await eventually(lambda: server.budgets.held(HOST) > 0)
    await asyncio.sleep(0.3)  # time for an unbounded server to pile up answers
    held = server.budgets.held(HOST)
    # one answer waiting to be taken, one request parsed ahead, at most one read unparsed
    assert held < len(JS) + 300 * KiB, held
    assert len(proto.pending) <= 1
    for _ in range(count):
        status, _, body = await conn.response()
        assert status == 200 and body == JS
    await eventually(lambda: server.budgets.held(HOST) == 0)


async def test_an_answer_not_taken_within_the_send_timeout_aborts_the_connection(front, clients):
    server = await front()
    server.http.limits.send_timeout = 0.3
    conn = await clients(server, tight=True)
    conn.send(request_bytes("GET", "/pulsewire.js") * 50)
    await eventually(lambda: server.http.timeouts["send"] == 1)
    await eventually(lambda: not server.http.connections and server.budgets.addresses == 0)
    assert await conn.closed()


# ----------------------------------------------------------------------------- budgets


async def test_a_connection_over_its_hard_limit_gets_503(front, clients):
    limits = BudgetLimits(connection_high=16 * KiB, connection_hard=64 * KiB)
    server = await front(budget_limits=limits)
    conn = await clients(server)
    body = b"x" * (200 * KiB)  # under max_body (1 MiB), over the connection's hard limit
    conn.send(request_bytes("POST", "/api/publish", body=body))
    status, fields, reason = await conn.response()
    assert (status, fields["connection"]) == (503, "close")
    assert reason == b"server memory budget exceeded for this connection\n"
    assert server.budgets.exceeded == {"connection": 1, "address": 0}
    assert server.http.refusals == {503: 1}
    await eventually(lambda: server.budgets.addresses == 0)


async def test_the_connection_that_takes_its_address_over_the_hard_limit_gets_503(front, clients):
    limits = BudgetLimits(address_high=64 * KiB, address_hard=160 * KiB)
    server = await front(budget_limits=limits)
    first, second = await clients(server), await clients(server)
    head = request_bytes("POST", "/api/publish", headers=[("Content-Length", str(100 * KiB))])
    first.send(head + b"x" * (90 * KiB))  # a body being received: read on despite the mark
    await eventually(lambda: server.budgets.held(HOST) > 90 * KiB)
    second.send(head + b"x" * (90 * KiB))
    status, _, reason = await second.response()
    assert status == 503
    assert reason == b"server memory budget exceeded for your address\n"
    assert server.budgets.exceeded == {"connection": 0, "address": 1}
    first.send(b"x" * (10 * KiB))  # the first one completes and is answered
    assert (await first.response())[0] == 401  # (no API key: the request was received whole)


async def test_over_the_address_high_mark_a_connection_that_holds_anything_stops_reading(
    front, clients
):
    limits = BudgetLimits(address_high=16 * KiB, address_hard=4 << 20)
    server = await front(budget_limits=limits)
    hog = await clients(server, tight=True)
    hog.send(request_bytes("GET", "/pulsewire.js") * 20)  # holds more than 16 KiB unread
    await eventually(lambda: server.budgets.held(HOST) > 16 * KiB)
    other = await clients(server, tight=True)
    proto = other.server_side
    # A connection that holds nothing still takes one request at a time...
    other.send(request_bytes("GET", "/pulsewire.js"))
    await eventually(lambda: proto.account is not None and proto.account.held > 0)
    # ...but while its answer waits to be taken, nothing more is read from it.
    other.send(request_bytes("GET", "/health"))
    await asyncio.sleep(0.3)
    assert not proto.pending and proto.account is not None and proto.account.paused
    assert server.budgets.pauses >= 2
    for _ in range(20):
        assert (await hog.response())[2] == JS
    assert (await other.response())[2] == JS
    assert (await other.response())[0] == 200  # read once the address was back under


# ----------------------------------------------------------------------------- deadlines


async def test_a_body_slower_than_the_minimum_rate_is_408(front, clients):
    server = await front()
    server.http.limits.body_rate_window = 0.2
    conn = await clients(server)
    head = request_bytes("POST", "/api/publish", headers=[("Content-Length", "1000")])
    conn.send(head + b"x" * 10)
    status, _, reason = await conn.response()
    assert status == 408
    assert reason == b"request body too slow: under 1024 bytes/s over 0.2 s\n"
    assert server.http.timeouts["body"] == 1 and server.http.refusals == {408: 1}
    assert await conn.closed()


async def test_a_body_dripping_above_the_rate_still_ends_at_the_body_deadline(front, clients):
    server = await front()
    server.http.limits.body_timeout = 0.5
    server.http.limits.body_min_rate = 1
    server.http.limits.body_rate_window = 0.2
    conn = await clients(server)
    conn.send(request_bytes("POST", "/api/publish", headers=[("Content-Length", "100000")]))

    async def drip() -> None:
        while True:
            conn.send(b"x" * 10)
            await asyncio.sleep(0.02)

    dripping = asyncio.ensure_future(drip())
    try:
        status, _, reason = await conn.response()
    finally:
        dripping.cancel()
    assert (status, reason) == (408, b"request body not received within 0.5 s\n")


async def test_a_slow_body_at_a_sufficient_rate_is_received(front, clients):
    server = await front()
    server.http.limits.body_rate_window = 0.2
    server.http.limits.body_min_rate = 100  # 20 bytes per window; 40 times that is sent
    conn = await clients(server)
    body = json.dumps({"channel": "x", "data": "y" * 4000}).encode()
    conn.send(
        request_bytes(
            "POST",
            "/api/publish",
            body=b"",
            headers=[
                ("Content-Length", str(len(body))),
                ("Authorization", "apikey front-door-key"),
            ],
        )
    )
    for offset in range(0, len(body), 400):
        conn.send(body[offset : offset + 400])
        await asyncio.sleep(0.05)
    assert (await conn.response())[0] == 200
    assert server.http.timeouts["body"] == 0


async def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(front, clients):
    server = await front()
    conn = await clients(server)
    conn.send(request_bytes("POST", "/api/publish", headers=[("Content-Length", "2000000")]))
    status, _, reason = await conn.response()
    assert (status, reason) == (413, b"request body larger than 1048576 bytes\n")


async def test_a_head_trickling_behind_a_long_poll_gets_408_after_the_poll_answer(front, clients):
    server = await front(check_origin=False)
    server.longpoll.poll_timeout = 1.0
    server.http.limits.head_timeout = 0.3
    conn = await clients(server)
    conn.send(request_bytes("POST", "/connection/longpoll/open"))
    session = json.loads((await conn.response())[2])["session"]
    conn.send(request_bytes("GET", f"/connection/longpoll/poll?session={session}"))
    conn.send(b"GET /health HTTP/1.1\r\n")  # ...and never the rest
    status, _, body = await conn.response()
    assert (status, body) == (200, b"[]")  # the poll is answered first, at its own time
    status, _, reason = await conn.response()
    assert (status, reason) == (408, b"request head not received in time\n")
    assert server.http.timeouts["head"] == 1


# ------------------------------------------------------------------------------ metrics


async def scrape(
    clients, server: HubServer
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    conn = await clients(server)
    conn.send(request_bytes("GET", "/metrics"))
    status, _, body = await conn.response()
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


async def test_budgets_deadlines_and_slots_are_in_the_metrics(front, clients):
    limits = BudgetLimits(connection_high=16 * KiB, connection_hard=64 * KiB)
    server = await front(budget_limits=limits, check_origin=False)
    server.http.limits.body_rate_window = 0.2
    slow = await clients(server)
    slow.send(request_bytes("POST", "/api/publish", headers=[("Content-Length", "1000")]))
    assert (await slow.response())[0] == 408
    big = await clients(server)
    big.send(request_bytes("POST", "/api/publish", body=b"x" * (100 * KiB)))
    assert (await big.response())[0] == 503
    poller = await clients(server)
    poller.send(request_bytes("POST", "/connection/longpoll/open"))
    assert (await poller.response())[0] == 200
    slow.close()
    big.close()  # (refused connections linger until their client closes: the FIN was sent)
    await eventually(lambda: server.limiter.total == 2)  # the poller and its session
    metrics = await scrape(clients, server)
    assert metrics[("pulsewire_http_timeouts_total", (("phase", "body"),))] == 1
    assert metrics[("pulsewire_http_timeouts_total", (("phase", "send"),))] == 0
    assert metrics[("pulsewire_refusals_total", (("status", "408"),))] == 1
    assert metrics[("pulsewire_refusals_total", (("status", "503"),))] == 1
    assert metrics[("pulsewire_budget_exceeded_total", (("scope", "connection"),))] == 1
    assert metrics[("pulsewire_budget_exceeded_total", (("scope", "address"),))] == 0
    assert ("pulsewire_budget_pauses_total", ()) in metrics  # (moved by the pause tests)
    assert metrics[("pulsewire_session_slots", ())] == 1
    assert metrics[("pulsewire_tcp_connections", ())] == 2  # the poller and the scraper
    assert metrics[("pulsewire_budget_addresses", ())] == 1
    assert metrics[("pulsewire_held_bytes", ())] > 0  # the scrape's own request at least
