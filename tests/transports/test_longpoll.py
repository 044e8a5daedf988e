"""The hub over long-polling: /connection/longpoll/open, send, poll and close."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pulsewire.aio.budget import BudgetLimits
from pulsewire.server.app import HubServer
from pulsewire.server.limits import ConnectionLimits

from .conftest import TEXT, base_url, command_lines, wait_until

Start = Callable[..., Awaitable[HubServer]]


class LongPollSession:
    def __init__(self, http: Any, server: HubServer, session: str) -> None:
        self.http = http
        self.server = server
        self.base = f"{base_url(server)}/connection/longpoll"
        self.query = f"?session={session}"
        self.session = session
        self.inbox: list[dict[str, Any]] = []
        """Polled messages not yet taken by :meth:`message`."""
        self.log: list[dict[str, Any]] = []
        """Every message polled, in order (also those :meth:`message` skipped)."""

    async def send(self, *commands: dict[str, Any]) -> None:
        response = await self.http.post(
            f"{self.base}/send{self.query}", content=command_lines(*commands), headers=TEXT
        )
        assert response.status_code == 204, response.text

    async def poll_response(self, headers: dict[str, str] | None = None) -> Any:
        return await self.http.get(f"{self.base}/poll{self.query}", headers=headers)

    async def poll(self) -> list[dict[str, Any]]:
        response = await self.poll_response()
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        messages = list(response.json())
        self.log.extend(messages)
        return messages

    async def message(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The next message that ``predicate`` accepts (polling as needed; others skipped)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if not self.inbox:
                self.inbox.extend(await self.poll())
                continue
            message = self.inbox.pop(0)
            if predicate(message):
                return message
        raise AssertionError("no such message in time")

    async def reply(self, cid: int) -> dict[str, Any]:
        return await self.message(lambda m: m.get("id") == cid)

    async def push(self, kind: str) -> dict[str, Any]:
        return await self.message(lambda m: m.get("push") == kind)


@pytest.fixture
def longpoll(http: Any) -> Callable[..., Awaitable[LongPollSession]]:
    async def open_(server: HubServer) -> LongPollSession:
        response = await http.post(f"{base_url(server)}/connection/longpoll/open", headers=TEXT)
        assert response.status_code == 200, response.text
        return LongPollSession(http, server, response.json()["session"])

    return open_


async def connect(
    lp: LongPollSession, token: str, channel: str, **subscribe: Any
) -> dict[str, Any]:
    """Connect and subscribe; returns the subscribe result."""
    await lp.send(
        {"id": 1, "method": "connect", "params": {"token": token}},
        {"id": 2, "method": "subscribe", "params": {"channel": channel, **subscribe}},
    )
    assert (await lp.reply(1))["result"]["transport"] == "longpoll"
    return (await lp.reply(2))["result"]  # type: ignore[no-any-return]


async def test_poll_returns_as_soon_as_a_publication_arrives(
    hub_server: Start, longpoll: Any, token: Callable[[str], str], api: Any
) -> None:
    server = await hub_server()
    lp = await longpoll(server)
    await connect(lp, token("alice"), "chat:lp")
    # Connecting brought the two replies and alice's own join (chat: join_leave), once each,
    # whatever polls they came in; the join may still be in the inbox, and nothing else.
    assert sorted(m["id"] for m in lp.log if "id" in m) == [1, 2]
    pushes = [m for m in lp.log if "id" not in m]
    assert [(p["push"], p["channel"], p["info"]["user"]) for p in pushes] == [
        ("join", "chat:lp", "alice")
    ]
    assert lp.inbox in ([], pushes)
    lp.inbox.clear()
    polling = asyncio.ensure_future(lp.poll())
    await asyncio.sleep(0.1)
    assert not polling.done()  # waiting: nothing queued
    started = time.monotonic()
    await api(server, "publish", {"channel": "chat:lp", "data": "hello"})
    messages = await asyncio.wait_for(polling, 2)
    assert time.monotonic() - started < 1
    assert messages == [{"push": "publication", "channel": "chat:lp", "data": "hello", "offset": 1}]


async def test_poll_times_out_with_an_empty_array(
    hub_server: Start, longpoll: Any, token: Callable[[str], str]
) -> None:
    server = await hub_server()
    server.longpoll.poll_timeout = 0.1
    lp = await longpoll(server)
    assert await lp.poll() == []


async def test_a_new_poll_answers_the_waiting_one(hub_server: Start, longpoll: Any) -> None:
    server = await hub_server()
    lp = await longpoll(server)
    first = asyncio.ensure_future(lp.poll())
    await asyncio.sleep(0.1)
    second = asyncio.ensure_future(lp.poll())
    assert await asyncio.wait_for(first, 2) == []
    await lp.send({"id": 1, "method": "ping"})  # before connect: a disconnect push
    messages = await asyncio.wait_for(second, 2)
    assert [m.get("push") for m in messages] == ["disconnect"]


async def test_recovery_across_transport_sessions(
    hub_server: Start, longpoll: Any, token: Callable[[str], str], api: Any
) -> None:
    server = await hub_server()
    lp = await longpoll(server)
    first = await connect(lp, token("bob"), "chat:rec")
    await api(server, "publish", {"channel": "chat:rec", "data": 1})
    offset = (await lp.push("publication"))["offset"]
    response = await lp.http.post(f"{lp.base}/close{lp.query}", headers=TEXT)
    assert response.status_code == 204
    assert not server.hub.sessions
    for n in (2, 3):
        await api(server, "publish", {"channel": "chat:rec", "data": n})
    lp = await longpoll(server)
    position = {"recover": True, "offset": offset, "epoch": first["epoch"]}
    result = await connect(lp, token("bob"), "chat:rec", **position)
    assert result["recovered"] is True
    assert [p["data"] for p in result["publications"]] == [2, 3]
    await api(server, "publish", {"channel": "chat:rec", "data": 4})
    assert (await lp.push("publication"))["data"] == 4


async def test_session_expires_when_the_client_stops_polling(
    hub_server: Start, longpoll: Any, token: Callable[[str], str]
) -> None:
    server = await hub_server()
    server.longpoll.idle_timeout = 0.3
    lp = await longpoll(server)
    await connect(lp, token("carol"), "chat:idle")
    assert len(server.hub.sessions) == 1
    await wait_until(lambda: not server.hub.sessions, timeout=3)
    assert not server.longpoll.transports
    response = await lp.poll_response()
    assert response.status_code == 404
    assert response.json() == {"error": "unknown or expired session"}


async def test_polling_keeps_the_session(
    hub_server: Start, longpoll: Any, token: Callable[[str], str]
) -> None:
    server = await hub_server()
    server.longpoll.idle_timeout = 0.5
    server.longpoll.poll_timeout = 0.2
    lp = await longpoll(server)
    await connect(lp, token("dave"), "chat:busy")
    for _ in range(5):  # 1 s of polling, each poll waiting 0.2 s
        await lp.poll()
    assert len(server.hub.sessions) == 1


async def test_slow_consumer_is_disconnected(
    hub_server: Start, longpoll: Any, token: Callable[[str], str], api: Any
) -> None:
    server = await hub_server()
    server.longpoll.max_buffered = 2000
    lp = await longpoll(server)
    await connect(lp, token("erin"), "chat:flood")
    for n in range(40):  # ~100 bytes each: past the bound, and the client does not poll
        await api(server, "publish", {"channel": "chat:flood", "data": {"n": n, "pad": "x" * 40}})
    assert not server.hub.sessions
    messages = await lp.poll()
    assert messages == [
        {
            "push": "disconnect",
            "code": 1013,
            "reason": "slow consumer: too much data queued",
            "reconnect": True,
        }
    ]
    assert (await lp.poll_response()).status_code == 404


async def test_disconnect_is_the_last_message(
    hub_server: Start, longpoll: Any, token: Callable[[str], str], api: Any
) -> None:
    server = await hub_server()
    lp = await longpoll(server)
    await connect(lp, token("fay"), "chat:end")
    await api(server, "disconnect", {"user": "fay", "code": 4502, "reason": "banned"})
    push = await lp.push("disconnect")
    assert (push["code"], push["reason"], push["reconnect"]) == (4502, "banned", False)
    response = await lp.http.post(f"{lp.base}/send{lp.query}", content=b"{}", headers=TEXT)
    assert response.status_code == 404


async def test_requests_are_checked(hub_server: Start, longpoll: Any, http: Any) -> None:
    server = await hub_server(allowed_origins=["https://app.example"])
    url = f"{base_url(server)}/connection/longpoll"
    evil = {**TEXT, "Origin": "https://evil.example"}
    response = await http.post(f"{url}/open", headers=evil)
    assert response.status_code == 403
    assert response.json() == {"error": "origin https://evil.example is not allowed"}
    response = await http.post(f"{url}/open", headers={**TEXT, "Origin": "https://app.example"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    lp = await longpoll(server)
    response = await http.get(f"{url}/poll{lp.query}", headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    form = {"Content-Type": "multipart/form-data; boundary=x"}
    response = await http.post(f"{url}/send{lp.query}", content=b"--x--", headers=form)
    assert response.status_code == 415
    response = await http.get(f"{url}/send{lp.query}")
    assert response.status_code == 405
    response = await http.get(f"{url}/poll?session=unknown")
    assert response.status_code == 404
    response = await http.head(f"{url}/poll{lp.query}")  # would take the messages unseen
    assert response.status_code == 405


# ------------------------------------------------------------------- slots and budgets


async def test_each_session_takes_a_connection_slot_of_its_address(
    hub_server: Start, longpoll: Any, http: Any
) -> None:
    server = await hub_server(limits=ConnectionLimits(max_connections_per_ip=3))
    first = await longpoll(server)  # the client's keep-alive connection is the third slot
    await longpoll(server)
    assert (server.limiter.total, server.limiter.sessions) == (3, 2)
    response = await http.post(f"{base_url(server)}/connection/longpoll/open", headers=TEXT)
    assert response.status_code == 503
    assert response.json() == {"error": "too many connections from your address"}
    assert server.http.refusals == {503: 1}
    closed = await http.post(f"{first.base}/close{first.query}", headers=TEXT)
    assert closed.status_code == 204
    assert server.limiter.sessions == 1  # given back when the session ends
    await longpoll(server)


async def test_a_session_that_expires_gives_its_slot_back(hub_server: Start, longpoll: Any) -> None:
    server = await hub_server()
    server.longpoll.idle_timeout = 0.2
    await longpoll(server)
    assert server.limiter.sessions == 1
    await wait_until(lambda: server.limiter.sessions == 0, timeout=5)
    assert not server.longpoll.transports and server.budgets.addresses <= 1


async def test_new_sessions_take_tokens_of_the_rate_of_new_connections(
    hub_server: Start, longpoll: Any, http: Any
) -> None:
    rate = ConnectionLimits(connections_per_second_per_ip=0.001, connections_burst_per_ip=3)
    server = await hub_server(limits=rate)
    await longpoll(server)
    await longpoll(server)  # with the connection: three tokens
    response = await http.post(f"{base_url(server)}/connection/longpoll/open", headers=TEXT)
    assert response.status_code == 429
    assert response.json() == {"error": "too many new connections from your address, slow down"}


async def test_the_queue_is_charged_to_the_address_until_it_is_polled(
    hub_server: Start, longpoll: Any, token: Callable[[str], str], api: Any
) -> None:
    server = await hub_server()
    lp = await longpoll(server)
    await connect(lp, token("gil"), "chat:held")
    lp.inbox.clear()
    await wait_until(lambda: server.budgets.held("127.0.0.1") == 0)
    for n in range(10):
        await api(server, "publish", {"channel": "chat:held", "data": "x" * 1000, "n": n})
    assert server.budgets.held("127.0.0.1") >= 10 * 1000
    assert len(await lp.poll()) == 10
    await wait_until(lambda: server.budgets.held("127.0.0.1") == 0)


async def test_a_session_that_takes_its_address_over_the_hard_limit_ends(
    hub_server: Start, longpoll: Any, token: Callable[[str], str], api: Any
) -> None:
    limits = BudgetLimits(
        connection_high=4096, connection_hard=1 << 20, address_high=4096, address_hard=8192
    )
    server = await hub_server(budget_limits=limits)
    lp = await longpoll(server)
    await connect(lp, token("hal"), "chat:over")
    lp.inbox.clear()
    for n in range(20):  # 20 kB queued for an address allowed 8 KiB
        if not server.hub.sessions:
            break
        await api(server, "publish", {"channel": "chat:over", "data": "x" * 1000, "n": n})
    assert not server.hub.sessions
    assert server.budgets.exceeded == {"connection": 0, "address": 1}
    messages = await lp.poll()
    assert messages[-1] == {
        "push": "disconnect",
        "code": 1013,
        "reason": "server memory budget exceeded",
        "reconnect": True,
    }
