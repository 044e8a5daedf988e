"""The harness itself: a probe is served by an idle node, the census sees a live connection,
and the RSS watch measures a process (so a test that passes is not passing by blindness)."""

from __future__ import annotations

import pytest

from .conftest import ATTACKER, MiB, Node, WsClient, make_token, rss_watch

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("kind", ["serve", "echo"])
async def test_an_idle_node_serves_the_probe(node, probe, kind: str) -> None:
    n = await node(kind)
    async with probe(n) as p:
        while p.rounds < 5:
            await __import__("asyncio").sleep(0.05)
    assert p.latencies and not p.failures


async def test_the_census_counts_live_connections_with_the_gc_disabled(node) -> None:
    n: Node = await node("serve", gc=False)
    client = await WsClient.open(n.port, n.path, source=ATTACKER, subprotocol=n.subprotocol)
    await client.connect(make_token("census"))
    counts = await n.census()
    assert Node.live(counts, "ServerConnection"), counts
    assert Node.live(counts, "Session"), counts
    await client.close()


async def test_the_rss_watch_sees_memory_held_by_clients(node) -> None:
    """Control: 200 connections that each push 200 KiB of a message the server must hold
    (a 64 KiB-limited hub refuses it, so use echo's 1 MiB messages, never completed) show up."""
    n = await node("echo", "--max-size", "1MiB")
    clients = []
    async with rss_watch(n) as rss:
        for _ in range(200):
            client = await WsClient.open(n.port, n.path, subprotocol=None)
            # A 1 MiB binary frame header, then 200 KiB of its payload: held while incomplete.
            await client.send_raw(bytes([0x82, 0xFF]) + (1 << 20).to_bytes(8, "big") + b"\x00" * 4)
            await client.send_raw(b"\x00" * (200 * 1024))
            clients.append(client)
        await n.settle()
    for client in clients:
        await client.close()
    assert rss.growth > 20 * MiB, rss.figures()
