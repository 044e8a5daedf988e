"""Echo and broadcast server on pulsewire, on uvloop when it is installed (``pulsewire.run``).

Uses ``pulsewire.serve(handler_or_routes, host, port,
compression="deflate" | None, max_size=...)``, ``server.serve_forever()`` and
``pulsewire.broadcast(connections, message)``.
"""

from __future__ import annotations

from typing import Any

from _common import MAX_SIZE, announce, parse_args

import pulsewire

FANOUT: set[Any] = set()


async def echo(ws: Any) -> None:
    async for message in ws:
        await ws.send(message)


async def fanout(ws: Any) -> None:
    FANOUT.add(ws)
    try:
        async for _ in ws:
            pass
    finally:
        FANOUT.discard(ws)


async def trigger(ws: Any) -> None:
    async for message in ws:
        pulsewire.broadcast(FANOUT, message)


async def main(host: str, port: int, compression: str | None) -> None:
    routes = {"/": echo, "/fanout": fanout, "/trigger": trigger}
    server = await pulsewire.serve(routes, host, port, compression=compression, max_size=MAX_SIZE)
    announce(host, port)
    await server.serve_forever()


if __name__ == "__main__":
    args = parse_args("pulsewire echo server")
    pulsewire.run(main(args.host, args.port, None if args.no_compression else "deflate"))
