"""Decompression bombs: with permessage-deflate, ~1 MB on the wire can inflate to 1 GB.

The server inflates with a budget (the message limit plus one byte) and fails the connection
with 1009 as soon as the budget is exceeded, so its memory never grows past the limit. These
tests run the server as a subprocess and sample its RSS (``/proc/PID/status``) every 5 ms
while the bomb is sent, and compare the peak with the settled baseline. A control run
without a size limit shows that the probe does see the memory a bomb costs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import time
import zlib

from pulsewire.protocol.frames import apply_mask

from .conftest import (
    HOST,
    JSON_PROTOCOL,
    WS_PATH,
    MiB,
    RssSampler,
    WsClient,
    hub_config,
    make_token,
)

BOUND = 32 * MiB
"""Largest RSS growth over the baseline allowed while a bomb is refused."""


def deflate_zeros(mib: int) -> bytes:
    """A raw deflate stream (sync-flushed, RFC 7692 tail removed) of ``mib`` MiB of zeros.

    Compressing a GiB takes zlib ~20 s; but once the window is all zeros, each further MiB
    compresses to the same ~1 KB block, so the stream is built by repetition in no time.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    zeros = bytes(MiB)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_SYNC_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert block == compressor.compress(zeros) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return (first + block * (mib - 1))[:-4]


def deflate_block() -> tuple[bytes, bytes]:
    """(first, next): sync-flushed deflate blocks, each 1 MiB of zeros once inflated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    zeros = bytes(MiB)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return first, compressor.compress(zeros) + compressor.flush(zlib.Z_SYNC_FLUSH)


def test_the_bomb_is_what_it_claims():
    bomb = deflate_zeros(1024)
    assert len(bomb) < 1.1 * MiB  # ~1000:1
    first, block = deflate_block()
    assert bomb == (first + block * 1023)[:-4]
    # The same construction, inflated in full at a smaller size.
    inflater = zlib.decompressobj(-15)
    out = inflater.decompress(deflate_zeros(16) + b"\x00\x00\xff\xff")
    assert out == bytes(16 * MiB) and not inflater.unconsumed_tail


def frame_header(opcode: int, length: int, *, fin: bool = True, rsv1: bool = True) -> bytes:
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    if length < 126:
        return struct.pack("!BB", first, 0x80 | length)
    if length < 65536:
        return struct.pack("!BBH", first, 0x80 | 126, length)
    return struct.pack("!BBQ", first, 0x80 | 127, length)


class SockClient:
    """A WebSocket client on a plain non-blocking socket (``loop.sock_*``).

    Unlike an asyncio transport, a failed send does not throw away what the server sent
    before it reset the connection: the Close frame stays readable.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buffer = b""

    @classmethod
    async def open(cls, port: int, path: str, subprotocol: str | None) -> SockClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        client = cls(sock)
        await client.loop.sock_connect(sock, (HOST, port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {HOST}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Extensions: permessage-deflate",
        ]
        if subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
        await client.loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in client.buffer:
            await client._fill()
        head, _, client.buffer = client.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"Sec-WebSocket-Extensions: permessage-deflate" in head, head
        return client

    async def _fill(self) -> None:
        data = await asyncio.wait_for(self.loop.sock_recv(self.sock, 65536), 20)
        if not data:
            raise EOFError
        self.buffer += data

    async def recv_frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload as sent: maybe compressed) or None at EOF/reset."""
        try:
            while True:
                buf = self.buffer
                if len(buf) >= 2:
                    length, offset = buf[1] & 0x7F, 2
                    if length == 126 and len(buf) >= 4:
                        length, offset = struct.unpack("!H", buf[2:4])[0], 4
                    elif length == 127 and len(buf) >= 10:
                        length, offset = struct.unpack("!Q", buf[2:10])[0], 10
                    if length < 126 and len(buf) >= offset + length:
                        self.buffer = buf[offset + length :]
                        return buf[0] & 0x0F, buf[offset : offset + length]
                    if length >= 126 and offset > 2 and len(buf) >= offset + length:
                        self.buffer = buf[offset + length :]
                        return buf[0] & 0x0F, buf[offset : offset + length]
                await self._fill()
        except (EOFError, ConnectionError):
            return None

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def send_until_refused(self, chunks: list[bytes]) -> tuple[int, int | None]:
        """Send ``chunks`` while waiting for the server's Close: (bytes sent, close code)."""
        sent = 0

        async def sender() -> None:
            nonlocal sent
            with contextlib.suppress(ConnectionError):
                for chunk in chunks:
                    await self.send(chunk)
                    sent += len(chunk)

        task = asyncio.ensure_future(sender())
        try:
            while True:
                frame = await self.recv_frame()
                if frame is None or frame[0] == 0x8:
                    break
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if frame is None:
            return sent, None
        return sent, struct.unpack("!H", frame[1][:2])[0]

    async def at_eof(self, timeout: float = 5) -> None:
        with contextlib.suppress(EOFError, ConnectionError, asyncio.TimeoutError):
            while True:
                await asyncio.wait_for(self._fill(), timeout)
                self.buffer = b""

    def close(self) -> None:
        self.sock.close()


