"""The contracts between a hub session and what surrounds it.

:class:`Transport` is what a session needs from the connection that carries it (WebSocket,
SSE, long-polling, ASGI); :class:`SessionHost` is what it needs from its node (implemented by
:class:`~pulsewire.hub.Hub`): public methods only, so that the session and the node do not
import each other. :class:`ConnectRequest` is what an ``authenticate`` hook sees, and
:class:`HookSession` what the other hooks may use of a session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .auth import AuthGuard, Credentials, TokenVerifier
from .channels import ChannelName
from .config import HubConfig
from .fanout import Fanout, Subscription
from .metrics import HubMetrics
from .timers import TimerQueue
from .types import ClientInfo, HistoryResult, PreparedMessage, Publication, StreamPosition

__all__ = ["ConnectRequest", "Hook", "HookSession", "SessionHost", "Transport"]

S_contra = TypeVar("S_contra", contravariant=True)


class Transport(Protocol):
    """What a session needs from the connection that carries it."""

    kind: str
    """"websocket", "sse", "longpoll" (shown in metrics and the admin page)."""

    def send(self, message: str | bytes, prepared: PreparedMessage | None = None) -> None:
        """Queue one encoded message for the client without blocking.

        ``prepared`` (whose ``data`` is ``message``) is given for publication pushes, shared
        by every subscriber with the same codec, so that a transport can share work between
        them (e.g. one WebSocket frame built once for all of them).
        """

    def buffered(self) -> int:
        """Bytes queued for the client and not yet written."""

    def close(self, code: int, reason: str) -> None:
        """End the connection with a disconnect code and reason."""


@dataclass
class ConnectRequest:
    """What an ``authenticate`` hook sees of a connecting client."""

    transport: str
    path: str
    headers: list[tuple[str, str]]
    remote_address: str
    token: str | None = None
    data: Any = None
    client: str = ""
    """The connecting session's client id (set by the session before ``authenticate``)."""
    encoding: str = ""
    """The session's wire encoding, ``"json"`` or ``"msgpack"`` (set likewise)."""


class HookSession(Protocol):
    """What the application's hooks (``on_connect``, ``on_subscribe``, ``on_publish``,
    ``on_rpc``, ``on_message``, ``on_disconnect``) may use of a session (a
    :class:`~pulsewire.hub.session.Session` offers it)."""

    id: str
    """The client id (the ``client`` of the ``connect`` reply)."""
    user: str
    """The user id, ``""`` for an anonymous connection."""
    credentials: Credentials | None
    """Who authenticated (``None`` until connected)."""
    conn_info: Any
    """The connection's ``info`` (``conn_info`` in presence and publications)."""
    request: ConnectRequest
    """The connecting request: transport name, path, headers, remote address, token, data."""
    transport: Transport
    """The connection that carries the session (its ``kind``: "websocket", "sse", ...)."""

    @property
    def connected(self) -> bool:
        """Whether the ``connect`` command succeeded and the session is not closed."""

    def info(self, chan_info: Any = None) -> ClientInfo:
        """This client's info as others see it in a channel."""

    def push(self, message: dict[str, Any]) -> None:
        """Send a push (a message without an id) to the client."""

    def disconnect(self, code: int, reason: str) -> None:
        """End the session (code 4000-4499: the client reconnects; 4500+: it does not)."""


Hook = Callable[..., Any]


class SessionHost(Protocol[S_contra]):
    """What a session needs from its node (the :class:`~pulsewire.hub.Hub`): settings, the
    fan-out that keeps its subscriptions, the application's hooks, and these calls.

    Generic in the session type (``SessionHost[Session]``), so that this module does not
    import the session's."""

    config: HubConfig
    metrics: HubMetrics
    node_id: str
    tokens: TokenVerifier
    auth_guard: AuthGuard
    fanout: Fanout
    timers: TimerQueue
    authenticate: Hook | None
    on_connect: Hook | None
    on_subscribe: Hook | None
    on_publish: Hook | None
    on_rpc: Hook | None
    on_message: Hook | None
    on_refresh: Hook | None
    on_sub_refresh: Hook | None

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` in a task of the node."""

    async def credentials_for(self, request: ConnectRequest) -> Credentials:
        """Authenticate a connecting client (hook, then token); raises Disconnect."""

    def session_connected(self, session: S_contra) -> None:
        """``session`` is connected (its user is known)."""

    def session_closed(
        self, session: S_contra, was_connected: bool, code: int, reason: str
    ) -> None:
        """``session`` ended: its subscriptions end, the node forgets it."""

    async def recover(
        self, channel: ChannelName, since: StreamPosition | None
    ) -> tuple[list[Publication], StreamPosition, bool]:
        """Publications after ``since`` (if all are still kept), the position, and whether
        recovery succeeded; sets where the fan-out's live delivery starts."""

    async def add_presence(self, channel: str, info: ClientInfo) -> None: ...

    async def publish_join(self, channel: str, info: ClientInfo) -> None: ...

    async def forget_presence(self, sub: Subscription) -> None:
        """Remove a subscription's presence entry and push its leave (as configured)."""

    async def publish(
        self,
        channel: str | ChannelName,
        data: Any,
        *,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> StreamPosition | None: ...

    async def presence(self, channel: str | ChannelName) -> dict[str, ClientInfo]: ...

    async def presence_stats(self, channel: str | ChannelName) -> tuple[int, int]: ...

    async def history(
        self,
        channel: str | ChannelName,
        *,
        limit: int | None = None,
        since: StreamPosition | None = None,
        reverse: bool = False,
    ) -> HistoryResult: ...
