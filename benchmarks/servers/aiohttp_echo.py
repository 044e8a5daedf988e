"""Echo and broadcast server on aiohttp's web.WebSocketResponse, with uvloop.

aiohttp has no broadcast helper: /trigger awaits send_str/send_bytes on each /fanout connection.
"""

from __future__ import annotations

import asyncio

import uvloop
from _common import MAX_SIZE, announce, parse_args
from aiohttp import WSMsgType, web

FANOUT: set[web.WebSocketResponse] = set()


async def send(ws: web.WebSocketResponse, msg_type: WSMsgType, data: str | bytes) -> None:
    if msg_type == WSMsgType.TEXT:
        await ws.send_str(data)  # type: ignore[arg-type]
    else:
        await ws.send_bytes(data)  # type: ignore[arg-type]


def build_app(compress: bool) -> web.Application:
    async def open_ws(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=compress, max_msg_size=MAX_SIZE)
        await ws.prepare(request)
        return ws

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = await open_ws(request)
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await send(ws, msg.type, msg.data)
        return ws

    async def fanout(request: web.Request) -> web.WebSocketResponse:
        ws = await open_ws(request)
        FANOUT.add(ws)
        try:
            async for _ in ws:
                pass
        finally:
            FANOUT.discard(ws)
        return ws

    async def trigger(request: web.Request) -> web.WebSocketResponse:
        ws = await open_ws(request)
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                for receiver in list(FANOUT):
                    if not receiver.closed:
                        await send(receiver, msg.type, msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/", echo)
    app.router.add_get("/fanout", fanout)
    app.router.add_get("/trigger", trigger)
    return app


def main() -> None:
    args = parse_args("aiohttp echo server (uvloop)")

    async def serve() -> None:
        runner = web.AppRunner(build_app(compress=not args.no_compression), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port).start()
        announce(args.host, args.port)
        await asyncio.Event().wait()  # until the runner kills us

    uvloop.run(serve())


if __name__ == "__main__":
    main()
