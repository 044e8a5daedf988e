"""pulsewire: real-time communication for Python on WebSockets.

The asyncio API at a glance::

    import pulsewire

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async def main():
        async with pulsewire.serve(echo, "127.0.0.1", 8765):
            async with pulsewire.connect("ws://127.0.0.1:8765/") as ws:
                await ws.send("hello")
                print(await ws.recv())

    pulsewire.run(main())
"""

from .aio import (
    ClientConnection,
    Connection,
    Listener,
    Server,
    ServerConnection,
    broadcast,
    connect,
    run,
    serve,
)
from .aio.browser import CloseEvent, MessageEvent, WebSocket
from .protocol import (
    Close,
    CloseCode,
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    DeflateOptions,
    InvalidHandshake,
    InvalidStatus,
    NegotiationError,
    PayloadTooBig,
    ProtocolError,
    PulsewireError,
    Refused,
    State,
)
from .protocol.handshake import OriginPolicy

__version__ = "0.1.0"

__all__ = [
    "ClientConnection",
    "Close",
    "CloseCode",
    "CloseEvent",
    "ConcurrencyError",
    "Connection",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "DeflateOptions",
    "InvalidHandshake",
    "InvalidStatus",
    "Listener",
    "MessageEvent",
    "NegotiationError",
    "OriginPolicy",
    "PayloadTooBig",
    "ProtocolError",
    "PulsewireError",
    "Refused",
    "Server",
    "ServerConnection",
    "State",
    "WebSocket",
    "broadcast",
    "connect",
    "run",
    "serve",
]
