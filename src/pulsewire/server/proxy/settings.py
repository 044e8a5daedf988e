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
from typing import Annotated, Any
from urllib.parse import urlsplit

from msgspec import Meta

from ...hub.config_types import ConfigError, convert_table, field_types

__all__ = [
    "PROXY_TYPES",
    "ROUTES",
    "ProxySettings",
    "ProxyTable",
    "RouteSettings",
    "RouteTable",
    "proxy_settings",
]

ROUTES = ("connect", "refresh", "subscribe", "publish", "rpc", "sub_refresh")
"""The routes, each the hook it stands for (``authenticate``, ``on_refresh``, ...)."""
DEFAULT_TIMEOUT = 2.0
Seconds = Annotated[float, Meta(gt=0)]
Name = Annotated[str, Meta(min_length=1)]


@dataclass(frozen=True)
class RouteTable:
    """A ``[proxy.ROUTE]`` table as written (None: not set)."""

    url: str | None = None
    timeout: Seconds | None = None


@dataclass(frozen=True)
class ProxyTable:
    """The ``[proxy]`` table as written, without its route tables."""

    url: str | None = None
    timeout: Seconds = DEFAULT_TIMEOUT
    include_headers: tuple[Name, ...] = ()
    include_cookies: tuple[Name, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)


PROXY_TYPES: dict[str, Any] = {**field_types(ProxyTable), **dict.fromkeys(ROUTES, RouteTable)}
"""The keys of ``[proxy]`` and their types (a route's: :class:`RouteTable`)."""


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
    """Settings from the ``[proxy]`` table (``None`` if empty); a ValueError
    (:class:`~pulsewire.hub.config_types.ConfigError`) names the table and the key."""
    if not table:
        return None
    top = convert_table({k: v for k, v in table.items() if k not in ROUTES}, ProxyTable, ("proxy",))
    base = top.url
    if base is not None:
        _check_url(base, ("proxy",))
        if not base.endswith("/"):
            base += "/"
    _finite(top.timeout, ("proxy",))
    routes: dict[str, RouteSettings] = {}
    for name in ROUTES:
        if table.get(name) is None:
            continue
        where = ("proxy", name)
        route = convert_table(table[name], RouteTable, where)
        url = route.url
        if url is None:
            if base is None:
                raise ConfigError(f"[proxy.{name}] needs a url, or [proxy] url as the base", where)
            url = base + name
        _check_url(url, where)
        timeout = top.timeout if route.timeout is None else route.timeout
        routes[name] = RouteSettings(url, _finite(timeout, where))
    if not routes:
        raise ConfigError(
            f"[proxy] enables no route: add at least one of [proxy.{']/['.join(ROUTES)}]",
            ("proxy",),
        )
    return ProxySettings(
        routes=routes,
        include_headers=tuple(h.lower() for h in top.include_headers),
        include_cookies=top.include_cookies,
        headers=tuple(top.headers.items()),
    )


def _check_url(url: str, table: tuple[str, ...]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"[{'.'.join(table)}] url must be an http:// or https:// URL with a host, not {url!r}",
            table,
            "url",
        )


def _finite(timeout: float, table: tuple[str, ...]) -> float:
    if not math.isfinite(timeout):
        raise ConfigError(f"[{'.'.join(table)}] timeout must be finite", table, "timeout")
    return timeout
