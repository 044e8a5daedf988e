"""The hub's requests (docs/protocol.md), typed and parsed once.

:meth:`Command.parse` checks a command's envelope (``id``, ``method``, ``params``); each
client command's params parse into one frozen dataclass (:class:`ConnectParams`,
:class:`SubscribeParams`, ... see :data:`CLIENT_PARAMS`), and each HTTP API method's into an
``Api*Params`` one. Parsing checks what can be checked from the message alone (types,
required fields, the channel's name and namespace) and raises
:class:`~pulsewire.hub.errors.HubError` with the code and message the protocol documents
(``connect`` raises :class:`~pulsewire.hub.errors.Disconnect`: its faults end the session).
What depends on the session or the engine (permissions, subscriptions, limits, whether the
channel keeps history or presence) is checked by whoever runs the command.

Replies and pushes are built by :mod:`pulsewire.hub.messages`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from .channels import ChannelName, parse_channel
from .config import HubConfig
from .errors import DISCONNECT_CODES, Disconnect, DisconnectCode, ErrorCode, HubError
from .types import StreamPosition
from .wire import PROTOCOL_VERSION

__all__ = [
    "CLIENT_PARAMS",
    "ApiBroadcastParams",
    "ApiChannelParams",
    "ApiDisconnectParams",
    "ApiHistoryParams",
    "ApiPublishParams",
    "ApiSendParams",
    "ApiSubscribeParams",
    "ApiUnsubscribeParams",
    "ClientParams",
    "Command",
    "ConnectParams",
    "HistoryParams",
    "HistoryQuery",
    "PingParams",
    "PresenceParams",
    "PresenceStatsParams",
    "PublishParams",
    "RefreshParams",
    "RpcParams",
    "SendParams",
    "SubscribeParams",
    "UnsubscribeParams",
]


@dataclass(frozen=True, slots=True)
class Command:
    """One command's envelope: ``{"id": n, "method": "...", "params": {...}}``."""

    id: int
    method: str
    params: dict[str, Any]

    @classmethod
    def parse(cls, command: Mapping[str, Any]) -> Command:
        """Raises Disconnect 4501 without a positive integer id, a method and object params
        (missing or empty params are ``{}``)."""
        cid = command.get("id")
        method = command.get("method")
        params = command.get("params") or {}
        if (
            not isinstance(cid, int)
            or cid <= 0
            or not isinstance(method, str)
            or not isinstance(params, dict)
        ):
            raise Disconnect(
                DisconnectCode.BAD_REQUEST,
                "a command needs a positive integer id, a method and object params",
            )
        return cls(cid, method, params)


class ClientParams(Protocol):
    """What every client command's params class offers."""

    method: ClassVar[str]

    @classmethod
    def parse(cls, params: dict[str, Any], config: HubConfig) -> ClientParams: ...


def _bad(message: str) -> HubError:
    return HubError(ErrorCode.BAD_REQUEST, message)


@dataclass(frozen=True, slots=True)
class ConnectParams:
    """``connect``: the first command of a session. Faults end the session (Disconnect)."""

    method: ClassVar[str] = "connect"
    token: str | None = None
    data: Any = None
    subs: dict[Any, dict[str, Any]] | None = None
    """Channels to subscribe at once: each channel's subscribe params (with ``channel``)."""
    server_subs: Mapping[str, dict[str, Any]] | None = None
    """The positions the client holds for the server-side subscriptions of its previous
    session, ``{channel: {"recover": true, "offset": n, "epoch": e}}``: they recover from
    there if the server subscribes it to them again."""

    @classmethod
    def parse(cls, params: dict[str, Any], config: HubConfig | None = None) -> ConnectParams:
        """Raises Disconnect 4505 for another protocol version, 4501 for a non-string token
        or ``server_subs`` that is not an object of objects."""
        version = params.get("version", PROTOCOL_VERSION)
        if version != PROTOCOL_VERSION:
            raise Disconnect(
                DisconnectCode.UNSUPPORTED_PROTOCOL,
                f"protocol version {version!r} is not supported",
            )
        token = params.get("token")
        if token is not None and not isinstance(token, str):
            raise Disconnect(DisconnectCode.BAD_REQUEST, "token must be a string")
        subs = params.get("subs")
        wanted = None
        if isinstance(subs, dict) and subs:
            wanted = {}
            for channel, options in subs.items():
                sub_params = dict(options) if isinstance(options, dict) else {}
                sub_params["channel"] = channel
                wanted[channel] = sub_params
        server_subs = params.get("server_subs")
        if server_subs is not None and not (
            isinstance(server_subs, dict) and all(isinstance(p, dict) for p in server_subs.values())
        ):
            raise Disconnect(
                DisconnectCode.BAD_REQUEST,
                "server_subs must be an object of {channel: {recover, offset, epoch}}",
            )
        return cls(token, params.get("data"), wanted, server_subs or None)


