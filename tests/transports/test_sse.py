"""The hub over Server-Sent Events: GET /connection/sse (the stream), POST .../send."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from pulsewire.aio.budget import BudgetLimits
from pulsewire.server.app import HubServer

from .conftest import TEXT, base_url, command_lines, wait_until


class EventStream:
    """Reads SSE events (name, JSON data) and comments from an httpx streaming response."""

    def __init__(self, response: Any) -> None:
        self.lines = response.aiter_lines()

    async def next(self, timeout: float = 5.0, *, comments: bool = False) -> tuple[str, Any]:
        while True:
            name, data = await asyncio.wait_for(self._next(), timeout)
            if comments or name != ":":
                return name, data

    async def _next(self) -> tuple[str, Any]:
        name, data = "message", []
        async for line in self.lines:
            if line.startswith(":"):
                return ":", line[1:].strip()
            if not line:
                if data:
                    return name, json.loads("\n".join(data))
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        raise EOFError("the event stream ended")


class SseSession:
    def __init__(self, http: Any, server: HubServer, events: EventStream, session: str) -> None:
        self.http = http
        self.url = f"{base_url(server)}/connection/sse/send?session={session}"
        self.events = events
        self.session = session

    async def send(self, *commands: dict[str, Any]) -> Any:
        response = await self.http.post(self.url, content=command_lines(*commands), headers=TEXT)
        assert response.status_code == 204, response.text
        return response

    async def message(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The next message that ``predicate`` accepts (others are skipped)."""
        while True:
            name, data = await self.events.next()
            assert name == "message", (name, data)
            if predicate(data):
                return dict(data)

    async def reply(self, cid: int) -> dict[str, Any]:
        return await self.message(lambda m: m.get("id") == cid)

    async def push(self, kind: str) -> dict[str, Any]:
        return await self.message(lambda m: m.get("push") == kind)


@pytest.fixture
def sse(http: Any) -> Callable[..., Any]:
    @asynccontextmanager
    async def open_(
        server: HubServer, headers: dict[str, str] | None = None
    ) -> AsyncIterator[SseSession]:
        url = f"{base_url(server)}/connection/sse"
        async with http.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = EventStream(response)
            name, hello = await events.next()
            assert name == "session"
            yield SseSession(http, server, events, hello["session"])

    return open_


Start = Callable[..., Awaitable[HubServer]]


async def connect(s: SseSession, token: str, channel: str, **subscribe: Any) -> dict[str, Any]:
    """Connect and subscribe; returns the subscribe result."""
    await s.send(
        {"id": 1, "method": "connect", "params": {"token": token}},
        {"id": 2, "method": "subscribe", "params": {"channel": channel, **subscribe}},
    )
    connected = await s.reply(1)
    assert connected["result"]["transport"] == "sse"
    return (await s.reply(2))["result"]  # type: ignore[no-any-return]


async def test_connect_subscribe_publish_and_receive(
    hub_server: Start, sse: Any, token: Callable[[str], str], api: Any
) -> None:
    server = await hub_server()
    async with sse(server) as s:
        result = await connect(s, token("alice"), "chat:sse")
        assert result["recoverable"] is True
        await api(server, "publish", {"channel": "chat:sse", "data": {"n": 1}})
        pub = await s.push("publication")
        assert pub == {"push": "publication", "channel": "chat:sse", "data": {"n": 1}, "offset": 1}
        await s.send({"id": 3, "method": "publish", "params": {"channel": "chat:sse", "data": 2}})
        pub = await s.push("publication")  # delivered while the command runs: before its reply
        assert (pub["data"], pub["info"]["user"]) == (2, "alice")
        assert (await s.reply(3))["result"]["offset"] == 2
        assert server.hub.sessions[next(iter(server.hub.sessions))].transport.kind == "sse"


async def test_recovery_across_transport_sessions(
    hub_server: Start, sse: Any, token: Callable[[str], str], api: Any
) -> None:
    server = await hub_server()
    async with sse(server) as s:
        first = await connect(s, token("bob"), "chat:rec")
        for n in (1, 2):
            await api(server, "publish", {"channel": "chat:rec", "data": n})
        offset = (await s.push("publication"))["offset"]
        offset = (await s.push("publication"))["offset"]
    await wait_until(lambda: not server.hub.sessions)  # the stream closed: the session ended
    for n in (3, 4):
        await api(server, "publish", {"channel": "chat:rec", "data": n})
    async with sse(server) as s:
        position = {"recover": True, "offset": offset, "epoch": first["epoch"]}
        result = await connect(s, token("bob"), "chat:rec", **position)
        assert result["recovered"] is True
        assert [p["data"] for p in result["publications"]] == [3, 4]
        await api(server, "publish", {"channel": "chat:rec", "data": 5})
        assert (await s.push("publication"))["offset"] == 5


async def test_disconnect_push_ends_the_stream(
    hub_server: Start, sse: Any, token: Callable[[str], str], api: Any
) -> None:
    server = await hub_server()
    async with sse(server) as s:
        await connect(s, token("carol"), "chat:x")
        await api(server, "disconnect", {"user": "carol", "code": 4000, "reason": "bye"})
        push = await s.push("disconnect")
        assert push == {"push": "disconnect", "code": 4000, "reason": "bye", "reconnect": True}
        with pytest.raises(EOFError):
            await s.events.next()
        response = await s.http.post(s.url, content=b"{}", headers=TEXT)
        assert response.status_code == 404


