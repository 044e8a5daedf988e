"""Every limit, enforced with its code and counted in /metrics (see docs/security.md for the
table: defaults, where each is set, what happens, which metric moves).

Frame-level limits (message size, frames per message, inflated size) close with 1009/1008;
connection admission refuses with 503 (per IP, total) or 429 (rate per IP), counted in
``pulsewire_refusals``; client rate limits close with 1008 or answer error 111, counted in
``pulsewire_rate_limited``; the channel cap answers error 106; the front door answers 408,
431 and 414.
"""

from __future__ import annotations

import asyncio
import json
import zlib

import pytest

from pulsewire.protocol.frames import build_frame
from pulsewire.server.limits import ConnectionLimits

from .conftest import HOST, WS_PATH, WsClient, hub_config, open_tcp, read_response, scrape

# ------------------------------------------------------------------------ frame-level limits


async def _connected(port: int, clients: list[WsClient], **options: object) -> WsClient:
    client = await WsClient.open(port, **options)  # type: ignore[arg-type]
    clients.append(client)
    await client.connect()
    return client


# The attacks stop where the server refuses: bytes left unread when it closes would make its
# kernel answer with a reset, which may overtake the Close frame on its way to the client.


async def _oversized_message(client: WsClient) -> None:
    """A text frame announcing 70,000 bytes (the header is enough to refuse it)."""
    header = bytes([0x81, 0x80 | 127]) + (70_000).to_bytes(8, "big") + b"\x00\x00\x00\x00"
    await client.send_raw(header + b'{"id": 9, "method": "ping", "params": {"pad": "xxxx')


async def _too_many_fragments(client: WsClient) -> None:
    """4,097 frames in one message: an opening fragment and 4,096 empty continuations."""
    await client.send_frame(0x1, b'{"id": 9, ', fin=False)
    await client.send_raw(build_frame(0x00, b"", b"\x01\x02\x03\x04") * 4096)


