"""The ``[proxy]`` table of ``pulsewire.toml``: where each route goes and how long it may take.

```toml
[proxy]
url = "http://127.0.0.1:9000/pulsewire/"   # each route's default: url + its name
timeout = 2.0                              # seconds; each route may override it
include_headers = ["authorization"]        # copied from the client's request into bodies
include_cookies = ["sessionid"]
headers = { "X-Proxy-Secret" = "..." }     # sent with every request to the backend
[proxy.connect]                            # a route's table present = route enabled
timeout = 1.0
[proxy.rpc]
url = "http://127.0.0.1:9001/rpc"          # another URL for this route
```

Bad values refuse to start with one line (:class:`ValueError`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ROUTES", "ProxySettings", "RouteSettings", "proxy_settings"]

ROUTES = ("connect", "refresh", "subscribe", "publish", "rpc", "sub_refresh")
"""The routes, each the hook it stands for (``authenticate``, ``on_refresh``, ...)."""
TOP_KEYS = frozenset({"url", "timeout", "include_headers", "include_cookies", "headers", *ROUTES})
ROUTE_KEYS = frozenset({"url", "timeout"})
DEFAULT_TIMEOUT = 2.0


@dataclass(frozen=True)
class RouteSettings:
    """One enabled route: the URL it POSTs to and its timeout (seconds, the whole call)."""

    url: str
    timeout: float


@dataclass(frozen=True)
class ProxySettings:
    """The backend proxy of ``pulsewire serve`` (see the module docstring)."""

    routes: dict[str, RouteSettings] = field(default_factory=dict)
    include_headers: tuple[str, ...] = ()
    """Request header names (lower case) copied into each body's ``headers``."""
    include_cookies: tuple[str, ...] = ()
    """Cookie names copied into each body's ``cookies``."""
    headers: tuple[tuple[str, str], ...] = ()
    """Headers sent with every request to the backend (e.g. a shared secret)."""


def proxy_settings(table: Mapping[str, Any]) -> ProxySettings | None:
    """Settings from the ``[proxy]`` table (``None`` if empty); ValueError names a bad key."""
    if not table:
        return None
    unknown = sorted(set(table) - TOP_KEYS)
    if unknown:
        raise ValueError(f"unknown [proxy] setting(s): {', '.join(unknown)}")
    base = table.get("url")
    if base is not None:
        _check_url(base, "[proxy] url")
        if not base.endswith("/"):
            base += "/"
    timeout = _timeout(table.get("timeout", DEFAULT_TIMEOUT), "[proxy]")
    routes: dict[str, RouteSettings] = {}
    for name in ROUTES:
        route = table.get(name)
        if route is None:
            continue
        where = f"[proxy.{name}]"
        if not isinstance(route, Mapping):
            raise ValueError(f"{where} must be a table")
        unknown = sorted(set(route) - ROUTE_KEYS)
        if unknown:
            raise ValueError(f"unknown {where} setting(s): {', '.join(unknown)}")
        url = route.get("url")
        if url is None:
            if base is None:
                raise ValueError(f"{where} needs a url, or [proxy] url as the base")
            url = base + name
        _check_url(url, f"{where} url")
        routes[name] = RouteSettings(url, _timeout(route.get("timeout", timeout), where))
    if not routes:
        raise ValueError(
            f"[proxy] enables no route: add at least one of [proxy.{']/['.join(ROUTES)}]"
        )
    return ProxySettings(
        routes=routes,
        include_headers=tuple(h.lower() for h in _names(table, "include_headers")),
        include_cookies=_names(table, "include_cookies"),
        headers=_headers(table.get("headers", {})),
    )


def _check_url(url: object, where: str) -> None:
    if not isinstance(url, str):
        raise ValueError(f"{where} must be a string")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{where} must be an http:// or https:// URL with a host, not {url!r}")


def _timeout(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} timeout must be a number of seconds")
    if not 0 < value < math.inf:
        raise ValueError(f"{where} timeout must be positive, not {value}")
    return float(value)


def _names(table: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"[proxy] {key} must be a list of names")
    return tuple(value)


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("[proxy] headers must be a table of strings")
    return tuple(value.items())
