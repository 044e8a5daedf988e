"""A scripted stand-in for the hub: a real local WebSocket server whose every connection the
test drives by hand (read the client's commands, answer them, push, close). For wire
behaviour the real hub does not have yet, or cannot be made to show on demand."""

from __future__ import annotations

import asyncio
import json
from typing import Any

HOST = "127.0.0.1"
TIMEOUT = 5.0


class FakeSession:
    """One client connection, as the server sees it."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.done = asyncio.Event()

    async def command(self, method: str | None = None) -> dict[str, Any]:
        """The next command (skipping pings, which are answered), checked against ``method``."""
        while True:
            data = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
            command: dict[str, Any] = json.loads(data)
            if command["method"] == "ping" and method != "ping":
                await self.reply(command, {})
                continue
            if method is not None:
                assert command["method"] == method, command
            return command

    async def reply(self, command: dict[str, Any], result: dict[str, Any]) -> None:
        await self.ws.send(json.dumps({"id": command["id"], "result": result}))

    async def error(self, command: dict[str, Any], code: int, message: str) -> None:
        await self.ws.send(
            json.dumps({"id": command["id"], "error": {"code": code, "message": message}})
        )

    async def push(self, kind: str, **fields: Any) -> None:
        await self.ws.send(json.dumps({"push": kind, **fields}))

    async def close(self, code: int = 4000, reason: str = "bye") -> None:
        await self.ws.close(code, reason)
        self.done.set()


class FakeHub:
    def __init__(self) -> None:
        self.sessions: asyncio.Queue[FakeSession] = asyncio.Queue()
        self.all: list[FakeSession] = []
        self.url = ""

    async def handler(self, ws: Any) -> None:
        session = FakeSession(ws)
        self.all.append(session)
        await self.sessions.put(session)
        await session.done.wait()

    async def session(self) -> FakeSession:
        """The next connection to arrive."""
        return await asyncio.wait_for(self.sessions.get(), TIMEOUT)
