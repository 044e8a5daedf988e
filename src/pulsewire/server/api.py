"""The server HTTP API under ``/api/``: what a backend uses to publish and manage clients.

Every call is ``POST /api/<method>`` with a JSON object body and the header
``Authorization: apikey <key>``. Answers are JSON: ``{"result": ...}`` with 200, or
``{"error": {"code", "message"}}`` with a status that says what went wrong (400 bad input,
401/403 authentication, 404 unknown method or namespace, 429 too many failed keys from the
address (with ``Retry-After``) or too many idempotency keys, 503 engine unavailable: not
published, 504 engine did not answer: maybe published, retry with the same idempotency_key;
503 with ``Retry-After`` also for 115: a node is behind on delivery, not published).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..hub.auth import secret_matches
from ..hub.errors import ErrorCode, HubError
from ..hub.hub import Hub
from ..hub.messages import (
    Message,
    api_error,
    api_result,
    broadcast_result,
    channels_result,
    history_result,
    info_result,
    presence_result,
    presence_stats_result,
    publish_result,
)
from ..hub.requests import (
    ApiBroadcastParams,
    ApiChannelParams,
    ApiDisconnectParams,
    ApiHistoryParams,
    ApiPublishParams,
    ApiSendParams,
    ApiSubscribeParams,
    ApiUnsubscribeParams,
)
from .http import HttpRequest, HttpResponse, json_response

__all__ = ["ApiHandler"]

_STATUS: dict[int, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNKNOWN_CHANNEL: 404,
    ErrorCode.METHOD_NOT_FOUND: 404,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_AVAILABLE: 503,
    # 504: the node got no timely answer from the engine it needed (RFC 9110 15.6.5), which
    # says nothing of whether the engine applied the request, unlike 503 (not processed).
    ErrorCode.OUTCOME_UNKNOWN: 504,
    ErrorCode.LIMIT_EXCEEDED: 429,
    ErrorCode.TOO_MANY_REQUESTS: 429,
    ErrorCode.OVERLOADED: 503,
}
OVERLOADED_RETRY_AFTER = "1"
"""Seconds a publisher refused with 115 is told to wait (``Retry-After``)."""


def _error(
    code: int, message: str, status: int | None = None, headers: list[tuple[str, str]] | None = None
) -> HttpResponse:
    return json_response(api_error(code, message), status or _STATUS.get(code, 500), headers)


class ApiHandler:
    """Dispatches ``/api/<method>`` requests to the hub."""

    def __init__(self, hub: Hub, api_key: str | None) -> None:
        self.hub = hub
        self.api_key = api_key
        self.methods: dict[str, Callable[[dict[str, Any]], Awaitable[Message]]] = {
            "publish": self.publish,
            "broadcast": self.broadcast,
            "presence": self.presence,
            "presence_stats": self.presence_stats,
            "history": self.history,
            "disconnect": self.disconnect,
            "unsubscribe": self.unsubscribe,
            "subscribe": self.subscribe,
            "send": self.send,
            "channels": self.channels,
            "info": self.info,
        }

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if self.api_key is None:
            return _error(
                ErrorCode.PERMISSION_DENIED, "the HTTP API is disabled: configure api_key", 403
            )
        guard = self.hub.auth_guard
        address = guard.client(request.remote_address, request.headers)
        wait = guard.check(address, "api")
        if wait:  # before the key is looked at: no answer tells a blocked address anything
            return _error(
                ErrorCode.TOO_MANY_REQUESTS,
                f"too many failed API keys from your address: retry in {wait} s",
                429,
                [("Retry-After", str(wait))],
            )
        auth = request.headers.get("Authorization") or ""
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "apikey" or not key:
            return _error(
                ErrorCode.UNAUTHORIZED, "missing 'Authorization: apikey <key>' header", 401
            )
        if not secret_matches(key.strip(), self.api_key):
            guard.failed(address, "api")
            return _error(ErrorCode.PERMISSION_DENIED, "wrong API key", 403)
        method = request.path[len("/api/") :]
        handler = self.methods.get(method)
        if handler is None:
            return _error(ErrorCode.METHOD_NOT_FOUND, f"unknown API method {method!r}")
        try:
            params = request.json() if request.body else {}
        except ValueError as exc:
            return _error(ErrorCode.BAD_REQUEST, f"body is not valid JSON: {exc}")
        if not isinstance(params, dict):
            return _error(ErrorCode.BAD_REQUEST, "body must be a JSON object")
        try:
            result = await handler(params)
        except HubError as exc:
            if exc.code == ErrorCode.OVERLOADED:
                return _error(
                    exc.code, exc.message, headers=[("Retry-After", OVERLOADED_RETRY_AFTER)]
                )
            return _error(exc.code, exc.message)
        except ValueError as exc:
            return _error(ErrorCode.BAD_REQUEST, str(exc))
        return json_response(api_result(result))

    async def publish(self, params: dict[str, Any]) -> Message:
        request = ApiPublishParams.parse(params)
        position = await self.hub.publish(
            request.channel,
            request.data,
            tags=request.tags,
            idempotency_key=request.idempotency_key,
        )
        return publish_result(position)

    async def broadcast(self, params: dict[str, Any]) -> Message:
        request = ApiBroadcastParams.parse(params)
        outcomes = await self.hub.broadcast(
            request.channels, request.data, idempotency_key=request.idempotency_key
        )
        return broadcast_result(outcomes)

    async def presence(self, params: dict[str, Any]) -> Message:
        clients = await self.hub.presence(ApiChannelParams.parse(params).channel)
        return presence_result(clients)

    async def presence_stats(self, params: dict[str, Any]) -> Message:
        clients, users = await self.hub.presence_stats(ApiChannelParams.parse(params).channel)
        return presence_stats_result(clients, users)

    async def history(self, params: dict[str, Any]) -> Message:
        request = ApiHistoryParams.parse(params)
        query = request.query
        result = await self.hub.history(
            request.channel, limit=query.limit, since=query.since, reverse=query.reverse
        )
        return history_result(result)

    async def disconnect(self, params: dict[str, Any]) -> Message:
        request = ApiDisconnectParams.parse(params)
        await self.hub.disconnect_user(request.user, request.code, request.reason)
        return {}

    async def unsubscribe(self, params: dict[str, Any]) -> Message:
        request = ApiUnsubscribeParams.parse(params)
        await self.hub.unsubscribe_user(request.user, request.channel, request.client)
        return {}

    async def subscribe(self, params: dict[str, Any]) -> Message:
        request = ApiSubscribeParams.parse(params)
        await self.hub.subscribe_user(request.user, request.channel, request.client)
        return {}

    async def send(self, params: dict[str, Any]) -> Message:
        request = ApiSendParams.parse(params)
        await self.hub.send(request.data, user=request.user, client=request.client)
        return {}

    async def channels(self, params: dict[str, Any]) -> Message:
        return channels_result(self.hub.channels)

    async def info(self, params: dict[str, Any]) -> Message:
        return info_result(self.hub.node_id, self.hub.nodes)
