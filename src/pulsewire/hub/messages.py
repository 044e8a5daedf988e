"""The hub's replies and pushes (docs/protocol.md), built in one place.

Each function returns the dict a codec encodes. The session, the HTTP API and the HTTP
transports all build from them, so each shape is written once. Requests are parsed by
:mod:`pulsewire.hub.requests`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import HubError, reconnects
from .types import ClientInfo, HistoryResult, Publication, StreamPosition
from .wire import PROTOCOL_VERSION

__all__ = [
    "Message",
    "api_error",
    "api_result",
    "broadcast_result",
    "channels_result",
    "connect_result",
    "disconnect_push",
    "error_dict",
    "error_reply",
    "history_result",
    "info_result",
    "join_push",
    "leave_push",
    "message_push",
    "presence_result",
    "presence_stats_result",
    "publication_dict",
    "publication_push",
    "publish_result",
    "refresh_result",
    "reply",
    "rpc_result",
    "subscribe_push",
    "subscribe_result",
    "unsubscribe_push",
]

Message = dict[str, Any]
"""A reply, push or result as the codec encodes it."""


def error_dict(code: int, message: str) -> Message:
    """The ``error`` object of a reply or API answer."""
    return {"code": code, "message": message}


def reply(cid: int, result: Message | None) -> Message:
    """A command's successful reply (``result`` is ``{}`` when there is nothing to say)."""
    return {"id": cid, "result": result if result is not None else {}}


def error_reply(cid: int, code: int, message: str) -> Message:
    """A command's error reply."""
    return {"id": cid, "error": error_dict(code, message)}


def connect_result(
    client: str,
    user: str,
    node: str,
    transport: str,
    *,
    ttl: float | None = None,
    subs: dict[Any, Message] | None = None,
    server_subs: dict[str, Message] | None = None,
) -> Message:
    """``connect``: ``ttl`` (seconds the credentials have left) when they expire; ``subs``
    each channel's subscribe result (or ``{"error": ...}``) when the command had ``subs``;
    ``server_subs`` the same for the server-side subscriptions made at connect, if any."""
    result: Message = {
        "client": client,
        "user": user,
        "version": PROTOCOL_VERSION,
        "node": node,
        "transport": transport,
    }
    if ttl is not None:
        result["expires"] = True
        result["ttl"] = int(ttl)
    if server_subs:
        result["server_subs"] = server_subs
    if subs is not None:
        result["subs"] = subs
    return result


def refresh_result(ttl: float | None) -> Message:
    """``refresh``: ``expires`` and, when they do, ``ttl`` (whole seconds, rounded down)."""
    result: Message = {"expires": ttl is not None}
    if ttl is not None:
        result["ttl"] = int(ttl)
    return result


def subscribe_result(
    position: StreamPosition | None,
    *,
    recovered: bool | None = None,
    publications: Sequence[Publication] = (),
) -> Message:
    """``subscribe``: ``{}`` without history; else the stream's position and, when recovery
    was asked (``recovered`` not None), whether it succeeded and the missed publications."""
    if position is None:
        return {}
    result: Message = {"recoverable": True, "epoch": position.epoch, "offset": position.offset}
    if recovered is not None:
        result["recovered"] = recovered
        result["publications"] = [publication_dict(p) for p in publications]
    return result


def publish_result(position: StreamPosition | None) -> Message:
    """``publish`` (client and API): ``{}`` without history, else ``offset`` and ``epoch``."""
    return {} if position is None else {"offset": position.offset, "epoch": position.epoch}


def presence_result(clients: Mapping[str, ClientInfo]) -> Message:
    """``presence`` (client and API): ``{"clients": {client id: client info}}``."""
    return {"clients": {cid: info.to_dict() for cid, info in clients.items()}}


def presence_stats_result(num_clients: int, num_users: int) -> Message:
    """``presence_stats`` (client and API)."""
    return {"num_clients": num_clients, "num_users": num_users}


def history_result(result: HistoryResult) -> Message:
    """``history`` (client and API): publications, and the stream's offset and epoch."""
    return {
        "publications": [publication_dict(p) for p in result.publications],
        "offset": result.position.offset,
        "epoch": result.position.epoch,
    }


def rpc_result(data: Any) -> Message:
    """``rpc``: what the application's hook returned."""
    return {"data": data}


def broadcast_result(outcomes: Iterable[StreamPosition | HubError | None]) -> Message:
    """API ``broadcast``: one ``{"result"}`` or ``{"error"}`` per channel, in order."""
    responses: list[Message] = []
    for outcome in outcomes:
        if isinstance(outcome, HubError):
            responses.append({"error": error_dict(outcome.code, outcome.message)})
        else:
            responses.append({"result": publish_result(outcome)})
    return {"responses": responses}


def channels_result(channels: Mapping[str, int]) -> Message:
    """API ``channels``: subscriber counts of this node's channels."""
    return {"channels": dict(channels)}


def info_result(node: str, nodes: Mapping[str, Any]) -> Message:
    """API ``info``: this node's name and the live nodes."""
    return {"node": node, "nodes": dict(nodes)}


def api_result(result: Message | None) -> Message:
    """An HTTP API answer (200)."""
    return {"result": result if result is not None else {}}


def api_error(code: int, message: str) -> Message:
    """An HTTP API error answer."""
    return {"error": error_dict(code, message)}


def publication_dict(publication: Publication) -> Message:
    """A publication as clients see it (in history and recovery results, and pushes)."""
    out: Message = {"data": publication.data}
    if publication.offset:
        out["offset"] = publication.offset
    if publication.info is not None:
        out["info"] = publication.info.to_dict()
    if publication.tags:
        out["tags"] = publication.tags
    return out


def publication_push(channel: str, publication: Publication) -> Message:
    """The ``publication`` push (its fields, then ``push`` and ``channel``)."""
    message = publication_dict(publication)
    message["push"] = "publication"
    message["channel"] = channel
    return message


def join_push(channel: str, info: ClientInfo) -> Message:
    """The ``join`` push."""
    return {"push": "join", "channel": channel, "info": info.to_dict()}


def leave_push(channel: str, info: ClientInfo) -> Message:
    """The ``leave`` push."""
    return {"push": "leave", "channel": channel, "info": info.to_dict()}


def subscribe_push(channel: str, result: Message) -> Message:
    """The ``subscribe`` push: the server subscribed the connection to ``channel`` (a
    server-side subscription); ``result`` is what a ``subscribe`` reply's result would be."""
    return {"push": "subscribe", "channel": channel, **result}


def unsubscribe_push(channel: str, code: int, reason: str, *, resubscribe: bool) -> Message:
    """The ``unsubscribe`` push: the server ended a subscription (see UnsubscribeCode)."""
    return {
        "push": "unsubscribe",
        "channel": channel,
        "code": code,
        "reason": reason,
        "resubscribe": resubscribe,
    }


def message_push(data: Any) -> Message:
    """The ``message`` push (API ``send``, :meth:`Hub.send`)."""
    return {"push": "message", "data": data}


def disconnect_push(code: int, reason: str) -> Message:
    """The ``disconnect`` push that ends an SSE or long-polling session."""
    return {"push": "disconnect", "code": code, "reason": reason, "reconnect": reconnects(code)}
