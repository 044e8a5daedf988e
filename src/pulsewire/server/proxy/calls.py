"""The HTTP side of the proxy: one POST per hook call, its reply read in one place.

:class:`BackendProxy` owns the node's one ``httpx.AsyncClient`` (keep-alive pooling, closed
with the node) and :meth:`BackendProxy.call` turns the backend's answer into what a hook
does:

* ``{"result": {...}}`` (HTTP 200): the object is returned;
* ``{"error": {"code": N, "message": "..."}}``: :class:`HubError` (the command's answer);
  a body that JSON cannot carry (bytes from a MessagePack client) is refused with 107
  without a call;
* ``{"disconnect": {"code": 4000-4999, "reason": "..."}}``: :class:`Disconnect`;
* anything else is :class:`ProxyFailure`: ``unavailable`` for a timeout (the route's, for
  the whole call), a connection error or a 5xx status; not ``unavailable`` (the backend
  answered, wrongly) for another status, a body that is not JSON or not one of the above.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from typing import Any, TypeGuard

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ...extras import needs_extra
from ...hub.errors import DISCONNECT_CODES, Disconnect, ErrorCode, HubError
from .settings import ROUTES, ProxySettings

with needs_extra("proxy", "the backend proxy ([proxy] in the config)"):
    import httpx

__all__ = ["OUTCOMES", "BackendProxy", "ProxyFailure"]

logger = logging.getLogger("pulsewire.proxy")

OUTCOMES = ("result", "error", "disconnect", "unavailable", "malformed")
"""How a call ended, as counted in ``pulsewire_proxy_calls_total``."""
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
POOL = httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=30.0)


class ProxyFailure(Exception):
    """The backend gave no answer a hook can use (see the module docstring)."""

    def __init__(self, route: str, message: str, *, unavailable: bool) -> None:
        super().__init__(f"{route}: {message}")
        self.route = route
        self.message = message
        self.unavailable = unavailable


class BackendProxy:
    """POSTs JSON bodies to the backend's routes (see the module docstring).

    ``transport`` replaces the network (tests give an ``httpx.MockTransport``)."""

    def __init__(
        self, settings: ProxySettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self.calls = {(route, outcome): 0 for route in ROUTES for outcome in OUTCOMES}
        """Calls by (route, outcome)."""
        self.durations = {route: [0.0] * (len(BUCKETS) + 2) for route in ROUTES}
        """Per route: cumulative bucket counts of call durations, +Inf, then their sum."""

    def enabled(self, route: str) -> bool:
        return route in self.settings.routes

    def _http(self) -> httpx.AsyncClient:
        # Made on first use, inside the running loop that uses it.
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                limits=POOL,
                headers=dict(self.settings.headers),
                follow_redirects=False,
                trust_env=False,  # a node's proxy calls never go through HTTP_PROXY
            )
        return self._client

    async def close(self) -> None:
        """Close the pooled connections (the node is stopping)."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def call(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``route``; the reply's ``result`` object, or raises (see above)."""
        settings = self.settings.routes[route]
        started = time.monotonic()
        outcome = "malformed"
        try:
            reply = await self._post(route, settings.url, settings.timeout, body)
            outcome, value = _read(route, reply)
            return value
        except ProxyFailure as exc:
            outcome = "unavailable" if exc.unavailable else "malformed"
            logger.warning("proxy %s failed: %s", route, exc.message)
            raise
        except HubError:
            outcome = "error"
            raise
        except Disconnect:
            outcome = "disconnect"
            raise
        finally:
            self._count(route, outcome, time.monotonic() - started)

    async def _post(
        self, route: str, url: str, timeout: float, body: dict[str, Any]
    ) -> httpx.Response:
        try:
            content = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:  # e.g. bytes from a MessagePack client
            message = f"data must be representable as JSON to reach the backend: {exc}"
            raise HubError(ErrorCode.BAD_REQUEST, message) from None
        headers = {"Content-Type": "application/json"}
        try:
            # httpx's timeout bounds each phase; wait_for bounds the whole call.
            return await asyncio.wait_for(
                self._http().post(url, content=content, headers=headers, timeout=timeout),
                timeout,
            )
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise ProxyFailure(route, f"no answer in {timeout:g} s", unavailable=True) from None
        except httpx.HTTPError as exc:
            message = f"cannot reach the backend: {exc.__class__.__name__}: {exc}"
            raise ProxyFailure(route, message, unavailable=True) from None

    def _count(self, route: str, outcome: str, seconds: float) -> None:
        self.calls[route, outcome] += 1
        counts = self.durations[route]
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                counts[i] += 1
        counts[len(BUCKETS)] += 1  # +Inf
        counts[-1] += seconds

    def collector(self) -> Collector:
        """Prometheus collector: calls by route and outcome, durations by route."""
        return _ProxyCollector(self)


def _read(route: str, response: httpx.Response) -> tuple[str, dict[str, Any]]:
    """("result", the result object) from a backend reply, or raises (module docstring)."""
    status = response.status_code
    if status >= 500:
        raise ProxyFailure(route, f"the backend answered HTTP {status}", unavailable=True)
    if status != 200:
        raise ProxyFailure(route, f"the backend answered HTTP {status}", unavailable=False)
    try:
        reply = json.loads(response.content)
    except ValueError:
        raise ProxyFailure(route, "the reply is not JSON", unavailable=False) from None
    if isinstance(reply, dict) and len(reply) == 1:
        kind, value = next(iter(reply.items()))
        if kind == "result" and isinstance(value, dict):
            return "result", value
        if kind == "error" and isinstance(value, dict):
            code, message = value.get("code"), value.get("message", "")
            if _is_int(code) and 100 <= code < 2000 and isinstance(message, str):
                raise HubError(code, message)
        if kind == "disconnect" and isinstance(value, dict):
            code, reason = value.get("code"), value.get("reason", "")
            if _is_int(code) and code in DISCONNECT_CODES and isinstance(reason, str):
                raise Disconnect(code, reason)
    raise ProxyFailure(
        route,
        'the reply is none of {"result": {...}}, {"error": {"code": 100-1999, "message"}}, '
        '{"disconnect": {"code": 4000-4999, "reason"}}',
        unavailable=False,
    )


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


class _ProxyCollector(Collector):
    def __init__(self, proxy: BackendProxy) -> None:
        self.proxy = proxy

    def collect(self) -> Iterator[Metric]:
        proxy = self.proxy
        calls = CounterMetricFamily(
            "pulsewire_proxy_calls",
            "Calls to the backend proxy, by route and outcome (result, error, disconnect: the "
            "backend's answer; unavailable: timeout, connection error, 5xx; malformed)",
            labels=["route", "outcome"],
        )
        durations = HistogramMetricFamily(
            "pulsewire_proxy_call_duration_seconds",
            "Duration of calls to the backend proxy, by route",
            labels=["route"],
        )
        for route in proxy.settings.routes:
            for outcome in OUTCOMES:
                calls.add_metric([route, outcome], proxy.calls[route, outcome])
            counts = proxy.durations[route]
            buckets = [(str(b), counts[i]) for i, b in enumerate(BUCKETS)]
            buckets.append(("+Inf", counts[len(BUCKETS)]))
            durations.add_metric([route], buckets, sum_value=counts[-1])
        yield calls
        yield durations
