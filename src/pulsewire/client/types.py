"""What the client hands to the application: publications, events, results (frozen)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeAlias

__all__ = [
    "ClientInfo",
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
    "Unsubscribed",
]

State: TypeAlias = Literal["connecting", "connected", "disconnected", "closed"]
"""``connecting``: opening a connection; ``connected``; ``disconnected``: the connection was
lost (or could not open) and the client waits to reconnect; ``closed``: stopped for good."""


class Position(NamedTuple):
    """A place in a channel's stream: the last offset seen and the stream's epoch."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who published, joined or left: the connection id, its user, the token ``info``s."""

    client: str
    user: str
    conn_info: Any = None
    chan_info: Any = None

    @classmethod
    def from_wire(cls, info: Any) -> ClientInfo | None:
        """From the protocol's ``info`` object (``None`` when absent or malformed)."""
        if not isinstance(info, Mapping):
            return None
        return cls(
            str(info.get("client", "")),
            str(info.get("user", "")),
            info.get("conn_info"),
            info.get("chan_info"),
        )


@dataclass(frozen=True, slots=True)
class Publication:
    """One publication of a channel. ``offset`` is set in channels with history; ``info``
    when a client published it; ``tags`` when the server API published it with tags."""

    channel: str
    data: Any
    offset: int | None = None
    info: ClientInfo | None = None
    tags: dict[str, str] | None = None

    @classmethod
    def from_wire(cls, channel: str, pub: Mapping[str, Any]) -> Publication:
        """From a ``publication`` push or an entry of ``publications``."""
        offset = pub.get("offset")
        tags = pub.get("tags")
        return cls(
            channel,
            pub.get("data"),
            offset if isinstance(offset, int) else None,
            ClientInfo.from_wire(pub.get("info")),
            dict(tags) if isinstance(tags, Mapping) else None,
        )


@dataclass(frozen=True, slots=True)
class Subscribed:
    """A subscription was made (or made again after a reconnect).

    ``recovering``: the client asked to recover from its last position; ``recovered``: every
    missed publication was delivered (they come right after this event). ``recovering`` and
    not ``recovered`` means publications were lost: reload the state."""

    channel: str
    recovering: bool
    recovered: bool
    recoverable: bool
    position: Position | None
    server_side: bool = False


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """A subscription ended: ``code`` 0 by the application, 2000 by the server, else the
    error code that made it fail for good."""

    channel: str
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Join:
    """``info`` subscribed to ``channel`` (channels with join/leave)."""

    channel: str
    info: ClientInfo | None


@dataclass(frozen=True, slots=True)
class Leave:
    """``info`` left ``channel`` (channels with join/leave)."""

    channel: str
    info: ClientInfo | None


Event: TypeAlias = Publication | Subscribed | Unsubscribed | Join | Leave
"""What :meth:`Subscription.events` yields, in the order it happened."""


@dataclass(frozen=True, slots=True)
class Message:
    """Data the server sent to this connection or its user (the server API's ``send``)."""

    data: Any


@dataclass(frozen=True, slots=True)
class StateChange:
    """The client's state changed. ``code``/``reason``: why (the disconnect code when a
    connection ended, ``None`` otherwise)."""

    state: State
    previous: State
    code: int | None = None
    reason: str = ""


class PresenceStats(NamedTuple):
    """How many connections and distinct users are subscribed to a channel."""

    num_clients: int
    num_users: int


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """Publications kept in a channel's history, and the stream's current position."""

    publications: list[Publication] = field(default_factory=list)
    position: Position | None = None