@dataclass(frozen=True, slots=True)
class RefreshParams:
    """``refresh``: new credentials for the session."""

    method: ClassVar[str] = "refresh"
    token: str

    @classmethod
    def parse(cls, params: dict[str, Any], config: HubConfig | None = None) -> RefreshParams:
        token = params.get("token")
        if not isinstance(token, str):
            raise _bad("refresh needs a token")
        return cls(token)


@dataclass(frozen=True, slots=True)
class _ChannelParams:
    channel: ChannelName

    @classmethod
    def parse_channel(cls, params: dict[str, Any], config: HubConfig) -> ChannelName:
        """The first step of parsing a channel command: its ``channel`` (102/107)."""
        return parse_channel(params.get("channel"), config)


_C = TypeVar("_C", bound="_ChannelOnlyParams")


@dataclass(frozen=True, slots=True)
class _ChannelOnlyParams(_ChannelParams):
    """A command whose only parameter is its channel."""

    @classmethod
    def parse(cls: type[_C], params: dict[str, Any], config: HubConfig) -> _C:
        return cls(cls.parse_channel(params, config))


@dataclass(frozen=True, slots=True)
class SubscribeParams(_ChannelParams):
    """``subscribe``: ``channel``, ``token``, and ``recover`` from ``offset``/``epoch``.

    :meth:`parse` parses it all at once; a session parses it in the same steps, each where
    it is needed (:meth:`parse_channel`, then :meth:`parse_token` after the subscription
    checks, then :meth:`parse_since` after the permission checks and the ``on_subscribe``
    hook), so that a subscribe with two faults gets the documented error.
    """

    method: ClassVar[str] = "subscribe"
    token: str | None
    """A subscription token (checked against the session's user by the session)."""
    recover: bool
    since: StreamPosition | None
    """Where to recover from: set when ``recover`` is asked in a channel with history."""
    params: dict[str, Any]
    """The params as sent, for the application's ``on_subscribe`` hook."""

    @classmethod
    def parse(cls, params: dict[str, Any], config: HubConfig) -> SubscribeParams:
        """Raises 102/107 for the channel, 107 for a non-string token or, in a channel with
        history, a ``recover`` without an integer offset and a string epoch."""
        channel = cls.parse_channel(params, config)
        token = cls.parse_token(params)
        since = cls.parse_since(params, channel)
        return cls(channel, token, bool(params.get("recover")), since, params)

    @staticmethod
    def parse_token(params: dict[str, Any]) -> str | None:
        """The subscription ``token``, if any: 107 if it is not a string."""
        token = params.get("token")
        if token is not None and not isinstance(token, str):
            raise _bad("subscription token must be a string")
        return token

    @staticmethod
    def parse_since(params: dict[str, Any], channel: ChannelName) -> StreamPosition | None:
        """Where to recover from: ``None`` unless ``recover`` is asked in a channel with
        history, where it needs an integer ``offset`` and a string ``epoch`` (else 107)."""
        if not (params.get("recover") and channel.options.history):
            return None
        offset = params.get("offset")
        epoch = params.get("epoch")
        if not isinstance(offset, int) or offset < 0 or not isinstance(epoch, str):
            raise _bad("recover needs an integer offset and a string epoch")
        return StreamPosition(offset, epoch)


@dataclass(frozen=True, slots=True)
class UnsubscribeParams(_ChannelOnlyParams):
    """``unsubscribe``: ``channel``."""

    method: ClassVar[str] = "unsubscribe"


