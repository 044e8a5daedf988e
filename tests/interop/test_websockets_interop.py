"""Interoperability with the ``websockets`` library, both ways: its server with our client, its
client with our server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import pulsewire

websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect as ws_connect  # noqa: E402
from websockets.asyncio.server import serve as ws_serve  # noqa: E402
from websockets.exceptions import ConnectionClosed as WsConnectionClosed  # noqa: E402

TIMEOUT = 5
TEXT = "héllo wörld ✓ " * 50
BINARY = bytes(range(256)) * 40


async def recv(ws: Any) -> Any:
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


def ws_extensions(ws: Any) -> list[str]:
    return [ext.name for ext in ws.protocol.extensions]


# ============================================================ our client <-> websockets server


@pytest.fixture
async def their_server() -> AsyncIterator[tuple[str, list[Any]]]:
    """A websockets echo server that also reports fragments and close codes it saw."""
    log: list[Any] = []

    async def handler(ws: Any) -> None:
        log.append(("extensions", ws_extensions(ws)))
        try:
            async for message in ws:
                if message == "stream me":
                    fragments = [f async for f in ws.recv_streaming()]
                    log.append(("fragments", fragments))
                    await ws.send(
                        "".join(fragments) if isinstance(fragments[0], str) else b"".join(fragments)
                    )
                elif message == "send fragments":
                    await ws.send(["fr", "ag", "ments"])
                elif message == "ping me":
                    latency = await asyncio.wait_for(await ws.ping(b"their ping"), TIMEOUT)
                    await ws.send(f"latency {type(latency).__name__}")
                elif message == "close 4002":
                    await ws.close(4002, "their reason")
                else:
                    await ws.send(message)
        except WsConnectionClosed:
            pass
        log.append(("closed", ws.close_code, ws.close_reason))

    async with ws_serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/", log


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_our_client_text_and_binary(their_server: Any, compression: Any) -> None:
    url, log = their_server
    async with pulsewire.connect(url, compression=compression) as ws:
        assert ws.extensions == ("permessage-deflate" if compression else "")
        for message in (TEXT, BINARY, "", b"", "x" * 1_000_000):
            await ws.send(message)
            assert await recv(ws) == message
    await asyncio.sleep(0.1)
    assert log[0] == ("extensions", ["permessage-deflate"] if compression else [])


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_our_client_sends_fragments(their_server: Any, compression: Any) -> None:
    url, log = their_server
    async with pulsewire.connect(url, compression=compression) as ws:
        await ws.send("stream me")
        await ws.send(["frag", "mén", "ted"])
        assert await recv(ws) == "fragménted"
        await ws.send("stream me")
        await ws.send([b"\x00", b"\x01", b"\x02"])
        assert await recv(ws) == b"\x00\x01\x02"
    fragments = [entry[1] for entry in log if entry[0] == "fragments"]
    assert fragments == [["frag", "mén", "ted"], [b"\x00", b"\x01", b"\x02"]]


async def test_our_client_receives_fragments(their_server: Any) -> None:
    url, _ = their_server
    async with pulsewire.connect(url) as ws:
        await ws.send("send fragments")
        assert await recv(ws) == "fragments"


async def test_our_client_close_code_reaches_their_server(their_server: Any) -> None:
    url, log = their_server
    ws = await pulsewire.connect(url)
    await ws.send("hi")
    assert await recv(ws) == "hi"
    await asyncio.wait_for(ws.close(4001, "our reason"), TIMEOUT)
    assert ws.close_code == 4001
    await asyncio.sleep(0.1)
    assert log[-1] == ("closed", 4001, "our reason")


async def test_their_server_close_code_reaches_our_client(their_server: Any) -> None:
    url, _ = their_server
    async with pulsewire.connect(url) as ws:
        await ws.send("close 4002")
        with pytest.raises(pulsewire.ConnectionClosedError) as info:
            await recv(ws)
        assert (info.value.code, info.value.reason) == (4002, "their reason")


async def test_our_client_normal_close(their_server: Any) -> None:
    url, log = their_server
    async with pulsewire.connect(url) as ws:
        await ws.send("x")
        await recv(ws)
    assert ws.close_code == 1000
    await asyncio.sleep(0.1)
    assert log[-1] == ("closed", 1000, "")


async def test_ping_pong_with_their_server(their_server: Any) -> None:
    url, _ = their_server
    async with pulsewire.connect(url) as ws:
        rtt = await asyncio.wait_for(ws.ping(b"our ping"), TIMEOUT)
        assert isinstance(rtt, float) and rtt >= 0
        await ws.send("ping me")  # they ping us; our core answers with a Pong
        assert await recv(ws) == "latency float"


# ============================================================ websockets client <-> our server


@pytest.fixture
async def our_server(start_server: Any) -> tuple[str, list[Any]]:
    log: list[Any] = []

    async def handler(ws: Any) -> None:
        log.append(("extensions", ws.extensions))
        try:
            async for message in ws:
                if message == "send fragments":
                    await ws.send(["fr", "ag", "ments"])
                elif message == "send binary fragments":
                    await ws.send(iter([b"\x01", b"\x02"]))
                elif message == "ping me":
                    rtt = await asyncio.wait_for(ws.ping(b"our ping"), TIMEOUT)
                    await ws.send(f"rtt {type(rtt).__name__}")
                elif message == "close 4003":
                    await ws.close(4003, "our reason")
                else:
                    await ws.send(message)
        finally:
            await ws.wait_closed()
            log.append(("closed", ws.close_code, ws.close_reason))

    _, url = await start_server(handler, max_size=4 * 2**20)
    return url, log


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_their_client_text_and_binary(our_server: Any, compression: Any) -> None:
    url, log = our_server
    async with ws_connect(url, compression=compression, max_size=4 * 2**20) as ws:
        assert ws_extensions(ws) == (["permessage-deflate"] if compression else [])
        for message in (TEXT, BINARY, "", b"", "y" * 1_000_000):
            await ws.send(message)
            assert await recv(ws) == message
    assert log[0] == ("extensions", "permessage-deflate" if compression else "")


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_their_client_sends_fragments(our_server: Any, compression: Any) -> None:
    url, _ = our_server

    async def fragments() -> AsyncIterator[str]:
        for part in ("as", "ync"):
            yield part

    async with ws_connect(url, compression=compression) as ws:
        await ws.send(["frag", "mén", "ted"])
        assert await recv(ws) == "fragménted"
        await ws.send([b"a", b"b", b"c"])
        assert await recv(ws) == b"abc"
        await ws.send(fragments())
        assert await recv(ws) == "async"


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_their_client_receives_fragments(our_server: Any, compression: Any) -> None:
    url, _ = our_server
    async with ws_connect(url, compression=compression) as ws:
        await ws.send("send fragments")
        assert [f async for f in ws.recv_streaming()] == ["fr", "ag", "ments"]
        await ws.send("send binary fragments")
        assert [f async for f in ws.recv_streaming()] == [b"\x01", b"\x02"]


async def test_their_client_close_code_reaches_our_server(our_server: Any) -> None:
    url, log = our_server
    ws = await ws_connect(url)
    await ws.send("hi")
    assert await recv(ws) == "hi"
    await asyncio.wait_for(ws.close(4004, "their reason"), TIMEOUT)
    await asyncio.sleep(0.1)
    assert log[-1] == ("closed", 4004, "their reason")


async def test_our_server_close_code_reaches_their_client(our_server: Any) -> None:
    url, _ = our_server
    async with ws_connect(url) as ws:
        await ws.send("close 4003")
        with pytest.raises(WsConnectionClosed):
            await recv(ws)
        assert (ws.close_code, ws.close_reason) == (4003, "our reason")


async def test_our_server_normal_close_after_handler_returns(start_server: Any) -> None:
    async def handler(ws: Any) -> None:
        await ws.send("bye")

    _, url = await start_server(handler)
    async with ws_connect(url) as ws:
        assert await recv(ws) == "bye"
        with pytest.raises(WsConnectionClosed):
            await recv(ws)
        assert ws.close_code == 1000


async def test_ping_pong_with_their_client(our_server: Any) -> None:
    url, _ = our_server
    async with ws_connect(url) as ws:
        latency = await asyncio.wait_for(await ws.ping(b"their ping"), TIMEOUT)
        assert isinstance(latency, float)
        await ws.send("ping me")  # we ping them
        assert await recv(ws) == "rtt float"


async def test_their_client_max_size_against_our_server(start_server: Any) -> None:
    _, url = await start_server(max_size=1000)
    async with ws_connect(url) as ws:
        await ws.send("z" * 1001)
        with pytest.raises(WsConnectionClosed):
            await recv(ws)
        assert ws.close_code == 1009


async def test_compression_parameters_with_their_client(start_server: Any) -> None:
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    _, url = await start_server(compression=pulsewire.DeflateOptions(client_max_window_bits=10))
    factory = ClientPerMessageDeflateFactory(
        server_no_context_takeover=True,
        client_no_context_takeover=True,
        server_max_window_bits=11,
        client_max_window_bits=True,
    )
    async with ws_connect(url, compression=None, extensions=[factory]) as ws:
        (ext,) = ws.protocol.extensions
        assert ext.name == "permessage-deflate"
        assert ext.remote_no_context_takeover and ext.local_no_context_takeover
        assert (ext.remote_max_window_bits, ext.local_max_window_bits) == (11, 10)
        for _ in range(3):
            await ws.send(TEXT)
            assert await recv(ws) == TEXT
