"""Shared fixtures: pulsewire servers on free loopback ports and a raw-socket WebSocket client.

* ``echo_server``: the ws:// URL of a pulsewire echo server.
* ``start_server``: ``server, url = await start_server(handler, **serve_options)``; every server
  is closed at teardown.
* ``raw_client``: ``raw = await raw_client(port, path="/", headers=[...])`` opens a TCP
  connection, performs the opening handshake by hand and returns a :class:`RawClient` that
  sends frames built with ``pulsewire.protocol.frames.build_frame`` (masked or not, any bits)
  and reads the server's frames one by one. ``handshake=False`` leaves the socket fresh.
* ``start_hub_server``: ``server = await start_hub_server(HubServer(...))`` starts a
  :class:`HubServer` built by the caller; every one is closed at teardown.
* ``parser``: runs a test on both receive paths of the protocol core: once as installed (the C
  accelerator's fast path, masking and serialisation; skipped when it is not built) and once
  on the pure-Python path, as with ``PULSEWIRE_NO_EXTENSIONS=1``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

import pulsewire
from pulsewire.protocol import connection, frames, writing
from pulsewire.protocol.frames import build_frame
from pulsewire.protocol.handshake import accept_key

if TYPE_CHECKING:
    from pulsewire.server.app import HubServer

HOST = "127.0.0.1"


def _without_config_variables() -> None:
    """A developer's ``PULSEWIRE_PORT``, ``PULSEWIRE_API_KEY``... (config keys, see
    docs/configuration.md) would change every node the tests start: they are not passed on."""
    from pulsewire.server.environment import config_variables
    from pulsewire.server.settings import ENV_TABLES

    for name in config_variables(os.environ, ENV_TABLES):
        del os.environ[name]


_without_config_variables()


async def echo_handler(ws: Any) -> None:
    async for message in ws:
        await ws.send(message)


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Awaitable[tuple[Any, str]]]]:
    servers: list[Any] = []

    async def start(handler: Any = echo_handler, **options: Any) -> tuple[Any, str]:
        server = await pulsewire.serve(handler, HOST, 0, **options)
        servers.append(server)
        scheme = "wss" if options.get("ssl") else "ws"
        return server, f"{scheme}://{HOST}:{server.port}/"

    yield start
    for server in servers:
        server.close()
    for server in servers:
        await asyncio.wait_for(server.wait_closed(), 15)


@pytest.fixture
async def echo_server(
    start_server: Callable[..., Awaitable[tuple[Any, str]]],
) -> str:
    _, url = await start_server(echo_handler)
    return url


@pytest.fixture
async def start_hub_server() -> AsyncIterator[Callable[[HubServer], Awaitable[HubServer]]]:
    servers: list[HubServer] = []

    async def start(server: HubServer) -> HubServer:
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await asyncio.wait_for(server.close(), 10)


# --------------------------------------------------------------------------- protocol core


@pytest.fixture(params=["speedups", "python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "speedups":
        if not frames.SPEEDUPS:
            pytest.skip(frames.SPEEDUPS_ABSENT)
    else:
        for module in (connection, writing, frames):
            for name, function in (
                ("apply_mask", frames._py_apply_mask),
                ("build_frame", frames._py_build_frame),
            ):
                if hasattr(module, name):  # wherever the core took it from frames
                    monkeypatch.setattr(module, name, function)
        monkeypatch.setattr(connection, "scan_messages", None, raising=False)
    yield request.param


# ------------------------------------------------------------------------------ raw client


@dataclass(frozen=True)
class RawFrame:
    opcode: int
    payload: bytes
    fin: bool = True
    rsv1: bool = False
    masked: bool = False

    @property
    def close_code(self) -> int | None:
        assert self.opcode == 0x8, self
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8")


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class RawClient:
    """A hand-driven WebSocket (or plain HTTP) client over a real TCP socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.response: HttpResponse | None = None

    # -- opening handshake ---------------------------------------------------------------

    @staticmethod
    def request_bytes(
        path: str = "/", headers: Sequence[tuple[str, str]] = (), key: str | None = None
    ) -> bytes:
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {HOST}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in headers),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def handshake(self, path: str = "/", headers: Sequence[tuple[str, str]] = ()) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        await self.send_raw(self.request_bytes(path, headers, key))
        response = await self.read_head()
        assert response.status == 101, response
        assert response.header("Sec-WebSocket-Accept") == accept_key(key)
        self.response = response

    async def read_head(self, timeout: float = 5) -> HttpResponse:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = [tuple(line.split(": ", 1)) for line in lines[1:] if line]
        return HttpResponse(status, headers, b"")  # type: ignore[arg-type]

    async def read_http_response(self, timeout: float = 5) -> HttpResponse:
        """A complete plain HTTP response (head and Content-Length body)."""
        response = await self.read_head(timeout)
        length = int(response.header("Content-Length") or 0)
        response.body = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        return response

    # -- frames --------------------------------------------------------------------------

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_frame(
        self,
        opcode: int,
        payload: bytes = b"",
        *,
        fin: bool = True,
        rsv1: bool = False,
        mask: bool = True,
    ) -> None:
        first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
        await self.send_raw(build_frame(first, payload, os.urandom(4) if mask else None))

    async def send_close(self, code: int = 1000, reason: str = "") -> None:
        await self.send_frame(0x8, struct.pack("!H", code) + reason.encode())

    async def recv_frame(self, timeout: float = 5) -> RawFrame | None:
        """The next frame from the server, or None at EOF."""
        try:
            return await asyncio.wait_for(self._recv_frame(), timeout)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return None

    async def _recv_frame(self) -> RawFrame:
        b0, b1 = await self.reader.readexactly(2)
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        key = await self.reader.readexactly(4) if b1 & 0x80 else None
        payload = await self.reader.readexactly(length)
        if key is not None:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        return RawFrame(b0 & 0x0F, payload, bool(b0 & 0x80), bool(b0 & 0x40), key is not None)

    async def recv_until_close(self, timeout: float = 5) -> list[RawFrame]:
        """Frames up to and including the Close frame (or up to EOF)."""
        frames = []
        while True:
            frame = await self.recv_frame(timeout)
            if frame is None:
                return frames
            frames.append(frame)
            if frame.opcode == 0x8:
                return frames

    async def at_eof(self, timeout: float = 5) -> bool:
        """Whether the server closes TCP (reading and discarding anything before) in time."""

        async def drain() -> None:
            while await self.reader.read(65536):
                pass

        try:
            await asyncio.wait_for(drain(), timeout)
        except asyncio.TimeoutError:
            return False
        except ConnectionResetError:
            pass
        return True

    async def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


@pytest.fixture
async def raw_client() -> AsyncIterator[Callable[..., Awaitable[RawClient]]]:
    clients: list[RawClient] = []

    async def connect(
        port: int,
        path: str = "/",
        headers: Sequence[tuple[str, str]] = (),
        *,
        handshake: bool = True,
        rcvbuf: int | None = None,
    ) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect(), so the TCP window starts small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        reader, writer = await asyncio.open_connection(sock=sock)
        client = RawClient(reader, writer)
        clients.append(client)
        if handshake:
            await client.handshake(path, headers)
        return client

    yield connect
    for client in clients:
        await client.close()
