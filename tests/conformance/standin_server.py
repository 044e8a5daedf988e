"""Stand-in echo server built on the ``websockets`` library.

It mimics the command-line contract of ``pulsewire echo`` so that the Autobahn harness can be
validated (and compared) against a known implementation::

    python standin_server.py --host 127.0.0.1 --port 9001

prints ``listening on ws://127.0.0.1:9001/`` once it accepts connections, echoes every message
back unchanged, and exits cleanly on SIGINT or SIGTERM. Like pulsewire's ``echo`` it sets no
message size limit; websockets' separate cap on fragments per message (4096 by default, too few
for cases 9.3.1 and 9.4.1: 4 MiB in 64-byte frames) is raised through its environment variable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

os.environ.setdefault("WEBSOCKETS_MAX_FRAGMENTS", str(1 << 20))  # read when websockets loads

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


async def echo(ws: ServerConnection) -> None:
    """Send every received message back with the same type."""
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass  # protocol errors are expected in many cases; the suite judges them


async def main(host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop)
    async with serve(echo, host, port, compression="deflate", max_size=None) as server:
        bound_port = server.sockets[0].getsockname()[1]
        print(f"listening on ws://{host}:{bound_port}/", flush=True)
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
