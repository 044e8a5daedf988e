"""Control messages: what nodes tell each other through the engine's control channel.

Each kind is a frozen dataclass; :meth:`to_dict` gives the dict the engine carries (keyed by
``"op"``, the same dicts as before these classes, so nodes of an older version understand
them) and :func:`parse_control` reads one back, as leniently as the hub always has (missing
fields take defaults, values are coerced). ``sender`` is the sending node's name (``"from"``).

* commands for sessions, run by every node on its own sessions of ``user`` (or, without a
  user, on the session ``client``; with both, on that session if it is the user's):
  :class:`DisconnectControl`,
  :class:`UnsubscribeControl`, :class:`SubscribeControl`, :class:`MessageControl`;
* node liveness (:mod:`pulsewire.hub.nodes`): :class:`NodeAnnounce` every few seconds,
  :class:`NodeDead` when a node is declared dead, :class:`NodeGone` when one stops;
* backpressure (:mod:`pulsewire.hub.backpressure`): :class:`NodeLoad` when a node's overload
  state changes, and every second while it is overloaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from .errors import DisconnectCode

__all__ = [
    "NODE_OPS",
    "Control",
    "DisconnectControl",
    "MessageControl",
    "NodeAnnounce",
    "NodeDead",
    "NodeGone",
    "NodeLoad",
    "SubscribeControl",
    "UnsubscribeControl",
    "parse_control",
]


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _sender(message: dict[str, Any]) -> str:
    return str(message.get("from") or "")


def _instance(message: dict[str, Any]) -> str:
    instance = message.get("instance")
    return instance if isinstance(instance, str) else ""


def _with_sender(out: dict[str, Any], sender: str) -> dict[str, Any]:
    if sender:
        out["from"] = sender
    return out


@dataclass(frozen=True, slots=True)
class DisconnectControl:
    """End the sessions of ``user`` (or the session ``client``) on every node."""

    op: ClassVar[str] = "disconnect"
    user: str | None
    client: str | None = None
    code: int = DisconnectCode.FORCE_NO_RECONNECT
    reason: str = ""
    sender: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "user": self.user}
        if self.client is not None:
            out["client"] = self.client
        out["code"] = self.code
        out["reason"] = self.reason
        return _with_sender(out, self.sender)

    @classmethod
    def from_dict(cls, message: dict[str, Any]) -> DisconnectControl:
        """Raises ValueError for a code that is not an integer."""
        try:
            code = int(message.get("code", DisconnectCode.FORCE_NO_RECONNECT))
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"bad disconnect code {message.get('code')!r}") from None
        return cls(
            _optional_str(message.get("user")),
            _optional_str(message.get("client")),
            code,
            str(message.get("reason", "")),
            _sender(message),
        )


_C = TypeVar("_C", bound="_ChannelControl")


@dataclass(frozen=True, slots=True)
class _ChannelControl:
    """A control about one channel for the sessions of ``user`` (or only the session
    ``client`` of the user, when given); its ``op`` says what to do."""

    op: ClassVar[str]
    user: str | None
    channel: str
    client: str | None = None
    sender: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "user": self.user}
        if self.client is not None:
            out["client"] = self.client
        out["channel"] = self.channel
        return _with_sender(out, self.sender)

    @classmethod
    def from_dict(cls: type[_C], message: dict[str, Any]) -> _C:
        return cls(
            _optional_str(message.get("user")),
            str(message.get("channel")),
            _optional_str(message.get("client")),
            _sender(message),
        )


@dataclass(frozen=True, slots=True)
class UnsubscribeControl(_ChannelControl):
    """Unsubscribe the sessions of ``user`` (or the session ``client``) from ``channel``."""

    op: ClassVar[str] = "unsubscribe"


@dataclass(frozen=True, slots=True)
class SubscribeControl(_ChannelControl):
    """Subscribe the sessions of ``user`` (only the session ``client`` of the user, when
    given) to ``channel``: a server-side subscription. Nodes of older versions ignore it."""

    op: ClassVar[str] = "subscribe"


@dataclass(frozen=True, slots=True)
class MessageControl:
    """Push ``data`` as a ``message`` to the sessions of ``user`` or to the session
    ``client`` (exactly one is given)."""

    op: ClassVar[str] = "message"
    user: str | None
    client: str | None
    data: Any
    sender: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {"op": self.op, "user": self.user, "client": self.client, "data": self.data}
        return _with_sender(out, self.sender)

    @classmethod
    def from_dict(cls, message: dict[str, Any]) -> MessageControl:
        return cls(
            _optional_str(message.get("user")),
            _optional_str(message.get("client")),
            message.get("data"),
            _sender(message),
        )


@dataclass(frozen=True, slots=True)
class NodeAnnounce:
    """A node is alive: its ``instance`` id (empty from versions without one: listed, not
    watched) and its stats (``info``: name, sessions, users, channels, engine)."""

    op: ClassVar[str] = "node"
    sender: str
    instance: str
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "from": self.sender, "instance": self.instance, "info": self.info}

    @classmethod
    def from_dict(cls, message: dict[str, Any]) -> NodeAnnounce:
        info = message.get("info")
        return cls(
            _sender(message), _instance(message), dict(info) if isinstance(info, dict) else {}
        )


@dataclass(frozen=True, slots=True)
class NodeDead:
    """``sender`` declared the node ``node`` (instance ``instance``) dead."""

    op: ClassVar[str] = "node_dead"
    instance: str
    node: str
    sender: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {"op": self.op, "instance": self.instance, "node": self.node}
        return _with_sender(out, self.sender)

    @classmethod
    def from_dict(cls, message: dict[str, Any]) -> NodeDead:
        return cls(_instance(message), str(message.get("node") or ""), _sender(message))


@dataclass(frozen=True, slots=True)
class NodeGone:
    """The node ``sender`` (instance ``instance``) is stopping; ``clean`` when its own
    presence removals all went through (else the others remove what is left)."""

    op: ClassVar[str] = "node_gone"
    instance: str
    clean: bool
    sender: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {"op": self.op, "instance": self.instance, "clean": self.clean}
        return _with_sender(out, self.sender)

    @classmethod
    def from_dict(cls, message: dict[str, Any]) -> NodeGone:
        return cls(_instance(message), bool(message.get("clean")), _sender(message))


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """The node ``sender`` (instance ``instance``) is ``overloaded`` (or no longer), behind on
    delivery by ``lag`` seconds, on ``channels`` (names) or on every channel (``"all"``)."""

    op: ClassVar[str] = "load"
    sender: str
    instance: str
    overloaded: bool
    lag: float = 0.0
    channels: tuple[str, ...] | str = ()

    def to_dict(self) -> dict[str, Any]:
        channels = self.channels if isinstance(self.channels, str) else list(self.channels)
        return {
            "op": self.op,
            "from": self.sender,
            "instance": self.instance,
            "overloaded": self.overloaded,
            "lag": self.lag,
            "channels": channels,
        }

    @classmethod
    def from_dict(cls, message: dict[str, Any]) -> NodeLoad:
        """Raises ValueError for a lag that is not a number or channels that are neither
        ``"all"`` nor a list."""
        try:
            lag = float(message.get("lag") or 0.0)
        except (TypeError, ValueError, OverflowError):
            lag = math.nan
        if not 0 <= lag < math.inf:
            raise ValueError(f"bad load lag {message.get('lag')!r}")
        raw = message.get("channels") or ()
        channels: tuple[str, ...] | str
        if raw == "all":
            channels = "all"
        elif isinstance(raw, (list, tuple)):
            channels = tuple(sorted(str(name) for name in raw))
        else:
            raise ValueError(f"bad load channels {raw!r}")
        overloaded = bool(message.get("overloaded"))
        return cls(_sender(message), _instance(message), overloaded, lag, channels)


Control = (
    DisconnectControl
    | UnsubscribeControl
    | SubscribeControl
    | MessageControl
    | NodeAnnounce
    | NodeDead
    | NodeGone
    | NodeLoad
)
"""Any control message."""

_KINDS: dict[str, Any] = {
    cls.op: cls
    for cls in (
        DisconnectControl,
        UnsubscribeControl,
        SubscribeControl,
        MessageControl,
        NodeAnnounce,
        NodeDead,
        NodeGone,
        NodeLoad,
    )
}

NODE_OPS = frozenset({NodeAnnounce.op, NodeDead.op, NodeGone.op, NodeLoad.op})
"""The ops about nodes (the others are commands for sessions)."""


def parse_control(message: dict[str, Any]) -> Control | None:
    """The control message in ``message``, or None for an op this version does not know
    (a newer node's: ignored). Raises ValueError for a malformed one."""
    op = message.get("op")
    kind = _KINDS.get(op) if isinstance(op, str) else None
    if kind is None:
        return None
    parsed: Control = kind.from_dict(message)
    return parsed
