"""The NATS engine's URL: one server, or the servers of a cluster, and the replica count.

* ``nats://host:port``: one server (the port defaults to 4222).
* ``nats://h1:p1,h2:p2,h3:p3?replicas=3``: a cluster; the client connects to any of them,
  learns the others from the servers (NATS gossips its members' client URLs) and moves to
  another when the one it uses dies. Whole URLs work too: ``nats://h1:p1,nats://h2:p2``.
* ``replicas`` (1 to 5, default 1): the JetStream replica count of every stream the engine
  creates (history, presence, idempotency keys). R3 on a three-server cluster keeps every
  acknowledged write through the loss of one server.
* ``tls://`` instead of ``nats://`` for TLS; ``user:password@`` before a host as usual.

Written by hand because :func:`urllib.parse.urlsplit` reads one host per URL: a list of
hosts after one scheme is not a URL it can parse (each item is then parsed by it).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

__all__ = [
    "DEFAULT_PORT",
    "MAX_REPLICAS",
    "NatsTarget",
    "check_replicas",
    "parse_nats_url",
    "redact",
]

DEFAULT_PORT = 4222
MAX_REPLICAS = 5  # JetStream's own limit on a stream's replicas
_SCHEMES = ("nats", "tls")
_OPTIONS = ("replicas",)


@dataclass(frozen=True)
class NatsTarget:
    """What a NATS engine URL names."""

    #: Each ``scheme://[user:password@]host:port``, in the order given.
    servers: tuple[str, ...]
    #: JetStream replicas of the engine's streams.
    replicas: int = 1


def check_replicas(replicas: int) -> int:
    """``replicas`` if it is 1 to :data:`MAX_REPLICAS`; ValueError otherwise."""
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise ValueError(f"replicas must be an integer 1 to {MAX_REPLICAS}, got {replicas!r}")
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ValueError(f"replicas must be 1 to {MAX_REPLICAS}, got {replicas}")
    return replicas


def parse_nats_url(spec: str) -> NatsTarget:
    """The servers and replica count of ``spec``; ValueError naming what is wrong (in one
    line, without the URL, which may hold passwords)."""
    scheme, sep, rest = spec.strip().partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ValueError("NATS engine URL: must start with nats:// or tls://")
    body, _, query = rest.partition("?")
    replicas = _options(spec, query)
    servers = tuple(_server(spec, scheme.lower(), item) for item in body.split(","))
    return NatsTarget(servers, replicas)


def _options(spec: str, query: str) -> int:
    replicas = 1
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"NATS engine URL: cannot read the options {query!r}") from None
    seen: set[str] = set()
    for key, value in pairs:
        if key not in _OPTIONS:
            raise ValueError(f"NATS engine URL: unknown option {key!r} (known: replicas)")
        if key in seen:
            raise ValueError(f"NATS engine URL: option {key!r} given twice")
        seen.add(key)
        if not value.isdigit():
            problem = f"replicas must be 1 to {MAX_REPLICAS}, got {value!r}"
            raise ValueError(f"NATS engine URL: {problem}")
        replicas = int(value)
    try:
        return check_replicas(replicas)
    except ValueError as exc:
        raise ValueError(f"NATS engine URL: {exc}") from None


def _server(spec: str, scheme: str, item: str) -> str:
    """One server of the list as a whole URL (``item`` may repeat the scheme)."""
    item = item.strip()
    if "://" in item:
        scheme, _, item = item.partition("://")
        scheme = scheme.lower()
        if scheme not in _SCHEMES:
            raise ValueError(f"NATS engine URL: server scheme {scheme!r} is not nats or tls")
    if not item:
        raise ValueError("NATS engine URL: a server is missing (empty between commas)")
    shown = item.rpartition("@")[2]  # errors never show a password
    parts = urllib.parse.urlsplit(f"{scheme}://{item}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"NATS engine URL: bad port in {shown!r}") from None
    if not parts.hostname:
        raise ValueError(f"NATS engine URL: no host in {shown!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"NATS engine URL: unexpected {shown!r} (only host:port)")
    netloc = parts.netloc if port is not None else f"{parts.netloc}:{DEFAULT_PORT}"
    return f"{scheme}://{netloc}"


def redact(server: str) -> str:
    """``server`` (one of :attr:`NatsTarget.servers`) without its ``user:password@``."""
    scheme, _, rest = server.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"
