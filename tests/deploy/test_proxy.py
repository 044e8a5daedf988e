"""The backend proxy end to end: a real FastAPI backend under uvicorn (``proxy_backend.py``,
a subprocess) answers the hooks of a real ``pulsewire serve`` node, whose clients speak the
protocol over WebSocket; then the backend is killed (SIGKILL)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import pulsewire
from pulsewire.server.settings import ServeOptions, load_settings

from .conftest import API_KEY, HOST, api, free_port

BACKEND = str(Path(__file__).with_name("proxy_backend.py"))
ANN = [("Cookie", "theme=dark; sessionid=ann-session")]
BOB = [("Authorization", "Bearer bob")]


class Backend:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port

    async def calls(self) -> dict[str, int]:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://{HOST}:{self.port}/calls", timeout=5)
        return response.json()  # type: ignore[no-any-return]

    async def wait_calls(self, route: str, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while (await self.calls()).get(route, 0) < count:
            assert time.monotonic() < deadline, f"the backend saw no {count} {route} calls"
            await asyncio.sleep(0.05)  # polling the backend's counter, not waiting a time


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(sys.executable, BACKEND, str(port))
    backend = Backend(proc, port)
    deadline = time.monotonic() + 30
    while True:
        try:
            await backend.calls()
            break
        except httpx.TransportError:
            assert proc.returncode is None, "the backend did not start"
            assert time.monotonic() < deadline, "the backend did not answer in 30 s"
            await asyncio.sleep(0.05)
    yield backend
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def proxy_config(port: int) -> str:
    routes = "".join(
        f"[proxy.{r}]\n" for r in ("connect", "refresh", "subscribe", "publish", "rpc")
    )
    return (
        f'[hub]\napi_key = "{API_KEY}"\n\n'
        "[namespaces.chat]\nallow_publish = true\n[namespaces.secret]\n"
        "[namespaces.short]\n[namespaces.notif]\n\n"
        f'[proxy]\nurl = "http://{HOST}:{port}/pw/"\ntimeout = 1.0\n'
        'include_headers = ["authorization"]\ninclude_cookies = ["sessionid"]\n'
        f"{routes}[proxy.sub_refresh]\ntimeout = 0.5\n"
    )


class Client:
    """A hub client over WebSocket: commands with ids, pushes collected by a reader task."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = 0
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, port: int, headers: Any = ()) -> Client:
        url = f"ws://{HOST}:{port}/connection/websocket"
        return cls(await asyncio.wait_for(pulsewire.connect(url, additional_headers=headers), 10))

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                message = json.loads(data)
                if "push" in message:
                    self.pushes.put_nowait(message)
                else:
                    self.replies.pop(message["id"]).set_result(message)
        except pulsewire.ConnectionClosed:
            pass
        finally:
            for future in self.replies.values():  # closed instead of answering
                if not future.done():
                    future.set_exception(ConnectionError("closed by the server"))

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.ids += 1
        future = self.replies[self.ids] = asyncio.get_running_loop().create_future()
        await self.ws.send(json.dumps({"id": self.ids, "method": method, "params": params or {}}))
        return await asyncio.wait_for(future, 10)

    async def ok(self, method: str, params: dict[str, Any] | None = None) -> Any:
        reply = await self.call(method, params)
        assert "result" in reply, reply
        return reply["result"]

    async def error(self, method: str, params: dict[str, Any] | None = None) -> Any:
        reply = await self.call(method, params)
        assert "error" in reply, reply
        return reply["error"]

    async def push(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        while True:
            message = await asyncio.wait_for(self.pushes.get(), timeout)
            if message["push"] == kind:
                return message

    async def closed(self, timeout: float = 10.0) -> tuple[int, str]:
        await asyncio.wait_for(self.reader, timeout)
        return self.ws.close_code, self.ws.close_reason

    async def close(self) -> None:
        self.ws.abort()
        await asyncio.gather(self.reader, return_exceptions=True)


async def test_the_backend_decides_then_dies(backend: Backend, serve: Any, write_config: Any):
    node = await serve("--port", "0", "--config", write_config(proxy_config(backend.port)))
    port = await node.listening()
    clients: list[Client] = []

    async def client(headers: Any = (), **connect: Any) -> tuple[Client, dict[str, Any]]:
        opened = await Client.open(port, headers)
        clients.append(opened)
        try:
            return opened, await opened.call("connect", connect)
        except ConnectionError:  # closed instead of answering: see closed()
            return opened, {}

    try:
        # connect: allowed by a cookie or a header, refused otherwise
        ann, reply = await client(ANN)
        assert reply["result"]["user"] == "ann" and "expires" not in reply["result"]
        assert reply["result"]["server_subs"] == {"notif:#ann": {}}  # from the backend
        bob, reply = await client(BOB)
        assert reply["result"]["user"] == "bob"
        stranger, _ = await client([("Cookie", "sessionid=forged")])
        assert await stranger.closed() == (4503, "unknown session")

        # the server-side subscription the backend gave: the API's publication arrives
        status, _ = await api(port, "publish", {"channel": "notif:#ann", "data": "for ann"})
        assert status == 200
        push = await ann.push("publication")
        assert (push["channel"], push["data"]) == ("notif:#ann", "for ann")

        # subscribe refused, publish rewritten, rpc answered
        assert await bob.error("subscribe", {"channel": "secret:plans"}) == {
            "code": 103,
            "message": "bob may not read secret:plans",
        }
        await ann.ok("subscribe", {"channel": "chat:room"})
        await bob.ok("subscribe", {"channel": "chat:room"})
        await bob.ok("publish", {"channel": "chat:room", "data": {"text": "hi"}})
        publication = await ann.push("publication")
        assert publication["data"] == {"text": "HI", "by": "bob"}
        assert publication["info"]["chan_info"] == {"seat": 3}
        assert await ann.ok("rpc", {"method": "add", "data": [1, 2, 3]}) == {"data": 6}
        assert (await ann.error("rpc", {"method": "nope"}))["code"] == 104

        # refresh: credentials that expire in 1 s are extended by the backend
        short, reply = await client(ANN, data={"ttl": 1})
        assert "expires" not in reply["result"]  # the server refreshes, not the client
        await backend.wait_calls("refresh", 1)
        await short.ok("ping")

        # sub_refresh: extended once (1 s), then ended with 2501
        await bob.ok("subscribe", {"channel": "short:x"})
        push = await bob.push("unsubscribe")
        assert (push["channel"], push["code"], push["resubscribe"]) == ("short:x", 2501, True)
        assert (await backend.calls())["sub_refresh"] == 2

        # the backend dies: documented codes, within the timeouts; the node goes on
        backend.proc.send_signal(signal.SIGKILL)
        await backend.proc.wait()
        started = time.monotonic()
        late, _ = await client(ANN)
        code, reason = await late.closed()
        assert code == 4010 and reason.startswith("backend unavailable: cannot reach"), reason
        assert time.monotonic() - started < 5
        failed = await bob.error("publish", {"channel": "chat:room", "data": {"text": "x"}})
        assert failed["code"] == 108 and failed["message"].startswith("backend unavailable")
        assert (await ann.error("rpc", {"method": "add", "data": [1]}))["code"] == 108
        status, _ = await api(port, "publish", {"channel": "chat:room", "data": "from the API"})
        assert status == 200
        assert (await ann.push("publication"))["data"] == "from the API"
        assert (await bob.push("publication"))["data"] == "from the API"
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://{HOST}:{port}/metrics", timeout=5)).text
        assert 'pulsewire_proxy_calls_total{outcome="unavailable",route="connect"} 1.0' in metrics
        assert 'pulsewire_proxy_calls_total{outcome="error",route="subscribe"} 1.0' in metrics
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_the_connect_reply_gives_server_side_subscriptions(backend: Backend, tmp_path):
    """Credentials.subs from the backend's ``subs`` (what server-side subscriptions use):
    ``pulsewire serve``'s own node builder, in this process, to look inside the session."""
    from pulsewire.server.node import server_from_settings

    path = tmp_path / "pulsewire.toml"
    path.write_text(proxy_config(backend.port))
    server = server_from_settings(load_settings(ServeOptions(config=str(path), port=0)))
    await server.start()
    try:
        ann = await Client.open(server.port, ANN)
        reply = await ann.ok("connect")
        credentials = server.hub.sessions[reply["client"]].credentials
        assert credentials is not None and credentials.subs == ("notif:#ann",)
        assert credentials.info == {"name": "Ann"}
        await ann.close()
    finally:
        await server.close()


def documented_backend() -> str:
    """The FastAPI backend of docs/proxy.md, as written there."""
    text = (Path(__file__).parents[2] / "docs" / "proxy.md").read_text(encoding="utf-8")
    text = text[text.index("## A minimal FastAPI backend") :]
    return text.split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_documented_backend_runs_as_written(tmp_path: Path) -> None:
    from pulsewire.server.node import server_from_settings

    (tmp_path / "backend.py").write_text(documented_backend())
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", "backend:app", "--app-dir", str(tmp_path),
        "--port", str(port), "--log-level", "warning",
    )  # fmt: skip
    backend = Backend(proc, port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with httpx.AsyncClient() as http:
                    await http.get(f"http://{HOST}:{port}/", timeout=5)
                break
            except httpx.TransportError:
                assert proc.returncode is None and time.monotonic() < deadline
                await asyncio.sleep(0.05)
        routes = "".join(f"[proxy.{r}]\n" for r in ("connect", "refresh", "subscribe", "rpc"))
        config = tmp_path / "pulsewire.toml"
        config.write_text(
            f'[proxy]\nurl = "http://{HOST}:{backend.port}/pulsewire/"\n'
            f'include_cookies = ["sessionid"]\n{routes}[namespaces.admin]\n'
        )
        server = server_from_settings(load_settings(ServeOptions(config=str(config), port=0)))
        await server.start()
        try:
            known = await Client.open(server.port, [("Cookie", "sessionid=s3cr3t")])
            reply = await known.ok("connect")
            assert reply["user"] == "42" and "expires" not in reply
            credentials = server.hub.sessions[reply["client"]].credentials
            assert credentials is not None and credentials.subs == ("notifications:#42",)
            refused = await known.error("subscribe", {"channel": "admin:x"})
            assert refused == {"code": 103, "message": "admins only"}
            assert isinstance((await known.ok("rpc", {"method": "time"}))["data"], float)
            await known.close()
            stranger = await Client.open(server.port)
            await stranger.ws.send(json.dumps({"id": 1, "method": "connect", "params": {}}))
            assert await stranger.closed() == (4503, "log in first")
        finally:
            await server.close()
    finally:
        proc.kill()
        await proc.wait()
