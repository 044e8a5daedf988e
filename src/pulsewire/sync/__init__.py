"""A threaded WebSocket client for scripts and notebooks, on the Sans-I/O core (no asyncio)::

from pulsewire.sync import connect

with connect("ws://127.0.0.1:8765/") as ws:
    ws.send("hello")
    print(ws.recv(timeout=5))
"""

from ..protocol.errors import ConcurrencyError
from .client import ClientConnection, connect

__all__ = ["ClientConnection", "ConcurrencyError", "connect"]
