"""``pulsewire.client``: the hub client for Python (asyncio), and a threaded wrapper.

::

    import pulsewire.client

    async with pulsewire.client.connect("ws://127.0.0.1:8000/connection/websocket",
                                        token="...") as client:
        sub = await client.subscribe("chat:lobby")
        await client.publish("chat:lobby", {"text": "hi"})
        async for pub in sub:
            print(pub.data, pub.offset, pub.info)

The same semantics as the browser client ``pulsewire.js``: reconnects with backoff and full
jitter, recovers subscriptions (each publication once, in order), refreshes tokens. See
docs/client.md. ``pulsewire.client.sync`` runs it on a background thread for scripts.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from ..aio.signatures import forwards_to
from .backoff import Backoff
from .client import Client
from .errors import ClientClosed, ClientError, ClientTimeout, ConnectionLost
from .subscription import Subscription
from .types import (
    ClientInfo,
    Event,
    HistoryResult,
    Join,
    Leave,
    Message,
    Position,
    PresenceStats,
    Publication,
    State,
    StateChange,
    Subscribed,
    Unsubscribed,
)

__all__ = [
    "Backoff",
    "Client",
    "ClientClosed",
    "ClientError",
    "ClientInfo",
    "ClientTimeout",
    "Connect",
    "ConnectionLost",
    "Event",
    "HistoryResult",
    "Join",
    "Leave",
    "Message",
    "Position",
    "PresenceStats",
    "Publication",
    "State",
    "StateChange",
    "Subscribed",
    "Subscription",
    "Unsubscribed",
    "connect",
]


class Connect:
    """What :func:`connect` returns: ``await`` it, or use it with ``async with`` (which
    closes the client on exit)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def __await__(self) -> Generator[Any, None, Client]:
        return self.client.start().__await__()

    async def __aenter__(self) -> Client:
        return await self.client.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.close()


@forwards_to(Client)
def connect(*args: Any, **options: Any) -> Connect:
    """Connect to the hub at ``urls`` (a WebSocket URL such as
    ``ws://127.0.0.1:8000/connection/websocket``, or a list of them: the nodes of a
    cluster). ``async with connect(...) as client:`` or ``client = await connect(...)``.

    Options (all keyword): ``token``, ``get_token`` (sync or async callable returning a
    token: called when there is none, after 4002 and to refresh), ``codec`` (``"json"`` or
    ``"msgpack"``), ``data`` (for the ``authenticate`` hook), ``timeout`` (10 s),
    ``min_reconnect_delay`` / ``max_reconnect_delay`` (0.5 s / 20 s), ``ping_interval`` /
    ``ping_timeout`` (25 s / 10 s), ``on_state``, ``on_message``,
    ``on_server_subscription``, ``ws_options`` (passed to :func:`pulsewire.connect`, e.g.
    ``ssl``, ``additional_headers``). Raises :class:`ClientClosed` when the hub refuses
    for good (e.g. 4500 invalid token, 4503 a token is required), :class:`ClientTimeout`
    when no connection succeeded within ``timeout``.
    """
    return Connect(Client(*args, **options))
