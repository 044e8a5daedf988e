"""Which pages may open a connection: the Origin check against Cross-Site WebSocket Hijacking
(also used by the hub's SSE and long-polling endpoints)."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

from .http import Headers

__all__ = ["OriginPolicy", "request_scheme"]


def request_scheme(secure: bool, headers: Headers) -> str:
    """The scheme (``http``/``https``) of the page a same-host browser request comes from.

    ``https`` on a TLS listener; on a plain one, what a TLS-terminating proxy says in
    ``X-Forwarded-Proto`` (the shipped nginx configuration sends it), else ``http``.

    Trusting that header cannot let a foreign page in: a browser page cannot set it on a
    WebSocket handshake (the WebSocket API takes no headers) or on an EventSource, and on a
    fetch it is a non-simple header, so a cross-origin page's request is preceded by a CORS
    preflight that carries no such header and is judged (and refused) as it is. A page of
    our own origin setting it only gets itself refused. Clients that are not browsers can
    send anything, Origin included: the Origin check never concerned them.
    """
    if secure:
        return "https"
    value = headers.get("X-Forwarded-Proto")
    if value:
        proto = value.split(",", 1)[0].strip().lower()
        if proto in ("http", "https"):
            return proto
    return "http"


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_tuple(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a serialized http(s) origin, ports made explicit; None if it
    is anything else (another scheme, ``null``, a path, user info, a bad port)."""
    try:
        parts = urllib.parse.urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        return None
    return scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS[scheme]


def _host_tuple(host: str, scheme: str) -> tuple[str, int] | None:
    """(host, port) of a Host header for a request made with ``scheme``."""
    try:
        parts = urllib.parse.urlsplit("//" + host.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.path or "@" in parts.netloc:
        return None
    return parts.hostname, port if port is not None else _DEFAULT_PORTS[scheme]


class OriginPolicy:
    """Which Origin headers a server accepts (defence against Cross-Site WebSocket Hijacking).

    ``allowed`` holds exact origins (``https://example.com``) or patterns where ``*`` matches
    one or more DNS labels or a port (``https://*.example.com``, ``http://localhost:*``).
    With ``same_host=True`` the server's own origin is accepted too: scheme, host and port
    equal to the request's (the scheme from :func:`request_scheme`, the host and port from
    the ``Host`` header; default ports made explicit, so ``http://h`` is ``http://h:80``).
    Any other scheme on the same host:port (``ws://``, ``file://``, ``chrome-extension://``,
    ``null``...) is refused. ``allowed=None`` with ``same_host=False`` accepts every origin.
    A request without an Origin header comes from a non-browser client (browsers always send
    it) and is accepted unless ``require=True``.
    """

    def __init__(
        self,
        allowed: Iterable[str] | None = None,
        *,
        same_host: bool = False,
        require: bool = False,
    ) -> None:
        self.allowed = None if allowed is None else list(allowed)
        self.same_host = same_host
        self.require = require
        self._exact: set[str] = set()
        self._patterns: list[re.Pattern[str]] = []
        for origin in self.allowed or ():
            if "*" in origin:
                parts = [re.escape(p) for p in origin.lower().split("*")]
                self._patterns.append(re.compile(r"[a-z0-9\-.]+".join(parts)))
            else:
                self._exact.add(origin.lower().rstrip("/"))

    @property
    def open(self) -> bool:
        return self.allowed is None and not self.same_host

    def allows(self, origin: str | None, host: str | None = None, *, scheme: str = "http") -> bool:
        """Whether a request with this Origin and Host, made over ``scheme``, is accepted."""
        if origin is None:
            return not self.require
        if self.open:
            return True
        origin = origin.lower()
        if origin in self._exact or any(p.fullmatch(origin) for p in self._patterns):
            return True
        if self.same_host and host and scheme in _DEFAULT_PORTS:
            page = _origin_tuple(origin)
            ours = _host_tuple(host.lower(), scheme)
            return page is not None and ours is not None and page == (scheme, *ours)
        return False