def _bomb(blocks: int) -> bytes:
    """A raw deflate stream of ``blocks`` MiB of zeros, about 1 KB per MiB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    zeros = bytes(1 << 20)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_SYNC_FLUSH)
    repeat = compressor.compress(zeros) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return first + repeat * (blocks - 1)


async def _inflate_bomb(client: WsClient) -> None:
    data = _bomb(4)  # ~4 KB on the wire, 4 MiB inflated, the limit is 64 KiB
    assert len(data) < 5000
    await client.send_frame(
        0x1, data[:-4] if data.endswith(b"\x00\x00\xff\xff") else data, rsv1=True
    )


FRAME_LIMITS = {
    "message size": (_oversized_message, 1009, {}),
    "frames per message": (_too_many_fragments, 1008, {}),
    "inflated size": (_inflate_bomb, 1009, {"deflate": True}),
}


@pytest.mark.parametrize("limit", list(FRAME_LIMITS))
async def test_frame_level_limits_close_the_connection_with_their_code(hub, clients, limit):
    attack, code, options = FRAME_LIMITS[limit]
    server = await hub()
    client = await _connected(server.port, clients, **options)
    if options.get("deflate"):
        assert client.header("Sec-WebSocket-Extensions") == "permessage-deflate"
    await attack(client)
    frame = await client.close_frame()
    assert frame.close_code == code, (frame.close_code, frame.close_reason)
    assert await client.at_eof()
    # The session is gone from the hub too.
    for _ in range(50):
        if not server.hub.sessions:
            break
        await asyncio.sleep(0.02)
    assert server.hub.sessions == {}


@pytest.mark.parametrize("limit", list(FRAME_LIMITS))
async def test_frame_level_limit_violations_are_counted_by_their_code(hub, clients, limit):
    attack, code, options = FRAME_LIMITS[limit]
    server = await hub()
    client = await _connected(server.port, clients, **options)
    before = await scrape(server.port)
    await attack(client)
    assert (await client.close_frame()).close_code == code
    await client.at_eof()
    await asyncio.sleep(0.05)
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_disconnects_total", code=str(code)) == 1
    assert after.delta(before, "pulsewire_disconnects_total", code="1006") == 0


async def test_a_message_just_under_the_limit_is_fine(hub, clients):
    server = await hub()
    client = await _connected(server.port, clients)
    command = {"id": 50, "method": "ping", "params": {"pad": ""}}
    pad = 65536 - len(json.dumps(command))
    command["params"]["pad"] = "x" * pad  # type: ignore[index]
    text = json.dumps(command)
    assert len(text) == 65536
    await client.send_text(text)
    assert (await client.reply(50))["result"] == {}


# -------------------------------------------------------------------- connection admission


async def test_connections_per_ip_over_the_cap_get_503(hub, clients):
    server = await hub(limits=ConnectionLimits(max_connections_per_ip=3))
    before = await scrape(server.port)
    for _ in range(3):
        clients.append(await WsClient.open(server.port, source="127.0.0.2"))
    refused = await WsClient.open(server.port, source="127.0.0.2", expect=503)
    clients.append(refused)
    assert b"too many connections from your address" in refused.body
    # Another address is not concerned; a slot freed is usable again.
    clients.append(await WsClient.open(server.port, source="127.0.0.3"))
    await clients[0].close()
    await _eventually(lambda: server.limiter.by_ip.get("127.0.0.2") == 2)
    clients.append(await WsClient.open(server.port, source="127.0.0.2"))
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_refusals_total", status="503") == 1


async def test_total_connections_over_the_cap_get_503(hub, clients):
    server = await hub(limits=ConnectionLimits(max_connections=4))
    before = await scrape(server.port)  # this connection is gone before the next ones
    await _eventually(lambda: server.limiter.total == 0)
    for i in range(4):
        clients.append(await WsClient.open(server.port, source=f"127.0.0.{10 + i}"))
    refused = await WsClient.open(server.port, source="127.0.0.20", expect=503)
    clients.append(refused)
    assert b"connection limit" in refused.body
    after_answer = await _scrape_when_possible(server, clients)
    assert after_answer.delta(before, "pulsewire_refusals_total", status="503") == 1


async def test_new_connections_per_second_per_ip_over_the_rate_get_429(hub, clients):
    limits = ConnectionLimits(connections_per_second_per_ip=0.5, connections_burst_per_ip=3)
    server = await hub(limits=limits)
    before = await scrape(
        server.port,
    )  # from 127.0.0.1: not the address under test
    for _ in range(3):
        client = await WsClient.open(server.port, source="127.0.0.4")
        await client.close()
    refused = await WsClient.open(server.port, source="127.0.0.4", expect=429)
    clients.append(refused)
    assert b"slow down" in refused.body
    clients.append(await WsClient.open(server.port, source="127.0.0.5"))
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_refusals_total", status="429") == 1


# --------------------------------------------------------------------- client rate limits


async def test_message_rate_limit_disconnects_with_1008(hub, clients):
    config = hub_config(client_messages_per_second=2.0, client_messages_burst=5.0)
    server = await hub(config)
    client = await _connected(server.port, clients)  # connect: 1 message
    before = await scrape(server.port)
    answered = 0
    for _ in range(8):  # one at a time: nothing is left unread when the server closes
        await client.command("ping")
        frame = await client.recv_frame()
        assert frame is not None
        if frame.opcode == 0x8:
            break
        answered += 1
    assert (frame.close_code, frame.close_reason) == (1008, "rate limit exceeded")
    assert answered == 4  # the burst: 5 messages, connect included
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_rate_limited_total", policy="disconnect") == 1
    assert after.delta(before, "pulsewire_disconnects_total", code="1008") == 1


async def test_byte_rate_limit_disconnects_with_1008(hub, clients):
    config = hub_config(client_bytes_per_second=1000.0, client_bytes_burst=4000.0)
    server = await hub(config)
    client = await _connected(server.port, clients)
    before = await scrape(server.port)
    await client.command("ping", {"pad": "x" * 5000})
    frame = await client.close_frame()
    assert (frame.close_code, frame.close_reason) == (1008, "rate limit exceeded")
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_rate_limited_total", policy="disconnect") == 1


async def test_drop_policy_answers_111_and_counts(hub, clients):
    config = hub_config(
        client_messages_per_second=1.0, client_messages_burst=4.0, rate_limit_policy="drop"
    )
    server = await hub(config)
    client = await _connected(server.port, clients)
    before = await scrape(server.port)
    ids = [await client.command("ping") for _ in range(10)]
    replies = [await client.reply(cid) for cid in ids]
    ok = [r for r in replies if "result" in r]
    dropped = [r for r in replies if "error" in r]
    assert len(ok) == 3  # burst of 4, connect took one
    assert {r["error"]["code"] for r in dropped} == {111}
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_rate_limited_total", policy="drop") == len(dropped)
    assert after.delta(before, "pulsewire_commands_total", method="ping") == 3
    # Still connected: after the bucket refills, commands run again.
    await asyncio.sleep(1.1)
    assert "result" in await client.call("ping")


async def test_channels_per_connection_over_the_cap_is_error_106(hub, clients):
    server = await hub(hub_config(max_channels_per_connection=3))
    client = await _connected(server.port, clients)
    for i in range(3):
        await client.ok("subscribe", {"channel": f"feed:{i}"})
    answer = await client.call("subscribe", {"channel": "feed:3"})
    assert answer["error"]["code"] == 106
    await client.ok("unsubscribe", {"channel": "feed:0"})
    await client.ok("subscribe", {"channel": "feed:3"})


# ------------------------------------------------------------------------- the front door


async def test_request_head_deadline_is_408(hub):
    server = await hub(head_timeout=0.5)
    before = await scrape(server.port)
    reader, writer = await open_tcp(server.port)
    try:
        writer.write(f"GET {WS_PATH} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: web".encode())
        answer = await read_response(reader, timeout=3)
        assert answer.status == 408
        assert await asyncio.wait_for(reader.read(), 3) == b""
    finally:
        writer.close()
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_refusals_total", status="408") == 1


@pytest.mark.parametrize(
    ("head", "status"),
    [
        ("".join(f"X-Pad-{i}: v\r\n" for i in range(101)), 431),  # > 100 header fields
        ("X-Pad: " + "v" * 17000 + "\r\n", 431),  # head > 16 KiB
        (None, 414),  # request target > 8 KiB
    ],
    ids=["header count", "head size", "target length"],
)
async def test_header_limits_are_431_and_414(hub, head, status):
    server = await hub()
    before = await scrape(server.port)
    target = WS_PATH if head is not None else WS_PATH + "?x=" + "a" * 8200
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\n{head or ''}\r\n"
    ).encode()
    reader, writer = await open_tcp(server.port)
    try:
        writer.write(request)
        answer = await read_response(reader)
        assert answer.status == status, answer
    finally:
        writer.close()
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_refusals_total", status=str(status)) == 1


# ----------------------------------------------------------------------------------- helpers


async def _eventually(condition, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def _scrape_when_possible(server, clients):  # type: ignore[no-untyped-def]
    """Scrape once a slot is free (the cap applies to the scrape's connection too)."""
    await clients[0].close()
    await _eventually(lambda: server.limiter.total < server.limiter.limits.max_connections)
    return await scrape(server.port)


# --------------------------------------------------------------- pulsewire serve, behind a proxy


async def test_serve_config_can_raise_the_per_ip_limits_for_a_proxy(server_process, tmp_path):
    cfg = hub_config()
    config = tmp_path / "pulsewire.toml"
    config.write_text(
        "[server]\nmax_connections_per_ip = 100000\nconnections_per_second_per_ip = 100000.0\n"
        "connections_burst_per_ip = 100000.0\n"
        f'[hub]\ntoken_hmac_secret = "{cfg.token_hmac_secret}"\napi_key = "{cfg.api_key}"\n'
    )
    server = await server_process("serve", "--config", str(config), "--port", "0")

    async def health() -> int:
        reader, writer = await open_tcp(server.port, "127.0.0.7")  # "the proxy"
        try:
            writer.write(f"GET /health HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            return (await read_response(reader)).status
        finally:
            writer.close()

    statuses: list[int] = []
    for _ in range(6):  # 300 requests from one address, as fast as they come
        statuses += await asyncio.gather(*(health() for _ in range(50)))
    assert statuses.count(200) == 300, {s: statuses.count(s) for s in set(statuses)}