def masked_frame_chunks(
    opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = True, size: int = 1 << 16
) -> list[bytes]:
    mask = os.urandom(4)
    data = frame_header(opcode, len(payload), fin=fin, rsv1=rsv1) + mask + apply_mask(payload, mask)
    return [data[i : i + size] for i in range(0, len(data), size)]


async def _warm_echo(port: int) -> None:
    """One compressed round trip, so the baseline includes zlib and the connection code."""
    client = await WsClient.open(port, path="/", subprotocol=None, deflate=True)
    try:
        payload = zlib.compressobj(6, zlib.DEFLATED, -15)
        data = payload.compress(b"warm " * 100) + payload.flush(zlib.Z_SYNC_FLUSH)
        await client.send_frame(0x2, data[:-4], rsv1=True)
        frame = await client.recv_frame()
        assert frame is not None and frame.payload == b"warm " * 100
    finally:
        await client.close()


async def test_one_gib_bomb_against_the_echo_server(server_process):
    """1 GiB of zeros in one 1 MB frame against ``pulsewire echo --max-size 1MiB``."""
    server = await server_process("echo", "--port", "0", "--max-size", "1MiB")
    await _warm_echo(server.port)
    baseline = await server.settle()
    client = await SockClient.open(server.port, "/", None)
    bomb = deflate_zeros(1024)
    chunks = masked_frame_chunks(0x2, bomb)
    started = time.monotonic()
    with RssSampler(server.pid) as rss:
        sent, code = await client.send_until_refused(chunks)
        await client.at_eof()
        await asyncio.sleep(0.2)
    elapsed = time.monotonic() - started
    client.close()
    growth = rss.peak - baseline
    print(
        f"\n1 GiB bomb ({len(bomb)} bytes compressed), limit 1 MiB: close {code} after "
        f"{sent} bytes sent in {elapsed:.2f} s; RSS baseline {baseline / MiB:.1f} MiB, "
        f"peak {rss.peak / MiB:.1f} MiB, growth {growth / MiB:.2f} MiB "
        f"({len(rss.samples)} samples)"
    )
    assert code == 1009
    assert growth < BOUND, f"RSS grew by {growth / MiB:.1f} MiB"
    # The server is fine: another client gets its echo.
    await _warm_echo(server.port)


async def test_bomb_in_fragments_against_the_hub(server_process, tmp_path):
    """A hub (``pulsewire serve``, 64 KiB messages): 1 KB fragments of 1 MiB each."""
    config = tmp_path / "hub.toml"
    cfg = hub_config()
    config.write_text(
        f'[hub]\ntoken_hmac_secret = "{cfg.token_hmac_secret}"\napi_key = "{cfg.api_key}"\n'
    )
    server = await server_process("serve", "--config", str(config), "--port", "0")
    client = await SockClient.open(server.port, WS_PATH, JSON_PROTOCOL)
    connect = json.dumps({"id": 1, "method": "connect", "params": {"token": make_token("m")}})
    await client.send(masked_frame_chunks(0x1, connect.encode(), rsv1=False)[0])
    reply = await client.recv_frame()
    assert reply is not None and reply[0] == 0x1, reply
    baseline = await server.settle()
    first, block = deflate_block()
    chunks: list[bytes] = []
    chunks += masked_frame_chunks(0x1, first, fin=False)
    for _ in range(1023):  # 1 GiB in all, ~1 MB on the wire
        chunks += masked_frame_chunks(0x0, block, fin=False, rsv1=False)
    with RssSampler(server.pid) as rss:
        sent, code = await client.send_until_refused(chunks)
        await client.at_eof()
        await asyncio.sleep(0.2)
    client.close()
    growth = rss.peak - baseline
    print(
        f"\nhub bomb in 1 KB fragments (1 MiB each), limit 64 KiB: close {code} after {sent} "
        f"bytes; RSS baseline {baseline / MiB:.1f} MiB, growth {growth / MiB:.2f} MiB"
    )
    assert code == 1009
    assert growth < BOUND


async def test_control_without_a_limit_the_probe_sees_the_memory(server_process):
    """The same probe against ``--max-size none`` and a 64 MiB bomb: RSS must jump, or the
    measurement above proves nothing."""
    server = await server_process("echo", "--port", "0", "--max-size", "none")
    await _warm_echo(server.port)
    baseline = await server.settle()
    client = await WsClient.open(server.port, path="/", subprotocol=None, deflate=True)
    chunks = masked_frame_chunks(0x2, deflate_zeros(64))
    with RssSampler(server.pid) as rss:
        for chunk in chunks:
            await client.send_raw(chunk)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and rss.peak - baseline <= 64 * MiB:
            await asyncio.sleep(0.01)
    await client.close()
    growth = rss.peak - baseline
    print(f"\ncontrol, no limit, 64 MiB bomb: RSS growth {growth / MiB:.1f} MiB")
    assert growth > 64 * MiB
