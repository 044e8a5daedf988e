"""Hand-driven HTTP, SSE and long-poll clients for the adversarial HTTP tests.

Each opens its own TCP connection from a chosen source address (the attacker's by default)
with :func:`open_tcp`, so that it can stop reading, stop writing, vanish with a reset or
pipeline anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import Sequence
from typing import Any

from security.conftest import HttpAnswer

from .conftest import ATTACKER, HOST, make_token, open_tcp

__all__ = [
    "Conn",
    "LongPoll",
    "Sse",
    "request",
]


def request(
    method: str,
    target: str,
    *,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    length: int | None = None,
) -> bytes:
    """One request's bytes; ``length`` declares a Content-Length other than the body's."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if length is None and (body or method == "POST"):
        length = len(body)
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Conn:
    """One TCP connection to the node."""

    opened = 0
    """Connections opened so far (by every instance; for the figures of a test)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(
        cls, port: int, source: str = ATTACKER, *, rcvbuf: int | None = None, limit: int = 1 << 16
    ) -> Conn:
        reader, writer = await open_tcp(port, source, rcvbuf=rcvbuf, limit=limit)
        Conn.opened += 1
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        """Queue ``data`` without waiting for the server to take it."""
        self.writer.write(data)

    async def send_all(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, timeout: float = 10.0) -> HttpAnswer:
        """The next response: a body by Content-Length, none for 204/304 or an event stream."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        headers = [tuple(line.split(": ", 1)) for line in lines[1:] if line]
        answer = HttpAnswer(int(lines[0].split(" ", 2)[1]), headers, b"")  # type: ignore[arg-type]
        length = answer.header("Content-Length")
        if length is not None and answer.status not in (204, 304):
            answer.body = await asyncio.wait_for(self.reader.readexactly(int(length)), timeout)
        return answer

    async def call(self, data: bytes, timeout: float = 10.0) -> HttpAnswer:
        await self.send_all(data)
        return await self.answer(timeout)

    async def closed_by_server(self, timeout: float = 10.0) -> bool:
        """True once the server closed the connection (EOF or reset); reads and drops."""

        async def drain() -> None:
            with contextlib.suppress(ConnectionError):
                while await self.reader.read(1 << 16):
                    pass

        try:
            await asyncio.wait_for(drain(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.writer.close()

    def reset(self) -> None:
        """Vanish: close with a TCP reset (SO_LINGER 0), whatever is unread or unsent."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


JSON = [("Content-Type", "application/json")]


async def send_commands(
    port: int, path: str, session: str, commands: list[dict[str, Any]], source: str = ATTACKER
) -> int:
    """POST commands (JSON lines) to ``path?session=``; returns the status."""
    body = "\n".join(json.dumps(c) for c in commands).encode()
    conn = await Conn.open(port, source)
    try:
        answer = await conn.call(
            request("POST", f"{path}?session={session}", body=body, headers=JSON)
        )
    finally:
        conn.close()
    return answer.status


def connect_and_subscribe(user: str, channel: str) -> list[dict[str, Any]]:
    return [
        {"id": 1, "method": "connect", "params": {"token": make_token(user)}},
        {"id": 2, "method": "subscribe", "params": {"channel": channel}},
    ]


class Sse:
    """An event stream (``GET /connection/sse``) and its session id."""

    def __init__(self, conn: Conn, session: str) -> None:
        self.conn = conn
        self.session = session

    @classmethod
    async def open(
        cls, port: int, source: str = ATTACKER, *, rcvbuf: int | None = None, limit: int = 1 << 16
    ) -> Sse:
        conn = await Conn.open(port, source, rcvbuf=rcvbuf, limit=limit)
        conn.send(request("GET", "/connection/sse"))
        answer = await conn.answer()
        assert answer.status == 200, answer
        hello = await asyncio.wait_for(conn.reader.readuntil(b"\n\n"), 10)
        session = json.loads(hello.split(b"data: ", 1)[1])["session"]
        return cls(conn, session)

    async def send(self, port: int, commands: list[dict[str, Any]]) -> int:
        return await send_commands(port, "/connection/sse/send", self.session, commands)

    async def event(self, timeout: float = 10.0) -> Any:
        """The next data event's JSON (comments skipped)."""
        while True:
            raw = await asyncio.wait_for(self.conn.reader.readuntil(b"\n\n"), timeout)
            if raw.startswith(b"data: "):
                return json.loads(raw[6:])


class LongPoll:
    """A long-poll session driven over one keep-alive connection."""

    def __init__(self, conn: Conn, port: int, session: str) -> None:
        self.conn = conn
        self.port = port
        self.session = session

    @classmethod
    async def open(cls, port: int, source: str = ATTACKER) -> LongPoll:
        conn = await Conn.open(port, source)
        answer = await conn.call(request("POST", "/connection/longpoll/open"))
        assert answer.status == 200, answer
        return cls(conn, port, json.loads(answer.body)["session"])

    async def send(self, commands: list[dict[str, Any]]) -> int:
        body = "\n".join(json.dumps(c) for c in commands).encode()
        target = f"/connection/longpoll/send?session={self.session}"
        return (await self.conn.call(request("POST", target, body=body, headers=JSON))).status

    def start_poll(self) -> None:
        self.conn.send(request("GET", f"/connection/longpoll/poll?session={self.session}"))

    async def poll(self, timeout: float = 40.0) -> HttpAnswer:
        self.start_poll()
        return await self.conn.answer(timeout)

    async def close_session(self) -> int:
        target = f"/connection/longpoll/close?session={self.session}"
        return (await self.conn.call(request("POST", target))).status