@dataclass(frozen=True, slots=True)
class PresenceParams(_ChannelOnlyParams):
    """``presence``: ``channel``."""

    method: ClassVar[str] = "presence"


@dataclass(frozen=True, slots=True)
class PresenceStatsParams(_ChannelOnlyParams):
    """``presence_stats``: ``channel``."""

    method: ClassVar[str] = "presence_stats"


@dataclass(frozen=True, slots=True)
class PublishParams(_ChannelParams):
    """``publish``: ``channel``, ``data``, ``idempotency_key`` (checked by Hub.publish)."""

    method: ClassVar[str] = "publish"
    data: Any
    idempotency_key: Any = None

    @classmethod
    def parse(cls, params: dict[str, Any], config: HubConfig) -> PublishParams:
        """Raises 102/107 for the channel, 107 without ``data``."""
        channel = cls.parse_channel(params, config)
        if "data" not in params:
            raise _bad("publish needs data")
        return cls(channel, params["data"], params.get("idempotency_key"))


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """What part of a channel's history: ``limit``, ``since``, ``reverse`` (client and API)."""

    limit: int | None = None
    since: StreamPosition | None = None
    reverse: bool = False

    @classmethod
    def parse(cls, params: dict[str, Any]) -> HistoryQuery:
        """Raises 107 for a negative or non-integer limit, a since without an integer offset."""
        limit = params.get("limit")
        since = params.get("since")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise _bad("limit must be a non-negative integer")
        position = None
        if since is not None:
            if not isinstance(since, dict) or not isinstance(since.get("offset"), int):
                raise _bad("since must be {offset, epoch}")
            position = StreamPosition(since["offset"], str(since.get("epoch", "")))
        return cls(limit, position, bool(params.get("reverse")))


@dataclass(frozen=True, slots=True)
class HistoryParams(_ChannelParams):
    """``history``: ``channel`` and the :class:`HistoryQuery`.

    A session parses it in two steps: :meth:`parse_channel`, then (once it checked the
    subscription and the channel's permission) :meth:`HistoryQuery.parse`."""

    method: ClassVar[str] = "history"
    query: HistoryQuery

    @classmethod
    def parse(cls, params: dict[str, Any], config: HubConfig) -> HistoryParams:
        return cls(cls.parse_channel(params, config), HistoryQuery.parse(params))


@dataclass(frozen=True, slots=True)
class PingParams:
    """``ping``: no params."""

    method: ClassVar[str] = "ping"

    @classmethod
    def parse(cls, params: dict[str, Any], config: HubConfig | None = None) -> PingParams:
        return cls()


@dataclass(frozen=True, slots=True)
class RpcParams:
    """``rpc``: the application's ``method`` and its ``data``."""

    method: ClassVar[str] = "rpc"
    rpc_method: str
    data: Any = None

    @classmethod
    def parse(cls, params: dict[str, Any], config: HubConfig | None = None) -> RpcParams:
        """Raises 104 without a string ``method`` (as for a missing RPC handler)."""
        method = params.get("method")
        if not isinstance(method, str):
            raise HubError(ErrorCode.METHOD_NOT_FOUND, "no RPC handler for this method")
        return cls(method, params.get("data"))


@dataclass(frozen=True, slots=True)
class SendParams:
    """``send``: ``data`` for the application's ``on_message`` hook (asynchronous: the
    reply carries nothing)."""

    method: ClassVar[str] = "send"
    data: Any

    @classmethod
    def parse(cls, params: dict[str, Any], config: HubConfig | None = None) -> SendParams:
        """Raises 107 without ``data``."""
        if "data" not in params:
            raise _bad("send needs data")
        return cls(params["data"])


CLIENT_PARAMS: dict[str, type[ClientParams]] = {
    cls.method: cls
    for cls in (
        ConnectParams,
        RefreshParams,
        SubscribeParams,
        UnsubscribeParams,
        PublishParams,
        PresenceParams,
        PresenceStatsParams,
        HistoryParams,
        PingParams,
        RpcParams,
        SendParams,
    )
}
"""The params class of each client command, by method name."""


# ------------------------------------------------------------------------ HTTP API