async def test_bad_command_disconnects_without_reconnect(
    hub_server: Start, sse: Any, http: Any
) -> None:
    server = await hub_server()
    async with sse(server) as s:
        await http.post(s.url, content=b"not json", headers=TEXT)
        push = await s.push("disconnect")
        assert (push["code"], push["reconnect"]) == (4501, False)


async def test_heartbeat_comments_on_an_idle_stream(hub_server: Start, sse: Any) -> None:
    server = await hub_server()
    server.sse.heartbeat = 0.05
    async with sse(server) as s:
        assert await s.events.next(comments=True) == (":", "ping")


async def test_origin_policy(hub_server: Start, sse: Any, http: Any) -> None:
    server = await hub_server(allowed_origins=["https://app.example"])
    url = f"{base_url(server)}/connection/sse"
    response = await http.get(url, headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    assert response.json() == {"error": "origin https://evil.example is not allowed"}
    async with sse(server, {"Origin": base_url(server)}):  # same host: allowed
        pass
    async with sse(server, {"Origin": "https://app.example"}) as s:
        response = await http.post(
            s.url, content=b"", headers={**TEXT, "Origin": "https://evil.example"}
        )
        assert response.status_code == 403
        preflight = await http.request("OPTIONS", s.url, headers={"Origin": "https://app.example"})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in preflight.headers["access-control-allow-methods"]


async def test_send_checks(hub_server: Start, sse: Any, http: Any) -> None:
    server = await hub_server(max_message_size=1000)
    async with sse(server) as s:
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        response = await http.post(s.url, content=b"a=b", headers=form)
        assert response.status_code == 415
        response = await http.post(s.url, content=b"x" * 2000, headers=TEXT)
        assert response.status_code == 413
        unknown = s.url.replace(s.session, "nope")
        response = await http.post(unknown, content=b"{}", headers=TEXT)
        assert response.status_code == 404
        assert response.json() == {"error": "unknown or expired session"}


async def test_closing_the_stream_ends_the_session(
    hub_server: Start, sse: Any, token: Callable[[str], str], api: Any
) -> None:
    server = await hub_server()
    async with sse(server) as s:
        await connect(s, token("dave"), "chat:presence")
        presence = await api(server, "presence", {"channel": "chat:presence"})
        assert len(presence["clients"]) == 1
    await wait_until(lambda: not server.hub.sessions and not server.sse.transports)
    await wait_until(lambda: "chat:presence" not in server.hub.channels)


async def test_server_shutdown_sends_a_reconnect_disconnect(
    hub_server: Start, sse: Any, token: Callable[[str], str]
) -> None:
    server = await hub_server()
    async with sse(server) as s:
        await connect(s, token("erin"), "chat:down")
        closing = asyncio.ensure_future(server.close())
        push = await s.push("disconnect")
        assert (push["code"], push["reconnect"]) == (4000, True)
        await closing


async def test_a_client_that_stops_reading_is_a_slow_consumer(
    hub_server: Start, http: Any, token: Callable[[str], str]
) -> None:
    server = await hub_server(max_buffered=100_000)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /connection/sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    hello = await reader.readuntil(b"\n\n")
    session = json.loads(hello.split(b"data: ", 1)[1])["session"]
    for conn in server.http.connections:  # keep the kernel from absorbing megabytes
        if conn.streaming is not None and conn.transport is not None:
            conn.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
    url = f"{base_url(server)}/connection/sse/send?session={session}"
    body = command_lines(
        {"id": 1, "method": "connect", "params": {"token": token("slow")}},
        {"id": 2, "method": "subscribe", "params": {"channel": "chat:slow"}},
    )
    assert (await http.post(url, content=body, headers=TEXT)).status_code == 204
    for _ in range(300):  # 300 kB for a client that reads nothing
        if not server.hub.sessions:
            break
        await server.hub.publish("chat:slow", "x" * 1000)
        await asyncio.sleep(0)
    assert not server.hub.sessions
    await wait_until(lambda: not server.sse.transports)  # the stream ended
    writer.close()


async def test_a_stream_whose_queue_takes_its_address_over_the_hard_limit_ends(
    hub_server: Start, http: Any, token: Callable[[str], str]
) -> None:
    limits = BudgetLimits(
        connection_high=8192, connection_hard=1 << 20, address_high=8192, address_hard=32768
    )
    server = await hub_server(max_buffered=1 << 20, budget_limits=limits)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(b"GET /connection/sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    hello = await reader.readuntil(b"\n\n")
    session = json.loads(hello.split(b"data: ", 1)[1])["session"]
    for conn in server.http.connections:
        if conn.streaming is not None and conn.transport is not None:
            conn.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
    url = f"{base_url(server)}/connection/sse/send?session={session}"
    body = command_lines(
        {"id": 1, "method": "connect", "params": {"token": token("held")}},
        {"id": 2, "method": "subscribe", "params": {"channel": "chat:held"}},
    )
    assert (await http.post(url, content=body, headers=TEXT)).status_code == 204
    for _ in range(300):  # 300 kB for a client that reads nothing; its address may hold 32 KiB
        if not server.hub.sessions:
            break
        await server.hub.publish("chat:held", "x" * 1000)
        await asyncio.sleep(0)
    assert not server.hub.sessions
    assert server.budgets.exceeded["address"] >= 1  # the session (or its stream) went over
    await wait_until(lambda: not server.sse.transports)  # the stream ended
    # (httpx's connection may stay; the stream's may linger up to CLOSE_DEADLINE, 5 s)
    await wait_until(lambda: server.budgets.addresses <= 1, timeout=10)
    writer.close()
