"""The hub's hooks, answered by the backend: one route per hook (docs/proxy.md).

:class:`ProxyHooks` implements the hooks of :mod:`pulsewire.hub.hooks` by POSTing to the
backend (:class:`~pulsewire.server.proxy.calls.BackendProxy`): ``authenticate`` (connect),
``on_refresh`` (refresh), ``on_subscribe`` (subscribe), ``on_publish`` (publish),
``on_rpc`` (rpc), ``on_sub_refresh`` (sub_refresh). :meth:`ProxyHooks.install` sets those
whose route is enabled on a :class:`~pulsewire.hub.Hub`; the others keep the hub's own
behaviour.

When the backend gives no usable answer (:class:`ProxyFailure`): connect ends with 4010;
subscribe, publish and rpc are answered 108 (unavailable: timeout, connection error, 5xx)
or 100 (a malformed answer); refresh ends the session with 4010 (through the hub's
``on_refresh`` rule for errors); sub_refresh ends the subscription (2501).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from typing import Any

from ...hub.auth import Credentials
from ...hub.contracts import ConnectRequest, HookSession
from ...hub.errors import Disconnect, DisconnectCode, ErrorCode, HubError
from ...hub.hooks import SubscribeOutcome
from ...hub.hub import Hub
from ..app import HubServer
from .calls import BackendProxy, ProxyFailure
from .settings import ProxySettings

__all__ = ["HOOKS", "ProxyHooks", "install_proxy"]

HOOKS = {
    "connect": "authenticate",
    "refresh": "on_refresh",
    "subscribe": "on_subscribe",
    "publish": "on_publish",
    "rpc": "on_rpc",
    "sub_refresh": "on_sub_refresh",
}
"""Each route and the hub hook it answers."""


def install_proxy(
    server: HubServer, settings: ProxySettings, *, transport: Any = None
) -> ProxyHooks:
    """Answer ``server``'s hub hooks by the backend: the hooks of the enabled routes, the
    proxy's metrics in ``/metrics``, its connections closed with the server. ``transport``:
    an ``httpx`` transport instead of the network (tests)."""
    proxy = BackendProxy(settings, transport=transport)
    # httpx logs every request at INFO: one line per hook call would drown the node's log
    # (failures are logged by BackendProxy, and counted in /metrics).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    hub = server.hub
    hooks = ProxyHooks(proxy, lambda: hub.tokens.enabled)
    hooks.install(hub)
    hub.metrics.registry.register(proxy.collector())
    server.on_close.append(proxy.close)
    return hooks


class ProxyHooks:
    """The hub's hooks as calls to the backend (see the module docstring).

    ``tokens_enabled`` says whether the hub verifies connection tokens: a client that
    connects with a token is then authenticated by it, without asking the backend."""

    def __init__(self, proxy: BackendProxy, tokens_enabled: Callable[[], bool]) -> None:
        self.proxy = proxy
        self._tokens_enabled = tokens_enabled

    def install(self, hub: Hub) -> None:
        """Set this object's hooks on ``hub`` for every enabled route; ValueError if one is
        already set (e.g. the demo's ``on_rpc``)."""
        for route, name in HOOKS.items():
            if not self.proxy.enabled(route):
                continue
            if getattr(hub, name) is not None:
                raise ValueError(f"[proxy.{route}] and another {name} hook (--demo?) conflict")
            setattr(hub, name, getattr(self, name))

    # ------------------------------------------------------------------------- bodies

    def request_body(self, request: ConnectRequest) -> dict[str, Any]:
        """What every body carries about the client's connection."""
        settings = self.proxy.settings
        body: dict[str, Any] = {
            "client": request.client,
            "transport": request.transport,
            "encoding": request.encoding,
            "remote_addr": request.remote_address,
        }
        if settings.include_headers:
            wanted = set(settings.include_headers)
            body["headers"] = {
                name.lower(): value for name, value in request.headers if name.lower() in wanted
            }
        if settings.include_cookies:
            body["cookies"] = _cookies(request.headers, settings.include_cookies)
        return body

    def session_body(self, session: HookSession, **fields: Any) -> dict[str, Any]:
        return {**self.request_body(session.request), "user": session.user, **fields}

    async def _call(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        """The route's result; ProxyFailure becomes the command error (108 or 100)."""
        try:
            return await self.proxy.call(route, body)
        except ProxyFailure as exc:
            if exc.unavailable:
                raise HubError(
                    ErrorCode.NOT_AVAILABLE, f"backend unavailable: {exc.message}"
                ) from None
            raise HubError(ErrorCode.INTERNAL, f"backend error: {exc.message}") from None

    # -------------------------------------------------------------------------- hooks

    async def authenticate(self, request: ConnectRequest) -> Credentials | None:
        """connect: the backend says who the client is (``None``: a token decides)."""
        if request.token and self._tokens_enabled():
            return None
        body = {**self.request_body(request), "data": request.data}
        try:
            result = await self.proxy.call("connect", body)
        except ProxyFailure as exc:
            what = "backend unavailable" if exc.unavailable else "backend error"
            raise Disconnect(DisconnectCode.UNAVAILABLE, f"{what}: {exc.message}") from None
        except HubError as exc:
            bad = exc.code == ErrorCode.BAD_REQUEST
            code = DisconnectCode.BAD_REQUEST if bad else DisconnectCode.UNAUTHORIZED
            raise Disconnect(code, exc.message) from None
        try:
            return _credentials(result)
        except ValueError as exc:
            raise Disconnect(DisconnectCode.UNAVAILABLE, f"backend error: {exc}") from None

    async def on_refresh(self, session: HookSession) -> Credentials | None:
        """refresh: new expiry and info, or ``expired: true`` (None: the session ends)."""
        result = await self._call("refresh", self.session_body(session))
        if result.get("expired") is True:
            return None
        try:
            expires_at = _expire_at(result)
        except ValueError as exc:
            raise HubError(ErrorCode.INTERNAL, f"backend error: {exc}") from None
        current = session.credentials
        base = current if current is not None else Credentials(user=session.user)
        return Credentials(
            user=session.user,
            expires_at=expires_at,
            info=result.get("info"),
            channels=base.channels,
            subs=base.subs,
            extra=base.extra,
        )

    async def on_subscribe(
        self, session: HookSession, channel: str, params: dict[str, Any]
    ) -> SubscribeOutcome:
        """subscribe: allowed (with channel info and an expiry) or refused."""
        body = self.session_body(session, channel=channel, data=params.get("data"))
        result = await self._call("subscribe", body)
        try:
            return SubscribeOutcome(info=result.get("info"), expires_at=_expire_at(result))
        except ValueError as exc:
            raise HubError(ErrorCode.INTERNAL, f"backend error: {exc}") from None

    async def on_publish(self, session: HookSession, channel: str, data: Any) -> Any:
        """publish: allowed as sent, or with the backend's ``data`` instead."""
        result = await self._call("publish", self.session_body(session, channel=channel, data=data))
        return result.get("data")

    async def on_rpc(self, session: HookSession, method: str, data: Any) -> Any:
        """rpc: the backend's ``data`` is the result."""
        result = await self._call("rpc", self.session_body(session, method=method, data=data))
        return result.get("data")

    async def on_sub_refresh(self, session: HookSession, channel: str) -> float | None:
        """sub_refresh: the next expiry, or ``expired: true`` (None: the subscription ends)."""
        result = await self._call("sub_refresh", self.session_body(session, channel=channel))
        if result.get("expired") is True:
            return None
        try:
            return _expire_at(result)
        except ValueError as exc:
            raise HubError(ErrorCode.INTERNAL, f"backend error: {exc}") from None


def _cookies(headers: list[tuple[str, str]], names: tuple[str, ...]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for name, value in headers:
        if name.lower() == "cookie":
            try:
                jar.load(value)
            except CookieError:
                continue  # a malformed Cookie header carries nothing we can trust
    return {name: jar[name].value for name in names if name in jar}


def _expire_at(result: dict[str, Any]) -> float | None:
    """``expire_at`` (Unix seconds; absent, null or 0: no expiry)."""
    value = result.get("expire_at")
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"expire_at must be a Unix time in seconds, not {value!r}")
    return float(value)  # already past: the hub ends what it was given for


def _strings(result: dict[str, Any], key: str) -> tuple[str, ...]:
    value = result.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key} must be a list of channel names")
    return tuple(value)


def _credentials(result: dict[str, Any]) -> Credentials:
    user = result.get("user")
    if isinstance(user, int) and not isinstance(user, bool):
        user = str(user)
    if not isinstance(user, str):
        raise ValueError('the connect result needs a user (a string; "" for anonymous)')
    return Credentials(
        user=user,
        expires_at=_expire_at(result),
        info=result.get("info"),
        channels=_strings(result, "channels"),
        subs=_strings(result, "subs"),
    )