def _nonempty_str(params: dict[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise _bad(f"{key} must be a non-empty string")
    return value


@dataclass(frozen=True, slots=True)
class ApiPublishParams:
    """API ``publish``: ``channel``, ``data``, ``tags``, ``idempotency_key``."""

    channel: str
    data: Any
    tags: dict[str, str] | None = None
    idempotency_key: Any = None

    @classmethod
    def parse(cls, params: dict[str, Any]) -> ApiPublishParams:
        if "data" not in params:
            raise _bad("publish needs data")
        tags = params.get("tags")
        if tags is not None and not (
            isinstance(tags, dict) and all(isinstance(v, str) for v in tags.values())
        ):
            raise _bad("tags must map strings to strings")
        channel = _nonempty_str(params, "channel")
        return cls(channel, params["data"], tags, params.get("idempotency_key"))


@dataclass(frozen=True, slots=True)
class ApiBroadcastParams:
    """API ``broadcast``: ``channels`` (a non-empty list), ``data``, ``idempotency_key``."""

    channels: list[str]
    data: Any
    idempotency_key: Any = None

    @classmethod
    def parse(cls, params: dict[str, Any]) -> ApiBroadcastParams:
        channels = params.get("channels")
        if (
            not isinstance(channels, list)
            or not all(isinstance(c, str) for c in channels)
            or not channels
        ):
            raise _bad("channels must be a non-empty list of strings")
        if "data" not in params:
            raise _bad("broadcast needs data")
        return cls(channels, params["data"], params.get("idempotency_key"))


@dataclass(frozen=True, slots=True)
class ApiChannelParams:
    """API ``presence`` and ``presence_stats``: ``channel``."""

    channel: str

    @classmethod
    def parse(cls, params: dict[str, Any]) -> ApiChannelParams:
        return cls(_nonempty_str(params, "channel"))


@dataclass(frozen=True, slots=True)
class ApiHistoryParams:
    """API ``history``: ``channel`` and the :class:`HistoryQuery`."""

    channel: str
    query: HistoryQuery

    @classmethod
    def parse(cls, params: dict[str, Any]) -> ApiHistoryParams:
        return cls(_nonempty_str(params, "channel"), HistoryQuery.parse(params))


@dataclass(frozen=True, slots=True)
class ApiDisconnectParams:
    """API ``disconnect``: ``user``, ``code`` (a hub disconnect code), ``reason``."""

    user: str
    code: int = DisconnectCode.FORCE_NO_RECONNECT
    reason: str = "disconnected by the server"

    @classmethod
    def parse(cls, params: dict[str, Any]) -> ApiDisconnectParams:
        code = params.get("code", DisconnectCode.FORCE_NO_RECONNECT)
        if not isinstance(code, int) or code not in DISCONNECT_CODES:
            raise _bad("code must be an integer in 4000-4999")
        user = _nonempty_str(params, "user")
        return cls(user, code, str(params.get("reason", "disconnected by the server")))


_U = TypeVar("_U", bound="ApiUnsubscribeParams")


@dataclass(frozen=True, slots=True)
class ApiUnsubscribeParams:
    """API ``unsubscribe``: ``user``, ``channel``, optional ``client`` (one connection of
    the user)."""

    user: str
    channel: str
    client: str | None = None

    @classmethod
    def parse(cls: type[_U], params: dict[str, Any]) -> _U:
        user, channel = _nonempty_str(params, "user"), _nonempty_str(params, "channel")
        client = _nonempty_str(params, "client") if params.get("client") is not None else None
        return cls(user, channel, client)


@dataclass(frozen=True, slots=True)
class ApiSubscribeParams(ApiUnsubscribeParams):
    """API ``subscribe`` (a server-side subscription): ``user``, ``channel``, optional
    ``client`` (one connection of the user)."""


@dataclass(frozen=True, slots=True)
class ApiSendParams:
    """API ``send``: ``data`` and exactly one of ``user`` / ``client`` (taken as given)."""

    data: Any
    user: Any = None
    client: Any = None

    @classmethod
    def parse(cls, params: dict[str, Any]) -> ApiSendParams:
        if "data" not in params:
            raise _bad("send needs data")
        user, client = params.get("user"), params.get("client")
        if (user is None) == (client is None):
            raise _bad("give exactly one of user or client")
        return cls(params["data"], user, client)
