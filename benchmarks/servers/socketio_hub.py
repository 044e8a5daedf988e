"""python-socketio hub peer for benchmarks/hub_peers.py: an ASGI app under uvicorn (uvloop).

Socket.IO over the WebSocket transport only. A client joins a room by emitting ``join`` with
the room's name (acknowledged with ``"ok"``); ``POST /api/publish`` with
``{"channel": ROOM, "data": ...}`` emits ``pub`` with the data to that room and answers
``{"result": {}}``, like pulsewire's HTTP API. Prints ``listening on http://HOST:PORT/`` once
it listens (``--port 0``: any free port). ``--ping-interval S``: Engine.IO pings every S seconds
(and drops a client that has not answered S seconds later; default: python-socketio's 25 + 20).
``--redis-url URL``: several such processes form one hub through python-socketio's
``AsyncRedisManager`` (an emit on one reaches the room's members on all of them).

    python benchmarks/servers/socketio_hub.py --port 0
    python benchmarks/servers/socketio_hub.py --port 0 --redis-url redis://127.0.0.1:7600/0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from typing import Any

import socketio  # type: ignore[import-untyped]
import uvicorn

sio: socketio.AsyncServer  # made by make_server()


async def join(sid: str, room: str) -> str:
    await sio.enter_room(sid, room)
    return "ok"


def make_server(redis_url: str | None) -> socketio.AsyncServer:
    """The Socket.IO server: on its own, or one of several sharing ``redis_url``."""
    global sio
    manager = socketio.AsyncRedisManager(redis_url) if redis_url else None
    sio = socketio.AsyncServer(
        async_mode="asgi",
        transports=["websocket"],
        cors_allowed_origins=[],
        client_manager=manager,
    )
    sio.on("join", join)
    return sio


async def publish_api(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``POST /api/publish``: emit ``pub`` to a room (everything else: 404)."""
    if scope["type"] != "http":
        return
    if scope["path"] != "/api/publish" or scope["method"] != "POST":
        await respond(send, 404, {"error": "not found"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    params = json.loads(body)
    await sio.emit("pub", params["data"], room=params["channel"])
    await respond(send, 200, {"result": {}})


async def respond(send: Any, status: int, answer: dict[str, Any]) -> None:
    body = json.dumps(answer).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ping-interval", type=float, help="seconds (default: 25, timeout 20)")
    parser.add_argument("--redis-url", help="share rooms with other processes through Redis")
    args = parser.parse_args()
    make_server(args.redis_url)
    if args.ping_interval:
        sio.eio.ping_interval = sio.eio.ping_timeout = args.ping_interval
    # our own listening socket, so that --port 0 can announce the port it got
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(4096)
    app = socketio.ASGIApp(sio, other_asgi_app=publish_api)
    config = uvicorn.Config(app, log_level="warning", access_log=False, backlog=4096)
    server = uvicorn.Server(config)
    print(f"listening on http://{args.host}:{sock.getsockname()[1]}/", flush=True)
    await server.serve(sockets=[sock])


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
