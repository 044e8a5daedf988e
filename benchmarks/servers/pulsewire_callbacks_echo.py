"""Echo and broadcast server on pulsewire's callback API (``pulsewire.Listener``).

No coroutine per connection: ``on_message`` runs inside the read callback and replies with
``send_nowait``; everything sent while handling one read goes out in one write. Compare with
``pulsewire_echo.py``, the same server written with ``async for message in ws``.
"""

from __future__ import annotations

from _common import MAX_SIZE, announce, parse_args

import pulsewire


class Echo(pulsewire.Listener):
    def on_message(self, ws: pulsewire.Connection, message: str | bytes) -> None:
        ws.send_nowait(message)


class Fanout(pulsewire.Listener):
    """Shared by every /fanout connection: keeps the set that /trigger broadcasts to."""

    def __init__(self) -> None:
        self.connections: set[pulsewire.Connection] = set()

    def on_open(self, ws: pulsewire.Connection) -> None:
        self.connections.add(ws)

    def on_close(self, ws: pulsewire.Connection) -> None:
        self.connections.discard(ws)


class Trigger(pulsewire.Listener):
    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout

    def on_message(self, ws: pulsewire.Connection, message: str | bytes) -> None:
        pulsewire.broadcast(self.fanout.connections, message)


async def main(host: str, port: int, compression: str | None) -> None:
    fanout = Fanout()
    routes = {"/": Echo, "/fanout": fanout, "/trigger": Trigger(fanout)}
    server = await pulsewire.serve(routes, host, port, compression=compression, max_size=MAX_SIZE)
    announce(host, port)
    await server.serve_forever()


if __name__ == "__main__":
    args = parse_args("pulsewire echo server (callback API)")
    pulsewire.run(main(args.host, args.port, None if args.no_compression else "deflate"))
