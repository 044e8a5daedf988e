"""asyncio bindings: :func:`serve`, :func:`connect`, the connection object and helpers."""

from ..protocol.errors import ConcurrencyError
from .broadcast import broadcast
from .client import ClientConnection, Connect, connect
from .connection import Connection, Listener
from .loop import install_uvloop, run
from .server import Server, ServerConnection, serve

__all__ = [
    "ClientConnection",
    "ConcurrencyError",
    "Connect",
    "Connection",
    "Listener",
    "Server",
    "ServerConnection",
    "broadcast",
    "connect",
    "install_uvloop",
    "run",
    "serve",
]
