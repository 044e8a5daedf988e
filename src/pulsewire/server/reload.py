"""SIGHUP: re-read ``--config`` and apply what can change without dropping a connection.
The ``PULSEWIRE_*`` variables are read again too and still win over the file (the process's
environment does not change while it runs).

Live: channel options (``[channel]``, ``[namespaces.*]``), token keys, audience and issuer,
the API key, allowed origins, anonymous access, timeouts, rate limits (for new
connections) and the drain timeout. Needs a restart (logged as "restart needed", the running
value is kept): host, port, TLS files, demo mode, workers, the backend proxy (``[proxy]``:
its hooks are set at start), the engine, its prefix, the node name,
``client_queue_max_bytes`` (it sizes the transports' hard caps) and the front door's limits
and deadlines (connection caps and rates, memory budgets, request, send and long-poll
timeouts: the connections and sessions already open were set up with them).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ..hub.auth import TokenVerifier
from ..hub.config import HubConfig
from ..protocol.handshake import OriginPolicy
from .api import ApiHandler
from .app import HubServer
from .settings import (
    FRONT_DOOR_FIELDS,
    ServeOptions,
    Settings,
    front_door_changes,
    load_settings,
)

__all__ = ["apply_settings", "config_changes", "reload_settings"]

logger = logging.getLogger("pulsewire.server")

RESTART_SERVER = ("host", "port", "tls_cert", "tls_key", "demo", "workers", "proxy")
RESTART_HUB = (
    "engine",
    "engine_prefix",
    "node_name",
    "client_queue_max_bytes",
    "overload_lag",  # the probe and the gate are set up at start
    "overload_wait",
    # The failed-authentication guard keeps its counts across reloads, so its settings too.
    "auth_failures_burst",
    "auth_failures_refill",
    "auth_failures_max_addresses",
    "auth_failures_trusted_proxies",
)
SECRETS = frozenset({"api_key", "token_hmac_secret", "token_rsa_public_key"})


def reload_settings(server: HubServer, args: ServeOptions, current: Settings) -> Settings:
    """Re-read the config file named by ``args``; on error log it and keep ``current``."""
    if not args.config:
        logger.warning("SIGHUP: nothing to reload (no --config file)")
        return current
    try:
        new = load_settings(args)
        TokenVerifier(new.config)  # fail here, before anything changed
    except Exception as exc:
        logger.error("reload of %s failed, settings unchanged: %s", args.config, exc)
        return current
    return apply_settings(server, current, new, source=args.config)


def apply_settings(
    server: HubServer, current: Settings, new: Settings, *, source: str = "config"
) -> Settings:
    """Apply ``new`` to the running ``server``; returns the settings now in effect."""
    restart = [n for n in RESTART_SERVER if getattr(current, n) != getattr(new, n)]
    restart += front_door_changes(current, new)
    restart += [n for n in RESTART_HUB if getattr(current.config, n) != getattr(new.config, n)]
    kept: dict[str, Any] = {n: getattr(current.config, n) for n in RESTART_HUB}
    config = new.config.replace(**kept)
    changes = config_changes(current.config, config)
    if current.allowed_origins != new.allowed_origins:
        changes.append(
            f"allowed_origins: {list(current.allowed_origins)} -> {list(new.allowed_origins)}"
        )
    if current.drain_timeout != new.drain_timeout:
        changes.append(f"drain_timeout: {current.drain_timeout} -> {new.drain_timeout}")

    hub = server.hub
    hub.tokens = TokenVerifier(config)
    hub.config = config
    route = server.http.route("/api/")
    if route is not None and isinstance(route.handler, ApiHandler):
        route.handler.api_key = config.api_key
    _set_origins(server, new.allowed_origins)

    if restart:
        logger.warning(
            "reload: restart needed for %s (changed in %s; running values kept)",
            ", ".join(restart),
            source,
        )
    if changes:
        logger.info("reloaded %s: %s", source, "; ".join(changes))
    else:
        logger.info("reloaded %s: no live setting changed", source)
    keep_server = {n: getattr(current, n) for n in (*RESTART_SERVER, *FRONT_DOOR_FIELDS)}
    return dataclasses.replace(new, config=config, **keep_server)


def _set_origins(server: HubServer, origins: tuple[str, ...]) -> None:
    """Swap the Origin policy in place: the WebSocket server, SSE and long-polling share it."""
    shared = server.origins
    if shared.open:  # origin checks were switched off at start: leave them off
        return
    fresh = OriginPolicy(list(origins), same_host=shared.same_host, require=shared.require)
    vars(shared).update(vars(fresh))
    for endpoint in (getattr(server, "sse", None), getattr(server, "longpoll", None)):
        if endpoint is not None and hasattr(endpoint, "origins"):
            endpoint.origins = shared


def config_changes(old: HubConfig, new: HubConfig) -> list[str]:
    """Readable differences between two hub configs (secrets are not shown)."""
    out: list[str] = []
    for f in dataclasses.fields(HubConfig):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before == after or f.name == "namespaces":
            continue
        if f.name in SECRETS:
            out.append(
                f"{f.name} {'set' if after and not before else 'changed'}"
                if after
                else f"{f.name} removed"
            )
        elif f.name == "channel":
            out.append(f"[channel] {_options_diff(before, after)}")
        else:
            out.append(f"{f.name}: {before!r} -> {after!r}")
    for name in sorted(old.namespaces.keys() | new.namespaces.keys()):
        before, after = old.namespaces.get(name), new.namespaces.get(name)
        if before == after:
            continue
        if before is None:
            out.append(f"namespace {name} added")
        elif after is None:
            out.append(f"namespace {name} removed (its channels use [channel] options)")
        else:
            out.append(f"[namespaces.{name}] {_options_diff(before, after)}")
    return out


def _options_diff(old: Any, new: Any) -> str:
    parts = [
        f"{f.name}: {getattr(old, f.name)!r} -> {getattr(new, f.name)!r}"
        for f in dataclasses.fields(old)
        if getattr(old, f.name) != getattr(new, f.name)
    ]
    return ", ".join(parts)
