"""The server HTTP API under ``/api/``: what a backend uses to publish and manage clients.

Every call is ``POST /api/<method>`` with a JSON object body and the header
``Authorization: apikey <key>``. Answers are JSON: ``{"result": ...}`` with 200, or
``{"error": {"code", "message"}}`` with a status that says what went wrong (400 bad input,
401/403 authentication, 404 unknown method or namespace, 429 too many failed keys from the
address (with ``Retry-After``) or too many idempotency keys, 503 engine unavailable: not
published, 504 engine did not answer: maybe published, retry with the same idempotency_key).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..hub.auth import secret_matches
from ..hub.errors import ErrorCode, HubError
from ..hub.hub import Hub
from .http import HttpRequest, HttpResponse, json_response

__all__ = ["ApiHandler"]

_STATUS = {
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
}


def _error(
    code: int, message: str, status: int | None = None, headers: list[tuple[str, str]] | None = None
) -> HttpResponse:
    return json_response(
        {"error": {"code": code, "message": message}}, status or _STATUS.get(code, 500), headers
    )


def _str(params: dict[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise HubError(ErrorCode.BAD_REQUEST, f"{key} must be a non-empty string")
    return value


class ApiHandler:
    """Dispatches ``/api/<method>`` requests to the hub."""

    def __init__(self, hub: Hub, api_key: str | None) -> None:
        self.hub = hub
        self.api_key = api_key
        self.methods: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "publish": self.publish,
            "broadcast": self.broadcast,
            "presence": self.presence,
            "presence_stats": self.presence_stats,
            "history": self.history,
            "disconnect": self.disconnect,
            "unsubscribe": self.unsubscribe,
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
            return _error(exc.code, exc.message)
        except ValueError as exc:
            return _error(ErrorCode.BAD_REQUEST, str(exc))
        return json_response({"result": result if result is not None else {}})

    async def publish(self, params: dict[str, Any]) -> Any:
        if "data" not in params:
            raise HubError(ErrorCode.BAD_REQUEST, "publish needs data")
        tags = params.get("tags")
        if tags is not None and not (
            isinstance(tags, dict) and all(isinstance(v, str) for v in tags.values())
        ):
            raise HubError(ErrorCode.BAD_REQUEST, "tags must map strings to strings")
        position = await self.hub.publish(
            _str(params, "channel"),
            params["data"],
            tags=tags,
            idempotency_key=params.get("idempotency_key"),
        )
        return {} if position is None else {"offset": position.offset, "epoch": position.epoch}

    async def broadcast(self, params: dict[str, Any]) -> Any:
        channels = params.get("channels")
        if (
            not isinstance(channels, list)
            or not all(isinstance(c, str) for c in channels)
            or not channels
        ):
            raise HubError(ErrorCode.BAD_REQUEST, "channels must be a non-empty list of strings")
        if "data" not in params:
            raise HubError(ErrorCode.BAD_REQUEST, "broadcast needs data")
        responses = []
        outcomes = await self.hub.broadcast(
            channels, params["data"], idempotency_key=params.get("idempotency_key")
        )
        for outcome in outcomes:
            if isinstance(outcome, HubError):
                responses.append({"error": outcome.to_dict()})
            elif outcome is None:
                responses.append({"result": {}})
            else:
                responses.append({"result": {"offset": outcome.offset, "epoch": outcome.epoch}})
        return {"responses": responses}

    async def presence(self, params: dict[str, Any]) -> Any:
        clients = await self.hub.presence(_str(params, "channel"))
        return {"clients": {cid: info.to_dict() for cid, info in clients.items()}}

    async def presence_stats(self, params: dict[str, Any]) -> Any:
        clients, users = await self.hub.presence_stats(_str(params, "channel"))
        return {"num_clients": clients, "num_users": users}

    async def history(self, params: dict[str, Any]) -> Any:
        return await self.hub._history_reply(_str(params, "channel"), params)

    async def disconnect(self, params: dict[str, Any]) -> Any:
        code = params.get("code", 4502)
        if not isinstance(code, int) or not 4000 <= code <= 4999:
            raise HubError(ErrorCode.BAD_REQUEST, "code must be an integer in 4000-4999")
        await self.hub.disconnect_user(
            _str(params, "user"), code, str(params.get("reason", "disconnected by the server"))
        )
        return {}

    async def unsubscribe(self, params: dict[str, Any]) -> Any:
        await self.hub.unsubscribe_user(_str(params, "user"), _str(params, "channel"))
        return {}

    async def send(self, params: dict[str, Any]) -> Any:
        if "data" not in params:
            raise HubError(ErrorCode.BAD_REQUEST, "send needs data")
        user, client = params.get("user"), params.get("client")
        if (user is None) == (client is None):
            raise HubError(ErrorCode.BAD_REQUEST, "give exactly one of user or client")
        await self.hub.send(params["data"], user=user, client=client)
        return {}

    async def channels(self, params: dict[str, Any]) -> Any:
        return {"channels": self.hub.channels}

    async def info(self, params: dict[str, Any]) -> Any:
        return {"node": self.hub.node_id, "nodes": self.hub.nodes}
