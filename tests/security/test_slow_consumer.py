"""Slow consumers: a subscriber that stops reading cannot make the server buffer without end.

A ``pulsewire serve`` hub (subprocess) with ``client_queue_max_bytes = 4 MiB``; ~100 MiB are
published (1600 x 64 KiB, as broadcasts to two channels) while:

* two fast subscribers (one per channel) read everything: every publication arrives, in
  order;
* a subscriber on ``feed:*`` (``slow_consumer = "disconnect"``, the default) completes the
  handshake, connects and subscribes, then never reads again: it is disconnected with 1013;
* a subscriber on ``lossy:*`` (``slow_consumer = "drop"``) does the same: it stays
  connected, the publications it cannot take are dropped (``pulsewire_queue_drops_total``)
  and what it does get is in order;

and the server's RSS, sampled every 5 ms, stays under its settled baseline + 64 MiB.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pulsewire

from .conftest import (
    API_KEY,
    HOST,
    JSON_PROTOCOL,
    WS_PATH,
    MiB,
    RssSampler,
    WsClient,
    hub_config,
    make_token,
    open_tcp,
    read_response,
    scrape,
)

COUNT = 1600
SIZE = 64 * 1024
QUEUE_MAX = 4 * MiB
RSS_BOUND = 64 * MiB
WINDOW = 24
"""Publications the publisher may be ahead of the slower fast subscriber (1.5 MiB: well under
the queue limit, so the fast ones are never taken for slow consumers)."""


class FastSubscriber:
    """A pulsewire client that reads every publication and checks the order."""

    def __init__(self, ws: Any, channel: str) -> None:
        self.ws = ws
        self.channel = channel
        self.seqs: list[int] = []
        self.bytes = 0
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, port: int, channel: str) -> FastSubscriber:
        ws = await pulsewire.connect(
            f"ws://{HOST}:{port}{WS_PATH}", subprotocols=[JSON_PROTOCOL], compression=None
        )
        sub = cls(ws, channel)
        await ws.send(
            json.dumps({"id": 1, "method": "connect", "params": {"token": make_token("fast")}})
        )
        assert "result" in json.loads(await ws.recv())
        await ws.send(json.dumps({"id": 2, "method": "subscribe", "params": {"channel": channel}}))
        assert "result" in json.loads(await ws.recv())
        sub.task = asyncio.ensure_future(sub._read())
        return sub

    async def _read(self) -> None:
        async for message in self.ws:
            push = json.loads(message)
            assert push.get("push") == "publication" and push["channel"] == self.channel, push
            self.seqs.append(push["data"]["seq"])
            self.bytes += len(message)
            self.changed.set()

    async def close(self) -> None:
        await self.ws.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


class Publisher:
    """``POST /api/broadcast`` on one keep-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def broadcast(self, channels: list[str], data: dict[str, Any]) -> None:
        body = json.dumps({"channels": channels, "data": data}).encode()
        self.writer.write(
            (
                f"POST /api/broadcast HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: apikey {API_KEY}"
                f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        answer = await read_response(self.reader)
        assert answer.status == 200, answer
        for response in json.loads(answer.body)["result"]["responses"]:
            assert "result" in response, response


async def stalled_subscriber(port: int, channel: str) -> WsClient:
    """Handshake, connect, subscribe; then it reads nothing (4 KiB receive buffer, and the
    asyncio transport stops pulling bytes from the socket)."""
    client = await WsClient.open(port, rcvbuf=4096)
    await client.connect(make_token("stalled"))
    await client.ok("subscribe", {"channel": channel})
    client.writer.transport.pause_reading()  # type: ignore[attr-defined]
    return client


def resume(client: WsClient) -> None:
    client.writer.transport.resume_reading()  # type: ignore[attr-defined]


async def test_slow_consumers_are_cut_or_dropped_and_memory_stays_bounded(server_process, tmp_path):
    cfg = hub_config()
    config = tmp_path / "hub.toml"
    config.write_text(
        f'[hub]\ntoken_hmac_secret = "{cfg.token_hmac_secret}"\napi_key = "{cfg.api_key}"\n'
        f"client_queue_max_bytes = {QUEUE_MAX}\n"
        '[namespaces.feed]\n[namespaces.lossy]\nslow_consumer = "drop"\n'
    )
    server = await server_process("serve", "--config", str(config), "--port", "0")
    port = server.port
    channels = ["feed:big", "lossy:big"]
    fast = [await FastSubscriber.start(port, ch) for ch in channels]
    cut = await stalled_subscriber(port, "feed:big")
    lossy = await stalled_subscriber(port, "lossy:big")
    publisher = Publisher(*await open_tcp(port))
    before = await scrape(port)
    baseline = await server.settle()
    blob = "x" * (SIZE - 20)
    started = time.monotonic()
    try:
        with RssSampler(server.pid) as rss:
            for seq in range(COUNT):
                while seq - min(len(f.seqs) for f in fast) >= WINDOW:
                    waits = [asyncio.ensure_future(f.changed.wait()) for f in fast]
                    for f in fast:
                        f.changed.clear()
                    await asyncio.wait(waits, timeout=5, return_when=asyncio.FIRST_COMPLETED)
                    for w in waits:
                        w.cancel()
                    assert all(not f.task.done() for f in fast), "a fast subscriber ended"  # type: ignore[union-attr]
                await publisher.broadcast(channels, {"seq": seq, "blob": blob})
            deadline = time.monotonic() + 30
            while min(len(f.seqs) for f in fast) < COUNT and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
        after = await scrape(port)

        # Fast subscribers: everything, in order.
        for f in fast:
            assert f.seqs == list(range(COUNT)), (f.channel, len(f.seqs))
        published = sum(f.bytes for f in fast) / len(fast)

        # The "disconnect" one: 1013 after the data it was sent before.
        resume(cut)
        resume(lossy)
        frame = await cut.close_frame(timeout=10)
        assert (frame.close_code, frame.close_reason) == (
            1013,
            "slow consumer: too much data queued",
        )
        got_cut = [p["data"]["seq"] for p in cut.pushes]
        assert got_cut == list(range(len(got_cut)))

        # The "drop" one: still connected; what it got is in order, with gaps.
        answer = await lossy.call("ping")
        assert answer.get("result") == {}
        got_lossy = [p["data"]["seq"] for p in lossy.pushes]
        assert got_lossy == sorted(set(got_lossy))
        assert 0 < len(got_lossy) < COUNT

        drops = after.delta(before, "pulsewire_queue_drops_total")
        assert drops == COUNT - len(got_lossy)
        assert after.delta(before, "pulsewire_slow_consumer_disconnects_total") == 1
        assert after.delta(before, "pulsewire_disconnects_total", code="1013") == 1

        growth = rss.peak - baseline
        print(
            f"\nslow consumers: {COUNT} x {SIZE // 1024} KiB = {published / MiB:.0f} MiB per "
            f"channel in {elapsed:.1f} s; fast subscribers got all in order; the stalled one "
            f"was cut (1013) after {len(got_cut)} publications; the lossy one got "
            f"{len(got_lossy)}, {drops:.0f} dropped; RSS baseline {baseline / MiB:.1f} MiB, "
            f"peak {rss.peak / MiB:.1f} MiB (+{growth / MiB:.1f} MiB)"
        )
        assert growth < RSS_BOUND, f"RSS grew by {growth / MiB:.1f} MiB"
    finally:
        publisher.writer.close()
        for f in fast:
            await f.close()
        await cut.close()
        await lossy.close()
