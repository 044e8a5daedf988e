"""The admin page: behind a password, 404 without one, and its numbers follow the hub."""

from __future__ import annotations

import base64
import json

from .conftest import front_config


def basic(password: str) -> list[tuple[str, str]]:
    token = base64.b64encode(f"admin:{password}".encode()).decode()
    return [("Authorization", f"Basic {token}")]


async def test_admin_is_off_without_a_password(front, http):
    server = await front()
    assert (await http(server, "GET", "/admin")).status == 404
    assert (await http(server, "GET", "/admin/stats")).status == 404


async def test_admin_needs_the_password(front, http):
    server = await front(admin_password="s3cret")
    refused = await http(server, "GET", "/admin")
    assert refused.status == 401
    assert refused.header("WWW-Authenticate") == 'Basic realm="pulsewire admin"'
    assert (await http(server, "GET", "/admin", headers=basic("wrong"))).status == 401
    page = await http(server, "GET", "/admin", headers=basic("s3cret"))
    assert page.status == 200 and b"pulsewire admin" in page.body
    bearer = [("Authorization", "Bearer s3cret")]
    assert (await http(server, "GET", "/admin/stats", headers=bearer)).status == 200


async def test_admin_stats_follow_the_hub(front, http, token):
    import pulsewire

    server = await front(config=front_config(), admin_password="pw")
    url = f"ws://127.0.0.1:{server.port}/connection/websocket"
    async with pulsewire.connect(url) as ws:
        await ws.send(json.dumps({"id": 1, "method": "connect", "params": {"token": token("ann")}}))
        await ws.recv()
        await ws.send(json.dumps({"id": 2, "method": "subscribe", "params": {"channel": "news:x"}}))
        await ws.recv()
        stats = json.loads((await http(server, "GET", "/admin/stats", headers=basic("pw"))).body)
        assert stats["sessions"] == 1 and stats["users"] == 1
        assert stats["transports"] == {"websocket": 1}
        assert stats["channels"]["top"] == [{"name": "news:x", "subscribers": 1}]
        assert stats["traffic"]["websocket"]["messages_in"] == 2
        assert stats["handshakes"] == 1
        assert stats["engine"] == {"name": "memory", "available": True}
        assert server.hub.node_id in stats["nodes"]
    await http(server, "GET", "/admin/nope")  # unknown paths don't count as admin
    stats = json.loads((await http(server, "GET", "/admin/stats", headers=basic("pw"))).body)
    assert stats["sessions"] == 0
    assert stats["refusals"].get("404", 0) >= 1


async def test_admin_refusals_add_up_statuses_refused_in_both_places(front, http):
    """A 429 at the front door and a 429 at the WebSocket handshake are two refusals (the
    admin page once merged them as ``{**http, **ws}``, keeping one of the two counts)."""
    server = await front(admin_password="pw")
    server.http.refusals[429] = server.http.refusals.get(429, 0) + 2
    server.websocket.refusals[429] = server.websocket.refusals.get(429, 0) + 3
    server.websocket.refusals[403] = server.websocket.refusals.get(403, 0) + 1
    expected = {
        str(status): server.http.refusals.get(status, 0) + server.websocket.refusals.get(status, 0)
        for status in {*server.http.refusals, *server.websocket.refusals}
    }
    stats = json.loads((await http(server, "GET", "/admin/stats", headers=basic("pw"))).body)
    assert stats["refusals"]["429"] == 5 and stats["refusals"]["403"] == 1
    assert stats["refusals"] == expected
    # the same numbers as /metrics
    metrics = (await http(server, "GET", "/metrics")).body.decode()
    assert 'pulsewire_refusals_total{status="429"} 5.0' in metrics


def test_sum_counts_keeps_every_count() -> None:
    from pulsewire.server.stats import sum_counts

    assert sum_counts({429: 2, 404: 1}, {429: 3, 403: 1}, {}) == {429: 5, 404: 1, 403: 1}
