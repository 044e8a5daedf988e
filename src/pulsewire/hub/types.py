"""The hub's value types: who a client is, what was published, where a stream stands."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "ClientInfo",
    "HistoryResult",
    "PreparedMessage",
    "Publication",
    "PublishOptions",
    "StreamPosition",
]


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """A connection as others see it (presence, join/leave, publisher info)."""

    client: str
    user: str
    conn_info: Any = None
    chan_info: Any = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"client": self.client, "user": self.user}
        if self.conn_info is not None:
            out["conn_info"] = self.conn_info
        if self.chan_info is not None:
            out["chan_info"] = self.chan_info
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClientInfo:
        return cls(
            str(data.get("client", "")),
            str(data.get("user", "")),
            data.get("conn_info"),
            data.get("chan_info"),
        )


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """A place in a channel's history stream: offsets only compare within one epoch."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Publication:
    """One message published to a channel (immutable: engines give the positions they assign
    to a new copy, see :meth:`~pulsewire.hub.engines.base.Broker.publish`).

    ``offset`` is 0 for channels without history. ``prev`` is the offset of the publication
    before it in the same stream (``offset - 1`` for engines with contiguous offsets): the hub
    uses it to notice a gap in live delivery and fill it from history.
    """

    data: Any
    offset: int = 0
    prev: int | None = None
    epoch: str = ""
    info: ClientInfo | None = None
    tags: dict[str, str] | None = None
    origin: str = ""
    """The node that published it (engines use it to skip their own echo)."""
    published_at: float = 0.0
    """time.time() at publish, for the publish-to-deliver latency metric."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"data": self.data}
        if self.offset:
            out["offset"] = self.offset
        if self.prev is not None:
            out["prev"] = self.prev
        if self.epoch:
            out["epoch"] = self.epoch
        if self.info is not None:
            out["info"] = self.info.to_dict()
        if self.tags:
            out["tags"] = self.tags
        if self.origin:
            out["origin"] = self.origin
        if self.published_at:
            out["ts"] = self.published_at
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Publication:
        info = data.get("info")
        return cls(
            data=data.get("data"),
            offset=int(data.get("offset", 0)),
            prev=data.get("prev"),
            epoch=data.get("epoch", ""),
            info=ClientInfo.from_dict(info) if info else None,
            tags=data.get("tags"),
            origin=data.get("origin", ""),
            published_at=float(data.get("ts", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class HistoryResult:
    publications: list[Publication]
    position: StreamPosition


@dataclass(frozen=True, slots=True)
class PublishOptions:
    """How a channel's publications are kept (from its namespace options)."""

    history_size: int = 0
    history_ttl: float = 0.0
    history_meta_ttl: float = 30 * 24 * 3600.0

    @property
    def history(self) -> bool:
        return self.history_size > 0 and self.history_ttl > 0


class PreparedMessage:
    """A push encoded once for one codec, handed to every subscriber that uses the codec.

    ``data`` is the encoded message. ``frame`` is where a transport memoises what it builds
    from ``data`` for every connection (the WebSocket transport: its prepared frame), so that
    a publication is framed once per codec, not once per subscriber.
    """

    __slots__ = ("data", "frame")

    def __init__(self, data: str | bytes) -> None:
        self.data = data
        self.frame: Any = None
