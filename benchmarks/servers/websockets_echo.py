"""Echo and broadcast server on the websockets asyncio API, with uvloop.

``run()`` takes the library's ``serve`` and ``broadcast`` so that picows' websockets-compatible
API (picows_websockets_echo.py) runs the very same code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import uvloop
from _common import MAX_SIZE, announce, parse_args

FANOUT: set[Any] = set()


def make_handler(broadcast: Callable[[Any, Any], None]) -> Callable[[Any], Any]:
    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    async def fanout(ws: Any) -> None:
        FANOUT.add(ws)
        try:
            await ws.wait_closed()
        finally:
            FANOUT.discard(ws)

    async def trigger(ws: Any) -> None:
        async for message in ws:
            broadcast(FANOUT, message)

    routes = {"/fanout": fanout, "/trigger": trigger}

    async def handler(ws: Any) -> None:
        await routes.get(ws.request.path, echo)(ws)

    return handler


def run(serve: Any, broadcast: Callable[[Any, Any], None], description: str) -> None:
    args = parse_args(description)

    async def main() -> None:
        compression = None if args.no_compression else "deflate"
        server = await serve(
            make_handler(broadcast),
            args.host,
            args.port,
            compression=compression,
            max_size=MAX_SIZE,
        )
        announce(args.host, args.port)
        await server.serve_forever()

    uvloop.run(main())


if __name__ == "__main__":
    from websockets.asyncio.server import broadcast, serve

    run(serve, broadcast, "websockets echo server (uvloop)")
