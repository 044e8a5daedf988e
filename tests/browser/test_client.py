"""pulsewire.js in Chromium: the three transports, reconnect with recovery, fallback,
server-side subscriptions."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from .conftest import HubProcess, Page, free_port

TRANSPORTS = ["websocket", "sse", "longpoll"]


def room() -> str:
    return f"chat:{uuid.uuid4().hex[:10]}"


def test_pages_on_each_transport_talk_to_each_other(
    hub: HubProcess, open_page: Callable[..., Page]
) -> None:
    channel = room()
    pages = {
        name: open_page(hub, f"user-{name}", [channel], transports=[name]) for name in TRANSPORTS
    }
    for name, page in pages.items():
        assert page.eval("() => h.client.transport") == name
    for name, page in pages.items():
        page.publish(channel, {"from": name})
    hub.publish(channel, {"from": "api"})
    expected = [{"from": name} for name in TRANSPORTS] + [{"from": "api"}]
    for page in pages.values():
        assert page.wait_received(channel, 4) == expected
    # presence sees all three connections
    clients = pages["longpoll"].eval(
        "(c) => h.client.getSubscription(c).presence().then((p) => Object.keys(p).length)",
        channel,
    )
    assert clients == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reconnect_recovers_every_publication_once_in_order(
    hub: HubProcess, open_page: Callable[..., Page], transport: str
) -> None:
    channel = room()
    user = f"rc-{uuid.uuid4().hex[:8]}"
    page = open_page(hub, user, [channel], transports=[transport])
    sent = 0

    def publish(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            sent += 1
            hub.publish(channel, sent)

    publish(5)
    page.wait_received(channel, 5)
    for _ in range(2):  # the server drops the connection while publications go on
        hub.api("disconnect", {"user": user, "code": 4000, "reason": "test"})
        publish(10)
        assert page.wait_received(channel, sent) == list(range(1, sent + 1))
    # Missed for sure: published while the page is disconnected.
    page.eval("() => h.client.disconnect()")
    publish(10)
    page.eval("() => h.client.connect()")
    publish(5)
    assert page.wait_received(channel, sent) == list(range(1, sent + 1))
    events = page.events()
    assert events.count(["disconnected", 4000, True]) == 2
    assert [e for e in events if e[0] == "connected"] == [["connected", transport]] * 4
    assert page.subscribed(channel) == [
        {"recovering": False, "recovered": False},
        *[{"recovering": True, "recovered": True}] * 3,
    ]


def test_disconnect_code_without_reconnect_stops_the_client(
    hub: HubProcess, open_page: Callable[..., Page]
) -> None:
    user = f"stop-{uuid.uuid4().hex[:8]}"
    page = open_page(hub, user, [room()])
    hub.api("disconnect", {"user": user, "code": 4502, "reason": "go away"})
    page.wait("() => h.client.state === 'disconnected'")
    assert page.events()[-2:] == [["disconnected", 4502, False], ["state", "disconnected"]]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_restart_tells_the_page_recovery_failed(
    start_hub: Callable[[], HubProcess], open_page: Callable[..., Page], transport: str
) -> None:
    hub = start_hub()
    channel = room()
    page = open_page(hub, "restart", [channel], transports=[transport])
    for n in (1, 2, 3):
        hub.publish(channel, n)
    page.wait_received(channel, 3)
    hub.stop()  # the memory engine's history goes with it
    page.wait("() => h.client.state === 'connecting'")
    hub.start()
    page.wait("(c) => h.subscribed[c].length === 2", channel)
    assert page.subscribed(channel)[-1] == {"recovering": True, "recovered": False}
    hub.publish(channel, "after restart")  # offset 1 of a new stream: delivered, not deduped
    assert page.wait_received(channel, 4) == [1, 2, 3, "after restart"]
    # 1012 (service restart) on WebSocket, a 4000 disconnect push on SSE and long-polling
    assert any(e[0] == "disconnected" and e[2] is True for e in page.events())


@pytest.mark.parametrize(
    ("blocked", "expected"),
    [({"websocketUrl": "ws"}, "sse"), ({"websocketUrl": "ws", "sseUrl": "http"}, "longpoll")],
)
def test_falls_back_when_a_transport_cannot_open(
    hub: HubProcess,
    open_page: Callable[..., Page],
    blocked: dict[str, str],
    expected: str,
) -> None:
    closed = free_port()  # nothing listens there: connection refused
    urls: dict[str, Any] = {
        "websocketUrl": f"ws://127.0.0.1:{closed}/connection/websocket",
        "sseUrl": f"http://127.0.0.1:{closed}/connection/sse",
    }
    channel = room()
    page = open_page(hub, "fallback", [channel], **{k: urls[k] for k in blocked})
    assert page.eval("() => h.client.transport") == expected
    errors = [e for e in page.events() if e[0] == "error"]
    assert errors == [["error", "transport", name] for name in TRANSPORTS[: len(blocked)]]
    page.publish(channel, "from the page")
    hub.publish(channel, "from the api")
    assert page.wait_received(channel, 2) == ["from the page", "from the api"]


def test_a_missing_ping_reply_counts_as_a_lost_connection(
    start_hub: Callable[[], HubProcess], open_page: Callable[..., Page]
) -> None:
    hub = start_hub()
    channel = room()
    options = {"pingInterval": 200, "pingTimeout": 300, "timeout": 1000}
    page = open_page(hub, "frozen", [channel], **options)
    assert hub.proc is not None
    hub.proc.send_signal(signal.SIGSTOP)  # the connection stays open; nothing answers
    try:
        page.wait("() => h.client.state === 'connecting'", timeout=5)
    finally:
        hub.proc.send_signal(signal.SIGCONT)
    assert ["disconnected", 4005, True] in page.events()
    hub.publish(channel, "missed")
    assert page.wait_received(channel, 1) == ["missed"]
    page.wait("() => h.client.state === 'connected'")
    assert page.subscribed(channel)[-1] == {"recovering": True, "recovered": True}


def test_server_side_unsubscribe_and_messages(
    hub: HubProcess, open_page: Callable[..., Page]
) -> None:
    channel = room()
    user = f"srv-{uuid.uuid4().hex[:8]}"
    page = open_page(hub, user, [channel])
    hub.api("send", {"user": user, "data": {"hello": "page"}})
    page.wait("() => h.events.some((e) => e[0] === 'message')")
    hub.api("unsubscribe", {"user": user, "channel": channel})
    page.wait("() => h.events.some((e) => e[0] === 'unsubscribed')")
    events = page.events()
    assert ["message", {"hello": "page"}] in events
    assert ["unsubscribed", channel, 2000] in events
    assert page.eval("(c) => h.client.getSubscription(c)", channel) is None
    assert page.eval("() => h.client.state") == "connected"
    # client.send reaches the hub's send command, which has no on_message hook here: 104
    sent = page.eval(
        "() => h.client.send({ x: 1 }).then(() => 'taken', (e) => [e.code, e.message])"
    )
    assert sent == [104, "this hub takes no messages (no handler)"]


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the test secret
@pytest.mark.parametrize("transport", ["websocket", "longpoll"])
def test_server_side_subscriptions(
    hub: HubProcess, open_page: Callable[..., Page], transport: str
) -> None:
    """One from the token claim ``subs`` at connect, one by /api/subscribe: subscribed and
    publication events of the client; after a reconnect the first recovers what was missed
    (its position sent in ``server_subs``), the second, not made again, is dropped."""
    user = f"ss-{uuid.uuid4().hex[:8]}"
    mine, later = room(), f"dashboard:{uuid.uuid4().hex[:10]}"
    token = jwt.encode({"sub": user, "subs": [mine, "nope:x"]}, hub.secret, algorithm="HS256")
    page = open_page(hub, user, [], token=token, transports=[transport])
    assert page.eval("() => h.server.subscribed") == [[mine, False, False]]
    assert ["error", "subscribe", None] in page.events()  # unknown namespace: 102
    hub.api("subscribe", {"user": user, "channel": later})
    page.wait("(c) => h.server.subscribed.some((s) => s[0] === c)", later)
    for n in (1, 2):
        hub.publish(mine, n)
    hub.publish(later, "b")
    page.eval("(c) => h.client.getServerSubscription(c).publish(3)", mine)
    received = "([c, n]) => (h.server.pubs[c] ?? []).length >= n"
    page.wait(received, [mine, 3])
    page.wait(received, [later, 1])
    page.eval("() => h.client.disconnect()")
    for n in (4, 5):
        hub.publish(mine, n)
    page.eval("() => h.client.connect()")
    page.wait(received, [mine, 5])
    hub.publish(mine, 6)
    page.wait(received, [mine, 6])
    server = page.eval("() => h.server")
    assert server["pubs"] == {mine: [1, 2, 3, 4, 5, 6], later: ["b"]}
    assert server["subscribed"] == [[mine, False, False], [later, False, False], [mine, True, True]]
    assert ["unsubscribed", later, 2000] in page.events()
    assert page.eval("() => [...h.client.serverSubscriptions.keys()]") == [mine]
    hub.api("unsubscribe", {"user": user, "channel": mine})
    page.wait("(c) => h.events.some((e) => e[0] === 'unsubscribed' && e[1] === c)", mine)
    assert page.eval("() => h.client.serverSubscriptions.size") == 0


def test_a_refused_subscription_rejects_ready_with_the_servers_code(
    hub: HubProcess, open_page: Callable[..., Page]
) -> None:
    """An unknown namespace is refused with 102: ``sub.ready()`` rejects with that code (not
    code 0, "connection lost"), the subscription's state event carries the error, and the
    client stays connected."""
    page = open_page(hub, f"refused-{uuid.uuid4().hex[:8]}", [])
    outcome = page.eval(
        """async () => {
            const states = [];
            const sub = h.client.subscribe("nope:x");
            sub.on("state", ({ state, error }) => states.push([state, error?.code ?? null]));
            const ready = await sub.ready().then(() => "ready", (e) => [e.code, e.message]);
            return { ready, states, client: h.client.state };
        }"""
    )
    assert outcome["ready"][0] == 102
    assert outcome["states"][-1] == ["unsubscribed", 102]
    assert outcome["client"] == "connected"
