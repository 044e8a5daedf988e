"""/metrics tells the truth: a known sequence of actions moves each counter by exactly its
amount (scraped over HTTP, parsed with prometheus_client's parser)."""

from __future__ import annotations

import asyncio
import json

from .conftest import (
    HOST,
    WS_PATH,
    Metrics,
    WsClient,
    api,
    http,
    open_tcp,
    read_response,
    scrape,
)

N = 3  # WebSocket clients
M = 2  # publications by a client
P = 2  # publications through the API


async def _until(server, predicate, timeout: float = 3.0) -> Metrics:  # type: ignore[no-untyped-def]
    """Scrape until ``predicate(metrics)`` holds (closes are processed asynchronously)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        metrics = await scrape(server.port)
        if predicate(metrics) or loop.time() > deadline:
            return metrics
        await asyncio.sleep(0.02)


async def test_counters_move_by_exactly_what_happened(hub, clients):
    server = await hub()
    port = server.port
    before = await scrape(port)
    gauge = before.value("pulsewire_connections", transport="websocket")
    assert gauge == 0

    # N clients connect and subscribe.
    channel = "pub:metrics"
    for _ in range(N):
        client = await WsClient.open(port)
        clients.append(client)
        await client.connect()
        await client.ok("subscribe", {"channel": channel})
    during = await scrape(port)
    assert during.value("pulsewire_connections", transport="websocket") == N
    assert during.value("pulsewire_tcp_connections") == N + 1  # + the scrape

    # M publications by a client, P through the API: each delivered to the N subscribers.
    for i in range(M):
        await clients[0].ok("publish", {"channel": channel, "data": {"from": "client", "i": i}})
    for i in range(P):
        await api(port, "publish", {"channel": channel, "data": {"from": "api", "i": i}})
    for client in clients:  # every push queued before the ping's reply has arrived after it
        await client.ok("ping")
        assert len([p for p in client.pushes if p.get("push") == "publication"]) == M + P

    # Refusals: a foreign origin (403), too many headers (431), an unknown WebSocket path (404).
    refused = await WsClient.open(port, origin="https://evil.example", expect=403)
    await refused.close()
    headers = [(f"X-{i}", "v") for i in range(101)]
    assert (await http(port, "GET", WS_PATH, headers=headers)).status == 431
    other = await WsClient.open(port, path="/nope", expect=404)
    await other.close()

    # SSE: one session on another transport.
    reader, writer = await open_tcp(port)
    writer.write(f"GET /connection/sse HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
    assert (await read_response(reader)).status == 200
    await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)  # the session event
    with_sse = await scrape(port)
    assert with_sse.value("pulsewire_connections", transport="sse") == 1
    writer.close()

    # One client leaves normally.
    await clients[-1].send_frame(0x8, (1000).to_bytes(2, "big"))
    assert (await clients[-1].close_frame()).close_code == 1000

    after = await _until(
        server,
        lambda m: (
            m.value("pulsewire_connections", transport="websocket") == N - 1
            and m.value("pulsewire_connections", transport="sse") == 0
        ),
    )

    def moved(name: str, **labels: str) -> float:
        return after.delta(before, name, **labels)

    assert after.value("pulsewire_connections", transport="websocket") == N - 1
    assert after.value("pulsewire_connections", transport="sse") == 0
    assert moved("pulsewire_handshakes_total", transport="websocket") == N
    assert moved("pulsewire_connects_total", transport="websocket") == N
    assert moved("pulsewire_commands_total", method="connect") == N
    assert moved("pulsewire_commands_total", method="subscribe") == N
    assert moved("pulsewire_commands_total", method="publish") == M
    assert moved("pulsewire_commands_total", method="ping") == N
    assert moved("pulsewire_publications_total") == M + P
    assert moved("pulsewire_deliveries_total") == (M + P) * N
    assert moved("pulsewire_publish_to_deliver_seconds_count") == M + P
    assert moved("pulsewire_refusals_total", status="403") == 1
    assert moved("pulsewire_refusals_total", status="431") == 1
    assert moved("pulsewire_refusals_total", status="404") == 1
    assert moved("pulsewire_disconnects_total", code="1000") == 1
    assert moved("pulsewire_disconnects_total", code="1006") == 1  # the SSE stream we cut
    assert after.value("pulsewire_channels") == 1
    # Traffic: what the clients sent and received, frame for frame and byte for byte.
    sent = [sum(c.sent[i] for c in clients) for i in (0, 1)]
    received = [sum(c.received[i] for c in clients) for i in (0, 1)]
    assert moved("pulsewire_messages_in_total", transport="websocket") == sent[0]
    assert moved("pulsewire_bytes_in_total", transport="websocket") == sent[1]
    assert moved("pulsewire_messages_out_total", transport="websocket") == received[0]
    assert moved("pulsewire_bytes_out_total", transport="websocket") == received[1]
    # per client: the connect, subscribe and ping replies; M publish replies; the pushes
    assert received[0] == 3 * N + M + (M + P) * N


async def test_byte_counters_count_bytes_not_characters(hub, clients):
    server = await hub()
    client = await WsClient.open(server.port)
    clients.append(client)
    await client.connect()
    before = await scrape(server.port)
    sent, received = list(client.sent), list(client.received)
    text = json.dumps(
        {"id": 99, "method": "rpc", "params": {"method": "é€" * 100}}, ensure_ascii=False
    )
    await client.send_text(text)
    assert (await client.reply(99))["error"]["code"] == 104  # no RPC handler; echoes nothing
    await client.send_text(json.dumps({"id": 100, "method": "ping"}))
    await client.reply(100)
    after = await scrape(server.port)
    assert client.sent[1] - sent[1] > len(text) + 10  # multi-byte characters were sent
    assert after.delta(before, "pulsewire_bytes_in_total", transport="websocket") == (
        client.sent[1] - sent[1]
    )
    assert after.delta(before, "pulsewire_bytes_out_total", transport="websocket") == (
        client.received[1] - received[1]
    )
